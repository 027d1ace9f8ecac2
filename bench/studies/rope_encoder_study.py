"""RoPE encoder extension on a tiny ModernBERT embedder trained here: every position method x4, training-free
and after the same short contrastive fine-tune.

    OMP_NUM_THREADS=1 python -m bench.studies.rope_encoder_study [--methods linear ntk ...] [--tuned-methods ...]
        [--candidates 100] [--tune-steps 48] [--out DIR] [--cache DIR] [base settings, see --help]

1. The base (bench/lib/rope_encoder_base.py): a 4-layer ModernBERT (global attention on layers 0 and 2, 32-token
   sliding windows between) at L = 128 tokens with the all-MiniLM-L6-v2 WordPiece tokenizer, masked-LM
   pretrained, then contrastively trained; cached under --cache by a hash of its settings.
2. For each method, one run of the real pipeline (extend.encoders.run.run_encoder, conf/rope/<method>.yaml
   with rope.factor = --factor, encoder.model = the base folder, encoder.target_length = factor * L), which
   scores (a) the base truncating at L, (b) the method training-free and, for --tuned-methods, (c) the method
   after --tune-steps contrastive steps at lengths L, 2L, 4L in turn (every weight trains). The first tuned
   run also trains the control: the base fine-tuned the same way at lengths <= L, still truncating at L.
3. Besides the methods: the base reading 4L with its RoPE unchanged (plain extrapolation), training-free
   and fine-tuned the same way; the pipeline refuses rope=none for a RoPE encoder, so this runs here.

Metric: nDCG@1 on passkey, needle and line (extend/encoders/tasks.py) at L, 2L, 4L, --candidates documents
per cell. Writes DIR/results.json and DIR/table.md, prints the table; the runs' folders go to DIR/runs/.

Measured with the defaults (one CPU thread, 12 min 39 s from an empty cache; the table and its reading):
README, "RoPE encoders: a tiny ModernBERT (measured)".
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer

from bench.lib.paths import RESULTS, portable, scrub_text
from bench.lib.rope_encoder_base import BaseRecipe, base_folder, ensure_base
from extend.config import CONF_DIR, ConfigError, EncoderConfig, ExtendConfig
from extend.encoders.encode import Reader
from extend.encoders.eval import Variant, build_sets, evaluate
from extend.encoders.extension import plan_extension
from extend.encoders.positions import load_encoder
from extend.encoders.run import run_encoder
from extend.encoders.tasks import special_tail
from extend.encoders.train import fine_tune
from extend.rope import METHODS

TASKS = ["passkey", "needle", "line"]
# longrope needs searched per-dimension factors; entropy_abf scales every layer's queries, which a model with
# RoPE per attention type refuses.
DEFAULT_METHODS = [m for m in METHODS if m not in ("longrope", "entropy_abf")]
TRAINABLE = ["embeddings", "layers", "final_norm"]  # every weight of the ModernBertModel


def method_overrides(method: str, recipe: BaseRecipe, factor: float) -> list[str]:
    """Parameters a method needs besides the factor, for this base."""
    if method == "abf":
        # b * s^2: about as many rotary dims turn at least once within s * L as did within L with b (9 and 10
        # of 16 for the default base); NTK's smaller raise b * s^(d/(d-2)) is the `ntk` method.
        return [f"rope.rope_theta={recipe.global_theta * factor ** 2:g}"]
    if method == "truncated":
        return [f"rope.truncation_length={recipe.length // 8}"]  # L / 8, as conf/rope/truncated.yaml suggests
    return []  # power: conf/rope/power.yaml's 0.25; yarn, llama3: their defaults


def study_configs(opts: argparse.Namespace, recipe: BaseRecipe, base: Path) -> dict[str, ExtendConfig]:
    """One composed config per method (the first tuned method also trains the control)."""
    L, target = recipe.length, int(recipe.length * opts.factor)
    lengths = f"[{L},{2 * L},{target}]" if target > 2 * L else f"[{L},{target}]"
    configs = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for method in opts.methods:
            tuned = method in opts.tuned_methods
            control = tuned and method == opts.tuned_methods[0]
            overrides = [
                f"rope={method}", f"rope.factor={opts.factor:g}", *method_overrides(method, recipe, opts.factor),
                f"run_name={method}", f"output_dir={opts.out / 'runs' / method}", f"encoder.model={base}",
                f"encoder.target_length={target}", "encoder.pooling=mean", "encoder.device=cpu",
                f"encoder.eval.tasks=[{','.join(TASKS)}]", f"encoder.eval.lengths={lengths}",
                f"encoder.eval.candidates={opts.candidates}", f"encoder.eval.seed={opts.eval_seed}",
                f"encoder.eval.batch_size={opts.eval_batch}", f"encoder.train.steps={opts.tune_steps if tuned else 0}",
                f"encoder.train.lengths={lengths}", f"encoder.train.batch_size={opts.tune_batch}",
                f"encoder.train.learning_rate={opts.tune_lr}", f"encoder.train.trainable=[{','.join(TRAINABLE)}]",
                f"encoder.train.seed={opts.tune_seed}", f"encoder.train.control={str(control).lower()}",
                "encoder.train.log_every=1000"]
            configs[method] = OmegaConf.to_object(compose("encoder", overrides=overrides))
    return configs


def extrapolated(base: Path, enc: EncoderConfig, tuned: bool) -> dict:
    """The base reading enc.target_length tokens with its own RoPE (no method), scored like run_encoder,
    and after the same fine-tune when `tuned`."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    reader = Reader(enc.target_length, tail=special_tail(tokenizer))
    sets = build_sets(tokenizer, enc.eval.tasks, enc.eval.lengths, enc.eval.candidates, enc.eval.seed, [])
    score = dict(pad_id=tokenizer.pad_token_id, pooling=enc.pooling, normalize=enc.normalize,
                 batch_size=enc.eval.batch_size)
    model = load_encoder(str(base))
    out = {"training_free": evaluate([Variant("x", model, reader, "")], sets, **score)["x"]}
    if tuned:
        t = enc.train
        fine_tune(model, tokenizer, reader, steps=t.steps, batch_size=t.batch_size, lengths=t.lengths,
                  learning_rate=t.learning_rate, temperature=t.temperature, trainable=t.trainable,
                  min_query_tokens=t.min_query_tokens, seed=t.seed, pooling=enc.pooling, log_every=t.log_every)
        out["fine_tuned"] = evaluate([Variant("x", model, reader, "")], sets, **score)["x"]
    return out


