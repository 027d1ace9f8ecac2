"""`run_eval`: validate everything, prepare the items once, score each compared model, write the results.

Order matters: every check that needs no weights (config values, the output folder, model paths, rope
methods, tokenizer, items and their lengths against each model's addressable length, Hub reachability) runs
first and fails with one ConfigError listing every problem; only then is any model loaded, one at a time.

Every evaluation has a folder of its own, <model folder>/eval/<name> (evaluation_name): the one at the end
of training is `after_training`, another is named by eval.name or by its tasks and a fingerprint of what
decides its results. A folder holding a different evaluation is never replaced unless eval.overwrite=true.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.config import ConfigError, EvalConfig, ExtendConfig
from extend.eval.loading import Condition, build_model, check_tokenizer, load_tokenizer, resolve_conditions
from extend.eval.registry import TASKS
from extend.eval.report import write_outputs
from extend.eval.schema import SCHEMA_VERSION
from extend.models.placement import device_problems

# The folder name of the evaluation extend/train.py runs on its export (eval.after_training).
AFTER_TRAINING = "after_training"
# What an evaluation records about itself next to eval.json, to tell whether a rerun is the same evaluation.
IDENTITY = "evaluation.json"
# Files an evaluation writes in its folder (and may therefore replace).
WRITTEN = ("eval.json", "report.md", "*.png", IDENTITY)
# eval.* keys that decide where or how fast an evaluation runs, not what it measures.
RUNTIME_KEYS = ("output_dir", "overwrite", "after_training", "batch_size", "device")


def check_eval_config(cfg: EvalConfig) -> list[str]:
    """Value checks on `eval.*` alone."""
    problems = []
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        problems.append(f"eval.tasks: unknown task(s) {', '.join(map(repr, unknown))}; registered tasks: "
                        f"{', '.join(TASKS)}")
    if not cfg.tasks:
        problems.append("eval.tasks is empty: name at least one task")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        problems.append(f"eval.tasks={cfg.tasks} names a task twice")
    if not cfg.lengths or any(n < 2 for n in cfg.lengths):
        problems.append(f"eval.lengths={cfg.lengths} must be a non-empty list of lengths >= 2 tokens")
    if len(set(cfg.lengths)) != len(cfg.lengths):
        problems.append(f"eval.lengths={cfg.lengths} lists a length twice")
    if not cfg.depths or any(not 0.0 <= d <= 1.0 for d in cfg.depths):
        problems.append(f"eval.depths={cfg.depths} must be fractions in [0, 1]")
    for key in ("items_per_cell", "batch_size"):
        if getattr(cfg, key) < 1:
            problems.append(f"eval.{key}={getattr(cfg, key)} must be >= 1")
    if cfg.limit is not None and cfg.limit < 1:
        problems.append(f"eval.limit={cfg.limit} must be >= 1 (or null for no cap)")
    if cfg.perplexity.max_windows < 1:
        problems.append(f"eval.perplexity.max_windows={cfg.perplexity.max_windows} must be >= 1")
    if cfg.extra_new_tokens < 0:
        problems.append(f"eval.extra_new_tokens={cfg.extra_new_tokens} must be >= 0")
    problems += device_problems("eval.device", cfg.device)
    return problems


def evaluation_identity(cfg: ExtendConfig) -> dict:
    """What decides an evaluation's results: the eval keys (less where and how fast it runs), the rope
    method applied at load time and the model settings (less its path: the folder is the model's)."""
    ecfg = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(cfg.eval), resolve=True).items()
            if k not in RUNTIME_KEYS}
    model = {k: v for k, v in asdict(cfg.model).items() if k != "name_or_path"}
    return json.loads(json.dumps({"eval": ecfg, "rope": asdict(cfg.rope), "model": model}, default=str))


def evaluation_name(cfg: ExtendConfig) -> str:
    """eval.name when set, else `<tasks>-<8 hex digits of the identity's fingerprint>`, e.g.
    `perplexity+passkey-3f1c0a9b`: the same evaluation gets the same folder, a different one another."""
    if cfg.eval.name:
        return _slug(cfg.eval.name)
    digest = hashlib.sha256(json.dumps(evaluation_identity(cfg), sort_keys=True).encode()).hexdigest()
    return f"{_slug('+'.join(cfg.eval.tasks))[:60]}-{digest[:8]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "eval"


def output_dir(cfg: ExtendConfig, model_given: bool) -> Path:
    """eval.output_dir, else <model folder>/eval/<evaluation_name> for a local model, else
    <output_dir>/eval/<evaluation_name>."""
    if cfg.eval.output_dir:
        return Path(cfg.eval.output_dir).expanduser()
    local = Path(cfg.model.name_or_path).expanduser()
    root = local if not model_given and local.is_dir() else Path(cfg.output_dir)
    return root / "eval" / evaluation_name(cfg)


