"""Passkey retrieval over lengths x depths (the Landmark / LongLoRA protocol, extend.tasks.synthetic):
a 5-digit key hidden at a depth of filler text, greedy decoding, exact match; reported as a heatmap."""

from extend.config import EvalConfig
from extend.eval.generation import GenerationTask, encode_items, items_per_cell
from extend.eval.registry import register
from extend.tasks import synthetic


def _build(tokenizer, cfg: EvalConfig):
    items = synthetic.generate("passkey", tokenizer, cfg.lengths, items_per_cell(cfg), cfg.seed, depths=cfg.depths)
    return encode_items(tokenizer, items)


register(GenerationTask("passkey", _build, scorer="exact", by_depth=True))
