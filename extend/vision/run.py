"""One vision run, top to bottom: check -> config with the rope method -> build -> evaluate -> fine-tune
with V2PE positions -> evaluate -> export -> eval.json in the run folder.

Every check reads only the config (a preset's, or config.json of a folder / cached Hub id), so bad input
fails before any weights load.
"""

from __future__ import annotations

from functools import partial

from transformers import AutoTokenizer, PretrainedConfig

from extend.config import VisionConfig, VisionRootConfig
from extend.models.loading import torch_dtype
from extend.rope import ResolvedRope
from extend.training.shell import Run, placement_problems, required, resolve_device
from extend.training.steps import log_summary
from extend.vision.data import COLOURS, sample_length, tiny_vocab, tokenizer_vocab
from extend.vision.export import save_vision
from extend.vision.model import (PRESETS, build_model, extended_config, family_problems, load_config,
                                 original_length, resolve_text_rope)
from extend.vision.train import evaluate, fine_tune


def check_vision(cfg: VisionRootConfig, config: PretrainedConfig) -> tuple[ResolvedRope | None, list[str]]:
    """(the bound rope method, every problem with the vision settings for this model), before any weights."""
    vis: VisionConfig = cfg.vision
    problems = family_problems(config)
    if problems:
        return None, problems  # nothing below means anything for another family
    resolved, problems = resolve_text_rope(cfg.rope, vis, config)
    if not vis.v2pe_delta > 0:
        problems.append(f"vision.v2pe_delta={vis.v2pe_delta} must be > 0 (1 = the model's own positions; the "
                        "paper uses 1/256 ... 1, e.g. 0.0625)")
    if any(not d > 0 for d in vis.train.v2pe_deltas):
        problems.append(f"vision.train.v2pe_deltas={vis.train.v2pe_deltas}: every increment must be > 0")
    if vis.task.images < 1:
        problems.append(f"vision.task.images={vis.task.images} must be >= 1")
    if not 2 <= vis.task.colours <= len(COLOURS):
        problems.append(f"vision.task.colours={vis.task.colours} must lie in [2, {len(COLOURS)}]")
    problems += placement_problems("vision", vis.device, vis.dtype)
    if vis.train.steps < 0:
        problems.append(f"vision.train.steps: {vis.train.steps} must be >= 0 (0 = no training)")
    if vis.train.steps and not vis.train.trainable:
        problems.append("vision.train.trainable: empty; name parts of parameter names, e.g. [language_model]")
    if vis.eval.samples < 1 or vis.eval.batch_size < 1 or vis.train.batch_size < 1:
        problems.append("vision.eval.samples, vision.eval.batch_size and vision.train.batch_size must be >= 1")
    if problems:
        return resolved, problems  # the span check below needs a valid target length
    target = vis.target_length or round(cfg.rope.factor * original_length(config))
    for key, fillers in (("vision.train.filler_tokens", vis.train.filler_tokens),
                         ("vision.eval.filler_tokens", vis.eval.filler_tokens)):
        if not fillers or min(fillers) < 0:
            problems.append(f"{key}: {fillers} must be a non-empty list of counts >= 0")
            continue
        # Text tokens advance 1 each, image tokens delta: the longest sample's last position must fit
        # (counted with the tiny layout's one-token question; a tokenizer's question adds a few positions).
        image_tokens = vis.task.images * config.image_seq_length
        longest = sample_length(tiny_vocab(2), max(fillers), config.image_seq_length, vis.task.images)
        span = longest - image_tokens * (1 - min(vis.v2pe_delta, 1))
        if span > target:
            problems.append(f"{key}: {max(fillers)} filler tokens make samples span ~{span:.0f} positions, more "
                            f"than the language model's {target}")
    return resolved, problems


def run_vision(cfg: VisionRootConfig) -> dict:
    """The whole run; returns what eval.json holds."""
    vis = cfg.vision
    config = load_config(required(vis.model, "vision.model", "internvl_tiny_v2pe"))
    resolved, problems = check_vision(cfg, config)
    run = Run.open(cfg.output_dir, problems)
    original = original_length(config)
    config = extended_config(config, resolved)
    tokenizer = None if vis.model in PRESETS else AutoTokenizer.from_pretrained(vis.model)
    vocab = (tiny_vocab(vis.task.colours) if tokenizer is None
             else tokenizer_vocab(tokenizer, config.image_token_id, vis.task.colours))
    model = build_model(vis.model, config, torch_dtype(vis.dtype), vis.attn_implementation, seed=cfg.seed)
    model = model.to(resolve_device(vis.device)).eval()
    score = partial(evaluate, model, vocab, filler_tokens=vis.eval.filler_tokens, samples=vis.eval.samples,
                    batch_size=vis.eval.batch_size, delta=vis.v2pe_delta, noise=vis.task.noise, seed=vis.eval.seed,
                    images=vis.task.images)
    results = {"before": score()}
    t = vis.train
    log = []
    if t.steps:
        log = fine_tune(model, vocab, steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
                        filler_tokens=t.filler_tokens, trainable=t.trainable, delta=vis.v2pe_delta,
                        noise=vis.task.noise, seed=t.seed, images=vis.task.images, deltas=t.v2pe_deltas,
                        log_every=t.log_every)
        results["after"] = score()
    train = {"steps": t.steps, "seed": t.seed, "trainable": t.trainable if t.steps else [],
             "v2pe_deltas": t.v2pe_deltas or [vis.v2pe_delta], **log_summary(log)}
    rope = resolved.provenance() if resolved else None
    export = run.export(lambda folder: save_vision(model, tokenizer, folder, delta=vis.v2pe_delta,
                                                   original_length=original, rope=rope, vocab=vocab, train=train))
    return run.finish({
        "schema": "extend.vision/1",
        "model": vis.model, "model_type": config.model_type,
        "original_length": original,
        "extended_length": config.text_config.max_position_embeddings,
        "rope": rope, "v2pe_delta": vis.v2pe_delta, "image_tokens": config.image_seq_length,
        "images_per_sample": vis.task.images,
        "metric": "answer accuracy (argmax over the colour tokens) and loss, per filler length",
        "results": results,
        "eval": {"filler_tokens": vis.eval.filler_tokens, "samples": vis.eval.samples, "seed": vis.eval.seed},
        "train": train,
        "export": str(export),
    })