def values(cells: dict) -> dict[str, dict[int, float]]:
    """run_encoder's task -> length -> cell, as task -> length -> nDCG@1."""
    return {task: {int(n): c["value"] for n, c in by_length.items()} for task, by_length in cells.items()}


def table(results: dict, lengths: list[int]) -> str:
    head = " / ".join(map(str, lengths))
    lines = ["| variant | " + " | ".join(f"{t} @ {head}" for t in TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]

    def row(name: str, cells: dict) -> None:
        cells_text = (" / ".join(f"{cells[t][n]:.2f}" for n in lengths) for t in TASKS)
        lines.append(f"| {name} | " + " | ".join(cells_text) + " |")

    row(f"(a) original, truncating at {lengths[0]}", results["original"])
    for name, r in results["variants"].items():
        row(f"(b) {name}, training-free", r["training_free"])
    for name, r in results["variants"].items():
        if "fine_tuned" in r:
            row(f"(c) {name} + fine-tune", r["fine_tuned"])
    if results.get("control"):
        row(f"control: original + same fine-tune, truncating at {lengths[0]}", results["control"])
    return "\n".join(lines)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, BaseRecipe]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        help="methods scored training-free")
    parser.add_argument("--tuned-methods", nargs="*", default=None,
                        help="methods also fine-tuned (default: all of --methods; none: pass the flag alone)")
    parser.add_argument("--no-extrapolation", action="store_true", help="skip the base read at 4L without a method")
    parser.add_argument("--factor", type=float, default=4.0, help="target length / L")
    parser.add_argument("--candidates", type=int, default=100, help="documents per (task, length) cell")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=16, help="sequences per forward pass in evaluation")
    parser.add_argument("--tune-steps", type=int, default=48, help="contrastive steps of (c) and the control")
    parser.add_argument("--tune-batch", type=int, default=8, help="pairs per fine-tune step (in-batch negatives)")
    parser.add_argument("--tune-lr", type=float, default=2e-4)
    parser.add_argument("--tune-seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "rope_encoder_study")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/extend"), help="where the built base is kept")
    base = parser.add_argument_group("base", "the tiny ModernBERT (bench/lib/rope_encoder_base.py BaseRecipe)")
    for field in dataclasses.fields(BaseRecipe):
        base.add_argument(f"--base-{field.name.replace('_', '-')}", dest=f"base_{field.name}", type=type(field.default),
                          default=field.default, help=f"default {field.default}")
    opts = parser.parse_args(argv)
    if opts.tuned_methods is None:
        opts.tuned_methods = list(opts.methods)
    recipe = BaseRecipe(**{f.name: getattr(opts, f"base_{f.name}") for f in dataclasses.fields(BaseRecipe)})
    return opts, recipe


