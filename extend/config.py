"""Typed schemas for every config group, registered with Hydra's ConfigStore.

The schemas are the only place defaults live. Hydra merges `conf/config.yaml`, the group files and the
recipe on top of them in struct mode, so a misspelt key fails at composition and names the file and key.
Cross-field checks that need the model (lengths, head dims, layer counts) run in `extend.rope.resolve`
before any weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
RECIPES_DIR = REPO_ROOT / "recipes"


class ConfigError(ValueError):
    """Every problem found in a config, reported at once, each with the key and how to fix it."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class ModelConfig:
    """The base model: a preset built from a config (`tiny-llama`, ...), a local folder, or a Hub id."""

    name_or_path: str = "tiny-llama"
    # torch dtype the weights are loaded in; RoPE angles are computed in float32 regardless.
    dtype: str = "float32"
    # Attention kernel: sdpa (default), eager, or flash_attention_2 when installed.
    attn_implementation: str = "sdpa"
    revision: str | None = None
    # Remote code runs arbitrary Python from the model repository: opt in explicitly.
    trust_remote_code: bool = False


@dataclass
class RopeConfig:
    """The position method. `type: none` keeps the base model's own RoPE.

    Method-specific fields default to None, meaning "the method's own default" (see
    `extend/rope/methods.py`); setting a field the chosen method does not read is an error.
    """

    type: str = "none"
    # Extension factor s: the extended length is s x original_max_position_embeddings.
    factor: float = 1.0
    # L, the length the base was trained at; defaults to the model's max_position_embeddings.
    original_max_position_embeddings: int | None = None
    # New base frequency (abf, entropy_abf).
    rope_theta: float | None = None
    # Scale applied to cos/sin (yarn, longrope); None = the method's formula.
    attention_factor: float | None = None
    # yarn: the ramp between extrapolated (beta_fast rotations) and interpolated (beta_slow) dims.
    beta_fast: float | None = None
    beta_slow: float | None = None
    # llama3: wavelength band edges as fractions of L.
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # longrope: per-dimension rescale factors, head_dim / 2 values each.
    short_factor: list[float] | None = None
    long_factor: list[float] | None = None
    # power (Giraffe): theta_i * (1 - 2i/d) ** power.
    power: float | None = None
    # truncated (Giraffe): the wavelength T below which frequencies are kept as they are.
    truncation_length: float | None = None
    # entropy_abf: L in max(1, ln(m+1) / ln L) and the number of first layers left unscaled.
    log_scale_length: int | None = None
    exempt_layers: int | None = None


@dataclass
class PerplexityDataConfig:
    """Held-out long documents for perplexity: a registered text source (extend/eval/texts.py)."""

    # python_stdlib (the largest modules of this Python's standard library; always offline), files (the
    # globs in `paths`), or dataset (a `datasets` name or local folder with `split` and `text_column`).
    source: str = "python_stdlib"
    paths: list[str] = field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "test"
    text_column: str = "text"
    # Documents read from the source (the longest first for python_stdlib).
    max_documents: int = 8
    # Windows slide by `stride` tokens; each scores only the tokens the previous window did not.
    # None = the window length (disjoint windows, every token seen with 0..L-1 tokens of context).
    stride: int | None = None
    # Windows scored per length and condition (eval.limit caps this too).
    max_windows: int = 4


@dataclass
class ComparisonConfig:
    """One more model to put next to the evaluated one, on the same items."""

    name: str = MISSING
    # A folder, Hub id or preset; None = the evaluated model (e.g. with a training-free rope method).
    name_or_path: str | None = None
    # Applied to the comparison model's config before it is built (training-free scaling).
    rope: RopeConfig = field(default_factory=RopeConfig)


@dataclass
class EvalConfig:
    """What `python -m extend.eval` (and the end of a training run) measures; see extend/eval/README.md."""

    # Registered task names (extend/eval/registry.py): perplexity, passkey, lines, kv, numeric_qa, and
    # the Hub sets abacusai/LongChat-Lines, abacusai/WikiQA-Free_Form_QA, abacusai/WikiQA-Altered_Numeric_QA.
    tasks: list[str] = field(default_factory=lambda: ["perplexity", "passkey", "lines", "kv", "numeric_qa"])
    # Context lengths in tokens (prompt + answer for generation tasks, window length for perplexity).
    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    # Passkey needle depths, 0 = start of the filler, 1 = its end.
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    # Generated items per (length) cell, per (length, depth) cell for passkey.
    items_per_cell: int = 5
    # Quick look: at most this many items per cell and windows per length (None = no cap).
    limit: int | None = None
    # Sequences per forward pass; long inputs are still run one batch at a time.
    batch_size: int = 4
    seed: int = 0
    # Where eval.json, report.md and plots go; None = <model folder>/eval for a local model, else
    # <output_dir>/eval.
    output_dir: str | None = None
    # Name of the evaluated model in the report; None = derived from its path and rope method.
    name: str | None = None
    # Tokenizer folder or Hub id; None = the model's own folder (presets have none: set this).
    tokenizer: str | None = None
    # Lengths beyond what a model (with its rope config) addresses are an error unless this is true:
    # set it to measure the failure on purpose (the report marks those cells).
    extrapolate: bool = False
    # Tokens generated after the expected answer's length, so extra output is seen and scored.
    extra_new_tokens: int = 4
    comparisons: list[ComparisonConfig] = field(default_factory=list)
    perplexity: PerplexityDataConfig = field(default_factory=PerplexityDataConfig)


@dataclass
class ExtendConfig:
    """The composed config of one run."""

    run_name: str = "tiny"
    output_dir: str = "outputs/${run_name}"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` lists first in its defaults."""
    ConfigStore.instance().store(name="extend_schema", node=ExtendConfig)


register_configs()