def folder_problems(out: Path, identity: dict, overwrite: bool) -> list[str]:
    """Why `out` may not receive this evaluation: it holds a different one (refused unless overwrite)."""
    if overwrite or not (out / "eval.json").exists():
        return []
    recorded = out / IDENTITY
    if recorded.is_file():
        stored = json.loads(recorded.read_text())
        differences = _differing_keys(stored, identity)
        if not differences:
            return []
        what = "another evaluation (differs in: " + ", ".join(differences[:4]) + (
            f" and {len(differences) - 4} more" if len(differences) > 4 else "") + ")"
    else:
        what = f"an evaluation without {IDENTITY} (made elsewhere or by an older version)"
    return [f"{out} holds {what}: set eval.overwrite=true to replace it, or give this one its own folder "
            "(eval.name=NAME or eval.output_dir=PATH)"]


def _differing_keys(stored: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _claim(out: Path, identity: dict) -> None:
    """Empty `out` of an earlier evaluation's files (the check above allowed it) and record this one."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in WRITTEN:
        for path in out.glob(pattern):
            path.unlink()
    (out / IDENTITY).write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def quiet_long_inputs(tokenizer: PreTrainedTokenizerBase) -> None:
    """Silence the tokenizer's "Token indices sequence length is longer than the specified maximum" warning.

    The evaluation tokenises whole documents and prompts longer than `model_max_length` on purpose: it cuts
    perplexity windows itself and checks every input against the length each model addresses (prepare
    below), so the warning would only ever be noise. transformers warns once per tokenizer and remembers it
    in this flag; setting it says "already warned" for this tokenizer only, and every other warning stays.
    """
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True


def _typed(cfg: ExtendConfig | DictConfig) -> ExtendConfig:
    return cfg if isinstance(cfg, ExtendConfig) else OmegaConf.to_object(cfg)


def prepare(cfg: ExtendConfig, model: PreTrainedModel | None = None,
            tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[list[Condition], PreTrainedTokenizerBase, dict]:
    """Every check and every item, before any weights load. Raises one ConfigError with all problems."""
    ecfg = cfg.eval
    problems = check_eval_config(ecfg)
    problems += folder_problems(output_dir(cfg, model is not None), evaluation_identity(cfg), ecfg.overwrite)
    conditions, found = resolve_conditions(cfg, model)
    problems += found
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(ecfg.tokenizer or cfg.model.name_or_path, cfg.model.revision,
                                       cfg.model.trust_remote_code)
        except ConfigError as err:
            problems += err.problems
    if tokenizer is not None:
        problems += check_tokenizer(tokenizer)
        quiet_long_inputs(tokenizer)
    if problems:
        raise ConfigError(problems)

    prepared: dict[str, Any] = {}
    for name in ecfg.tasks:
        try:
            prepared[name] = TASKS[name].prepare(tokenizer, ecfg)
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)

    if not ecfg.extrapolate:
        for name, items in prepared.items():
            need = TASKS[name].longest(items)
            for c in conditions:
                if need > c.served_length:
                    problems.append(
                        f"{name} needs inputs of {need} tokens but {c.name} addresses {c.served_length} (its "
                        f"max_position_embeddings and rope config): lower eval.lengths, apply a rope method "
                        "(rope=yarn rope.factor=...), or set eval.extrapolate=true to measure beyond on purpose")
    if problems:
        raise ConfigError(problems)
    return conditions, tokenizer, prepared


def run_eval(cfg: ExtendConfig | DictConfig, model: PreTrainedModel | None = None,
             tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    """Evaluate `model` (or cfg.model) and every `eval.comparisons` entry on the same items; write
    eval.json, report.md and plots to `output_dir(cfg)` (with evaluation.json, what decided the results);
    return the eval.json content.

    A model handed in (end of training) is evaluated as it is: `cfg.rope` is already in its config.
    """
    cfg = _typed(cfg)
    conditions, tokenizer, prepared = prepare(cfg, model, tokenizer)
    out = output_dir(cfg, model is not None)
    data = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.model.name_or_path if model is None else "<in memory>",
        "tokenizer": tokenizer.name_or_path or type(tokenizer).__name__,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg.eval), resolve=True),
        "conditions": [c.describe() for c in conditions],
        "complete": False,
        "results": {},
    }
    _claim(out, evaluation_identity(cfg))
    for condition in conditions:
        built = build_model(condition, cfg.seed, cfg.eval.device)
        data["results"][condition.name] = {
            name: TASKS[name].run(built, tokenizer, items, cfg.eval, condition.served_length)
            for name, items in prepared.items()
        }
        if built is not condition.in_memory:
            del built
            gc.collect()
        _check_finite(data)
        data["complete"] = condition is conditions[-1]
        # After every model, so a long evaluation that is stopped keeps what it measured.
        write_outputs(data, out)
    return data


def _check_finite(data: dict) -> None:
    """NaN is not JSON: a perplexity that overflowed is stored as null and said so in the report."""
    for tasks in data["results"].values():
        for block in tasks.values():
            for cell in block["by_length"].values():
                if not math.isfinite(cell["value"]):
                    cell["value"] = None