def check(opts: argparse.Namespace, recipe: BaseRecipe, configs: dict[str, ExtendConfig]) -> None:
    """Every method against the base's config before anything trains: one error listing every problem."""
    problems = [f"--tuned-methods: {m} is not in --methods" for m in opts.tuned_methods if m not in opts.methods]
    for method, cfg in configs.items():
        try:
            plan_extension(cfg.encoder, cfg.rope, recipe.model_config())
        except ConfigError as err:
            problems += [f"{method}: {p}" for p in err.problems]
    if problems:
        raise ConfigError(problems)


def main(argv: list[str] | None = None) -> dict:
    opts, recipe = parse(argv)
    configs = study_configs(opts, recipe, base_folder(recipe, opts.cache))
    check(opts, recipe, configs)
    started = time.perf_counter()
    base, info = ensure_base(recipe, opts.cache)
    base_seconds = time.perf_counter() - started
    results: dict = {"original": None, "control": None, "variants": {}}
    seconds: dict[str, float] = {}
    for method, cfg in configs.items():
        train = cfg.encoder.train
        print(f"== {method}{' + fine-tune' if train.steps else ''}{' + control' if train.control else ''}", flush=True)
        data = run_encoder(cfg)
        seconds[method] = data["seconds"]
        results["original"] = results["original"] or values(data["results"]["original"])
        results["variants"][method] = {"training_free": values(data["results"][method])}
        if train.steps:
            results["variants"][method]["fine_tuned"] = values(data["results"]["fine-tuned"])
        if train.control:
            results["control"] = values(data["results"]["control"])
    if not opts.no_extrapolation:
        print("== no method (RoPE extrapolated)", flush=True)
        start = time.perf_counter()
        enc = copy.deepcopy(next(iter(configs.values())).encoder)
        enc.train.steps = opts.tune_steps
        ext = extrapolated(base, enc, tuned=bool(opts.tuned_methods))
        extrapolation = {k: values(v) for k, v in ext.items()}
        results["variants"] = {"no method (extrapolated)": extrapolation, **results["variants"]}
        seconds["no method"] = round(time.perf_counter() - start, 1)
    lengths = sorted(next(iter(results["original"].values())))
    text = table(results, lengths)
    total = round(time.perf_counter() - started, 1)
    command = scrub_text("python -m bench.studies.rope_encoder_study " + " ".join(argv if argv is not None else sys.argv[1:]))
    config = AutoConfig.from_pretrained(base)
    settings = {k: v for k, v in vars(opts).items() if not k.startswith("base_") and k not in ("out", "cache")}
    record = {"command": command.strip(),
              "base": {"folder": portable(str(base)), **info, "seconds_this_run": round(base_seconds, 1),
                       "layer_types": config.layer_types},
              "settings": settings,
              "metric": "ndcg@1", "threads": torch.get_num_threads(), "seconds": {"total": total, "runs": seconds},
              "results": results}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (opts.out / "table.md").write_text(f"{record['command']}\n\nnDCG@1, {opts.candidates} candidates per cell; "
                                       f"{total:.0f} s on {record['threads']} thread(s).\n\n{text}\n")
    print(text)
    return record


if __name__ == "__main__":
    main()
