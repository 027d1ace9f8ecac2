"""LongChat-Lines line retrieval (extend.tasks.synthetic.lines): the number registered in one named line
among many, generated from the seed; accuracy by length."""

from extend.config import EvalConfig
from extend.eval.generation import GenerationTask, encode_items, items_per_cell
from extend.eval.registry import register
from extend.tasks import synthetic


def _build(tokenizer, cfg: EvalConfig):
    return encode_items(tokenizer, synthetic.generate("lines", tokenizer, cfg.lengths, items_per_cell(cfg), cfg.seed))


register(GenerationTask("lines", _build, scorer="exact"))
