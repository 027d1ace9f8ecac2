"""Key-value retrieval ("Lost in the Middle"; extend.tasks.synthetic.kv): the value of one random hex key
in a JSON object of such pairs; accuracy by length."""

from extend.config import EvalConfig
from extend.eval.generation import GenerationTask, encode_items, items_per_cell
from extend.eval.registry import register
from extend.tasks import synthetic


def _build(tokenizer, cfg: EvalConfig):
    return encode_items(tokenizer, synthetic.generate("kv", tokenizer, cfg.lengths, items_per_cell(cfg), cfg.seed))


register(GenerationTask("kv", _build, scorer="exact"))
