"""What an export (outputs/RUN/final/) says about itself: the run card, config.json, the tokenizer's length,
the evaluation and the command-line overrides of the run. Everything the card states is read from here,
so publishing needs no recipe to be given again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id

from extend.config import ConfigError
from extend.eval.runner import AFTER_TRAINING
from extend.eval.schema import validate as validate_eval_json
from extend.models import tiny_base
from extend.models.presets import PRESETS
from extend.rope.export import EXTEND_ONLY_ROPE_TYPES, PROVENANCE_KEY, scaled_rope_parameters, served_lengths


def is_hub_id(name: str, namespace_required: bool = False) -> bool:
    """Whether `name` has the form of a Hub repository id (ORG/NAME, or a legacy NAME without namespace)."""
    if namespace_required and name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


@dataclass(frozen=True)
class BaseModel:
    """The model a run started from, and whether the Hub knows it by that name."""

    name: str  # model.name_or_path as the recipe gave it
    kind: str  # hub, local (a folder on the training machine), preset (random weights), project (tiny-base)
    revision: str | None = None

    @property
    def hub_id(self) -> str | None:
        return self.name if self.kind == "hub" else None

    @classmethod
    def of(cls, name: str, revision: str | None) -> BaseModel:
        if name in PRESETS:
            return cls(name, "preset")
        if name == tiny_base.NAME:
            return cls(name, "project")
        if name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or not is_hub_id(name):
            return cls(name, "local")
        return cls(name, "hub", revision)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError([f"{path} is not valid JSON ({err}); export the run again"]) from err


def evaluations(final: Path) -> list[str]:
    """The evaluations of an export: the folders final/eval/<name>/ that hold an eval.json."""
    return sorted(p.parent.name for p in (final / "eval").glob("*/eval.json"))


def choose_evaluation(final: Path, wanted: str | None) -> str | None:
    """publish.eval, else after_training, else the only evaluation, else None when there is none."""
    found = evaluations(final)
    listing = ", ".join(found) if found else "none"
    if wanted is not None:
        if wanted not in found:
            raise ConfigError([f"publish.eval={wanted!r}: {final / 'eval'} holds no such evaluation (it holds: "
                               f"{listing}); choose one of them, or evaluate with `python -m extend.eval model={final}`"])
        return wanted
    if AFTER_TRAINING in found or len(found) <= 1:
        return AFTER_TRAINING if AFTER_TRAINING in found else (found[0] if found else None)
    raise ConfigError([f"{final / 'eval'} holds {len(found)} evaluations ({listing}) and none is the run's own "
                       f"({AFTER_TRAINING}): choose the one the card carries with publish.eval=NAME"])


@dataclass
class ExportInfo:
    final: Path
    run_card: dict[str, Any]
    model_config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    eval: dict[str, Any] | None
    # The run's command-line overrides, from the .hydra/overrides.yaml Hydra wrote into the run folder
    # (None when the run was started from Python, not the command line).
    overrides: list[str] | None
    # Which evaluation `eval` is: its folder final/eval/<eval_name>/ (None when there is no evaluation).
    eval_name: str | None = None

    @classmethod
    def read(cls, final: Path, evaluation: str | None = None) -> ExportInfo:
        """What `final` says about itself, with the evaluation `evaluation` (choose_evaluation's default
        when None)."""
        required = ("run_card.json", "config.json", "tokenizer_config.json")
        missing = [name for name in required if not (final / name).is_file()]
        if missing:
            raise ConfigError([f"{final} has no {', '.join(missing)}: publish reads the run from what extend/train.py's "
                               "export writes; export the run again"])
        run_card = _read_json(final / "run_card.json")
        if "config" not in run_card:
            raise ConfigError([f"{final / 'run_card.json'} has no 'config' (the composed config of the run); export the run again"])
        eval_data, name = None, choose_evaluation(final, evaluation)
        if name is not None:
            path = final / "eval" / name / "eval.json"
            eval_data = _read_json(path)
            problems = validate_eval_json(eval_data)
            if problems:
                raise ConfigError([f"{path} does not follow its schema ({problems[0]}); evaluate again with "
                                   f"`python -m extend.eval model={final}`, or choose another with publish.eval"])
        overrides_file = final.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None
        return cls(final, run_card, _read_json(final / "config.json"), _read_json(final / "tokenizer_config.json"),
                   eval_data, overrides, name)

    @property
    def config(self) -> dict[str, Any]:
        """The run's whole composed config (ExtendConfig as a dict)."""
        return self.run_card["config"]

    @property
    def run_name(self) -> str:
        return self.run_card.get("run_name") or self.config["run_name"]

    @property
    def base(self) -> BaseModel:
        model = self.config["model"]
        return BaseModel.of(model["name_or_path"], model.get("revision"))

    @property
    def has_adapter(self) -> bool:
        return (self.final / "adapter" / "adapter_config.json").is_file()

    @property
    def position_method(self) -> dict[str, Any] | None:
        """How the positions were changed, as apply_rope recorded it in config.json (None: unchanged)."""
        return self.model_config.get(PROVENANCE_KEY)

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The set of RoPE parameters carrying the method (for per-attention-type configs, the scaled type's)."""
        return scaled_rope_parameters(self.model_config)

    @property
    def needs_extend(self) -> bool:
        """Whether stock loaders cannot express the method (config.json names a rope type `import extend` registers)."""
        return self.rope_parameters.get("rope_type") in EXTEND_ONLY_ROPE_TYPES

    @property
    def tokenizer_max_length(self) -> int | None:
        return self.tokenizer_config.get("model_max_length")

    @property
    def promised_length(self) -> int:
        """The context length the run set out to reach: factor x original length for a changed method, else
        the base's own length."""
        method = self.position_method
        if method:
            return round(method["factor"] * method["original_max_position_embeddings"])
        return int(self.model_config["max_position_embeddings"])

    @property
    def original_length(self) -> int:
        method = self.position_method
        return int(method["original_max_position_embeddings"]) if method else self.promised_length

    def served(self) -> dict[str, int | None]:
        """The length transformers, the tokenizer and vLLM derive from the export (extend.rope.served_lengths)."""
        return served_lengths(self.model_config, self.tokenizer_max_length)
