"""Numeric QA in the spirit of Giraffe's AlteredNumericQA (extend.tasks.synthetic.numeric_qa): facts whose
numbers are drawn at random, so they cannot be recalled from pretraining, and a question answered by one of
them; exact match of the number, accuracy by length."""

from extend.config import EvalConfig
from extend.eval.generation import GenerationTask, encode_items, items_per_cell
from extend.eval.registry import register
from extend.tasks import synthetic


def _build(tokenizer, cfg: EvalConfig):
    items = synthetic.generate("numeric_qa", tokenizer, cfg.lengths, items_per_cell(cfg), cfg.seed)
    return encode_items(tokenizer, items)


register(GenerationTask("numeric_qa", _build, scorer="exact"))
