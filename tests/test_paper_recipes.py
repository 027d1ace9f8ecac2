"""Each paper recipe holds its paper's settings: the composed config is checked against a golden table in which
every row cites where the value comes from, so an edit cannot drift from the paper silently.

A row marked `deviation` holds this recipe's value where the paper's cannot be used; the recipe header names
the deviation. docs/paper-recipes.md shows the same tables.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any, NamedTuple

import pytest
from transformers import AutoConfig

from extend.config import ConfigError, SourceConfig
from extend.data.sources import LoadContext, SourceError, check_sources, load_source
from extend.rope import apply_rope, resolve_rope
from test_recipes import STAND_INS, base_config_of, typed


class Row(NamedTuple):
    key: str  # a path into the composed config (`a.b[0].c`), or `=name` for a value derived from it (DERIVED)
    value: Any
    source: str
    deviation: str | None = None  # why the paper's own value is not used


def _resolved(cfg):
    return resolve_rope(cfg.rope, base_config_of(cfg))


DERIVED = {
    # The length the position method treats as the base's own, and the one it extends to.
    "=original_length": lambda cfg: _resolved(cfg).original_length,
    "=extended_length": lambda cfg: _resolved(cfg).extended_length,
    "=rows_per_step": lambda cfg: cfg.curriculum.tokens_per_step // cfg.curriculum.stages[0].length,
    "=stages": lambda cfg: len(cfg.curriculum.stages),
}

GIRAFFE_SCRIPT = "abacusai/Long-Context python/train/finetune_context.py"
HF_TRAINER = f"{GIRAFFE_SCRIPT}: transformers.Trainer defaults"
YARN_PAPER = "YaRN paper section 4.1"
YARN_SCRIPT = "jquesnelle/yarn finetune.py defaults"
EABF = "Entropy-ABF paper"
L2L = "Llama 2 Long paper section 2.1"
LONGLORA_SCRIPT = "dvlab-research/LongLoRA README fine-tuning command"


def _giraffe(factor: int, base_note: str | None) -> list[Row]:
    return [
        Row("model.name_or_path", "meta-llama/Llama-2-13b-hf", "Giraffe paper (LLaMA-13B for x4/x16, Llama-2-13B for x8)",
            base_note),
        Row("=original_length", 4096, "Llama-2-13B config.json", base_note),
        Row("rope.type", "linear", "Giraffe paper; abacusai/Long-Context README (linear scaling)"),
        Row("rope.factor", factor, "abacusai/Long-Context README (scale 16 model); Giraffe paper (x8 on Llama 2)"),
        Row("curriculum.stages[0].length", 4096, f"{GIRAFFE_SCRIPT}: --context-length 4096"),
        Row("=stages", 1, GIRAFFE_SCRIPT),
        Row("curriculum.tokens_per_step", 32 * 4096, f"{GIRAFFE_SCRIPT}: --batch-size 32"),
        Row("curriculum.stages[0].steps", 1000, GIRAFFE_SCRIPT,
            "the script runs 1 epoch of an unpublished RedPajama subset; its step count is not published"),
        Row("train.learning_rate", 2e-5, f"{GIRAFFE_SCRIPT}: --learning-rate 2e-5"),
        Row("train.warmup_steps", 300, f"{GIRAFFE_SCRIPT}: warmup_steps=300"),
        Row("train.lr_schedule", "linear", HF_TRAINER),
        Row("train.min_lr_ratio", 0.0, HF_TRAINER),
        Row("train.weight_decay", 0.0, HF_TRAINER),
        Row("train.adam_betas", [0.9, 0.999], HF_TRAINER),
        Row("adapter.type", "full", f"{GIRAFFE_SCRIPT}: --use-lora not given"),
        Row("data.sources.redpajama.path", "togethercomputer/RedPajama-Data-1T-Sample", "Giraffe paper (RedPajama)",
            "the authors' long-document subset (rp_long) is not published"),
        Row("data.add_bos", False, f"{GIRAFFE_SCRIPT}: add_special_tokens=False"),
        Row("data.sources.redpajama.upsample", {8192: 1.0}, f"{GIRAFFE_SCRIPT}: no upsampling"),
        Row("train.mixed_precision", "bf16", f"{GIRAFFE_SCRIPT}: fp16=True", "bf16 needs no loss scaling"),
    ]


def _yarn(factor: int, steps: int, seed: int) -> list[Row]:
    return [
        Row("=original_length", 4096, "YaRN paper section 4.1 (Llama 2); finetune.py original_max_position_embeddings"),
        Row("rope.type", "yarn", YARN_PAPER),
        Row("rope.factor", factor, YARN_PAPER),
        Row("=extended_length", 4096 * factor, YARN_PAPER),
        Row("curriculum.stages[0].length", 65536, "YaRN paper sections 4.1-4.2 (64k segments, also for s = 32)"),
        Row("=stages", 1, YARN_PAPER),
        Row("=rows_per_step", 64, f"{YARN_PAPER}: global batch size 64"),
        Row("curriculum.stages[0].steps", steps, f"{YARN_PAPER}; jquesnelle/yarn train.sh"),
        Row("train.learning_rate", 2e-5, YARN_PAPER),
        Row("train.warmup_steps", 20, YARN_PAPER),
        Row("train.lr_schedule", "linear", f"{YARN_SCRIPT}: get_linear_schedule_with_warmup"),
        Row("train.min_lr_ratio", 0.0, f"{YARN_SCRIPT}: get_linear_schedule_with_warmup"),
        Row("train.weight_decay", 0.0, YARN_PAPER),
        Row("train.adam_betas", [0.9, 0.95], YARN_PAPER),
        Row("train.max_grad_norm", 0.0, "jquesnelle/yarn train.sh passes no --grad-norm"),
        Row("adapter.type", "full", f"{YARN_PAPER} (FSDP full fine-tune)"),
        Row("seed", seed, "jquesnelle/yarn train.sh / finetune.py --seed"),
        Row("data.sources.pg19.path", "emozilla/pg19", f"{YARN_PAPER} (PG19)",
            "the authors' pre-tokenized emozilla/pg_books-tokenized-bos-eos-chunked-65536 holds token ids"),
        Row("data.add_bos", True, f"{YARN_PAPER}: segments bookended with BOS and EOS"),
    ]


def _longlora(adapter: str) -> list[Row]:
    return [
        Row("model.name_or_path", "meta-llama/Llama-2-7b-hf", "LongLoRA paper section 4.1"),
        Row("rope.type", "linear", "LongLoRA fine-tune.py (rope_scaling linear)"),
        Row("rope.factor", 25, "LongLoRA fine-tune.py: ceil(model_max_length / 4096)"),
        Row("curriculum.stages[0].length", 100000, "LongLoRA README: Llama-2-7b-longlora-100k-ft context 100000"),
        Row("=rows_per_step", 64, "LongLoRA paper 4.1 / README: 8 GPUs x batch 1 x 8 accumulation"),
        Row("curriculum.stages[0].steps", 1000, f"{LONGLORA_SCRIPT}: --max_steps 1000"),
        Row("train.learning_rate", 2e-5, f"{LONGLORA_SCRIPT}: --learning_rate 2e-5"),
        Row("train.warmup_steps", 20, f"{LONGLORA_SCRIPT}: --warmup_steps 20"),
        Row("train.lr_schedule", "constant", f"{LONGLORA_SCRIPT}: constant_with_warmup"),
        Row("train.weight_decay", 0.0, f"{LONGLORA_SCRIPT}: --weight_decay 0.0"),
        Row("train.adam_betas", [0.9, 0.95], "LongLoRA paper section 4.1 (the script's Trainer default is 0.999)"),
        Row("adapter.type", adapter, "LongLoRA paper (LoRA+)" if adapter == "lora" else
            "LongLoRA README: Llama-2-7b-longlora-100k-ft is a full fine-tune"),
        Row("data.sources.redpajama.path", "togethercomputer/RedPajama-Data-1T-Sample", "LongLoRA fine-tune.py"),
        Row("data.sources.redpajama.upsample", {8192: 1.0}, "LongLoRA fine-tune.py: no upsampling"),
        Row("data.add_bos", False, "LongLoRA fine-tune.py tokenize_fn: documents joined by EOS"),
        Row("model.attn_implementation", "flash_attention_2", "LongLoRA README: --use_flash_attn True"),
        Row("train.attention", "s2", "LongLoRA paper section 3.2; fine-tune.py --use_full_attn defaults to False "
            "(the full fine-tune too)", "S2-Attn runs on SDPA here, on FlashAttention-2's varlen kernel there"),
        Row("train.s2_group_fraction", 0.25, "LongLoRA llama_attn_replace.py: group_size_ratio = 1/4"),
    ]


LONGLORA_PLUS = [
    Row("adapter.r", 8, "LongLoRA fine-tune.py LoraConfig"),
    Row("adapter.alpha", 16, "LongLoRA fine-tune.py LoraConfig"),
    Row("adapter.dropout", 0.0, "LongLoRA fine-tune.py LoraConfig"),
    Row("adapter.target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"], "LongLoRA fine-tune.py"),
    Row("adapter.train_embeddings", True, "LongLoRA fine-tune.py: trainable_params embed,norm"),
    Row("adapter.train_norms", True, "LongLoRA fine-tune.py: trainable_params embed,norm"),
]

GOLDEN: dict[str, list[Row]] = {
    "giraffe_16k": _giraffe(16, "LLaMA-13B (2,048) weights are no longer distributed: Llama-2-13B is the closest base"),
    "giraffe_32k": _giraffe(8, None),
    "yarn_64k": [Row("model.name_or_path", "meta-llama/Llama-2-7b-hf", YARN_PAPER), *_yarn(16, 400, 42)],
    "yarn_128k": [
        Row("model.name_or_path", "outputs/yarn_64k/final", f"{YARN_PAPER}: from the finished s = 16 checkpoint"),
        *_yarn(32, 200, 31337),
        Row("data.seed", 31337, "jquesnelle/yarn train.sh: the same data reshuffled with seed 31337"),
    ],
    "entropy_abf_16k": [
        Row("model.name_or_path", "meta-llama/Llama-2-7b-chat-hf", f"{EABF} section 4.1"),
        Row("rope.type", "entropy_abf", f"{EABF} section 3.2"),
        Row("rope.rope_theta", 500000, "GAIR-NLP/Entropy-ABF patch/EABF.py: base=500000"),
        Row("rope.log_scale_length", 4096, "GAIR-NLP/Entropy-ABF patch/EABF.py: math.log(4096)"),
        Row("rope.exempt_layers", 2, f"{EABF} section 3.2; EABF.py apply_eabf(count=2)"),
        Row("=extended_length", 16384, f"{EABF} section 4.1 (16k)"),
        Row("curriculum.stages[0].length", 16384, f"{EABF} section 4.1 (split at 16,384)"),
        Row("=rows_per_step", 32, f"{EABF} appendix A: batch size 32 for fewer than 3.5k samples"),
        Row("curriculum.stages[0].steps", 6, f"{EABF} section 4.3 (6 steps); appendix A (two epochs)"),
        Row("data.sources.sharegpt_long.path", "Arist12/EABF-ShareGPT-Long-3.5k", "GAIR-NLP/Entropy-ABF README"),
        Row("data.sources.sharegpt_long.max_documents", 100, f"{EABF} section 4.3 (100 samples)",
            "which 100 is not published: the first 100"),
        Row("data.sources.sharegpt_long.mask_prompt", True, f"{EABF} appendix A: loss on response tokens only"),
        Row("data.packing", "sft", f"{EABF} section 4.1: conversations are not cut"),
        Row("train.learning_rate", 2e-5, f"{EABF} appendix A"),
        Row("train.lr_schedule", "cosine", f"{EABF} appendix A"),
        Row("train.min_lr_ratio", 0.0, f"{EABF} appendix A (cosine)"),
        Row("train.warmup_steps", 0, f"{EABF} appendix A: 0 warmup for fewer data"),
        Row("train.weight_decay", 0.1, f"{EABF} appendix A"),
        Row("train.adam_betas", [0.9, 0.95], f"{EABF} appendix A"),
        Row("adapter.type", "full", f"{EABF} appendix A (ZeRO-3 full fine-tune)"),
    ],
    "llama2_long_32k": [
        Row("model.name_or_path", "meta-llama/Llama-2-7b-hf", L2L),
        Row("rope.type", "abf", f"{L2L}, 4.1"),
        Row("rope.rope_theta", 500000, f"{L2L}, 4.1"),
        Row("=extended_length", 32768, L2L),
        Row("curriculum.stages[0].length", 32768, f"{L2L}: 32,768 for 7B/13B"),
        Row("=stages", 1, f"{L2L}: one length throughout"),
        Row("curriculum.tokens_per_step", 4194304, f"{L2L}: 4M tokens per step, as Llama 2"),
        Row("curriculum.stages[0].steps", 100000, f"{L2L}: 400B tokens in 100,000 steps"),
        Row("train.learning_rate", 2e-5, f"{L2L}: 2e-5 for 7B/13B"),
        Row("train.lr_schedule", "cosine", L2L),
        Row("train.warmup_steps", 2000, L2L),
        Row("train.adam_betas", [0.9, 0.95], "Llama 2 paper section 2.2", "not restated by Llama 2 Long"),
        Row("train.weight_decay", 0.1, "Llama 2 paper section 2.2", "not restated by Llama 2 Long"),
        Row("train.min_lr_ratio", 0.1, "Llama 2 paper section 2.2", "not restated by Llama 2 Long"),
        Row("adapter.type", "full", L2L),
        Row("data.sources.slimpajama.upsample", {8192: 4.0, 32768: 8.0}, "Llama 2 Long paper 4.2 (long texts upsampled)",
            "the paper's data mix is not released: SlimPajama is the closest public substitute"),
    ],
    "longlora_100k": [*_longlora("lora"), *LONGLORA_PLUS],
    "longlora_100k_full": _longlora("full"),
}


def value_at(cfg, key: str):
    """The value at a `a.b[0].c` path of a composed config (dataclasses and dicts), or a DERIVED value."""
    if key.startswith("="):
        return DERIVED[key](cfg)
    node = cfg
    for name, index in re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", key):
        node = node[name] if isinstance(node, dict) else getattr(node, name)
        if index:
            node = node[int(index)]
    return node


def set_value(cfg, key: str, value) -> None:
    parent, _, last = key.rpartition(".")
    node = value_at(cfg, parent) if parent else cfg
    if isinstance(node, dict):
        node[last] = value
    else:
        setattr(node, last, value)


def drift(recipe: str, cfg) -> list[str]:
    """Every golden row the composed config no longer matches, each naming the key, both values and the source."""
    found = []
    for row in GOLDEN[recipe]:
        try:
            got = value_at(cfg, row.key)
        except (KeyError, ConfigError) as err:  # a derived row whose base or method no longer resolves
            got = f"<not computable: {err}>"
        same = got == pytest.approx(row.value) if isinstance(row.value, float) else got == row.value
        if not same:
            found.append(f"{recipe}: {row.key} = {got!r}, the paper's table says {row.value!r} ({row.source})")
    return found


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-edited"
    if isinstance(value, list):
        return [*value, value[-1]]
    if isinstance(value, dict):
        return {**value, 1: 2.0}
    raise TypeError(value)


@pytest.fixture(scope="module")
def composed():
    return {recipe: typed(recipe) for recipe in GOLDEN}


def test_golden_table_covers_every_paper_recipe_and_cites_a_source():
    assert set(GOLDEN) >= {"giraffe_16k", "giraffe_32k", "yarn_64k", "yarn_128k", "entropy_abf_16k",
                           "llama2_long_32k", "longlora_100k"}
    for recipe, rows in GOLDEN.items():
        assert len({r.key for r in rows}) == len(rows), f"{recipe}: a key is listed twice"
        assert all(r.source for r in rows)


@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_paper_recipe_matches_its_golden_table(recipe, composed):
    assert drift(recipe, composed[recipe]) == []


@pytest.mark.slow  # perturbs and recomposes every paper value: ~20 s
@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_changing_any_paper_value_is_reported(recipe, composed):
    """The check can fail: every plain row, perturbed on its own, is reported; any other report is a value
    derived from it (a changed base changes its original length)."""
    for row in GOLDEN[recipe]:
        if row.key.startswith("="):
            continue
        cfg = copy.deepcopy(composed[recipe])
        set_value(cfg, row.key, changed(row.value))
        found = drift(recipe, cfg)
        plain = [f for f in found if not f.startswith(f"{recipe}: =")]
        assert len(plain) == 1 and plain[0].startswith(f"{recipe}: {row.key} = "), (row.key, found)


def test_changed_factor_or_length_is_reported_through_derived_rows(composed):
    cfg = copy.deepcopy(composed["yarn_64k"])
    cfg.curriculum.tokens_per_step //= 2  # 32 rows per step instead of the paper's 64
    assert [f.split(" = ")[0] for f in drift("yarn_64k", cfg)] == ["yarn_64k: =rows_per_step"]
    cfg = copy.deepcopy(composed["llama2_long_32k"])
    cfg.curriculum.stages = [dataclasses.replace(cfg.curriculum.stages[0], length=8192), cfg.curriculum.stages[0]]
    assert [f.split(" = ")[0] for f in drift("llama2_long_32k", cfg)] == [
        "llama2_long_32k: curriculum.stages[0].length", "llama2_long_32k: =stages"]


def test_yarn_128k_rescales_the_original_4k_recorded_in_yarn_64ks_export(tmp_path, composed):
    """The export serves 65,536 positions; s = 32 must apply to the 4,096 the base was trained at (131,072),
    read back from the saved config.json, not to 65,536 (2,097,152)."""
    first = composed["yarn_64k"]
    base = STAND_INS[first.model.name_or_path]
    apply_rope(base, resolve_rope(first.rope, base)).save_pretrained(tmp_path)
    export = AutoConfig.from_pretrained(tmp_path)
    assert export.max_position_embeddings == 65536
    resolved = resolve_rope(composed["yarn_128k"].rope, export)
    assert (resolved.original_length, resolved.extended_length, resolved.base) == (4096, 131072, 10000.0)
    written = apply_rope(export, resolved)
    assert written.rope_parameters["factor"] == 32
    assert written.rope_parameters["original_max_position_embeddings"] == 4096
    assert written.max_position_embeddings == 131072
    # Without the record of where its positions came from, stacking a second method is refused.
    bare = json.loads((tmp_path / "config.json").read_text())
    bare.pop("extend_position_method")
    (tmp_path / "config.json").write_text(json.dumps(bare))
    with pytest.raises(ConfigError, match="already uses rope_type='yarn'"):
        resolve_rope(composed["yarn_128k"].rope, AutoConfig.from_pretrained(tmp_path))


def test_entropy_abf_data_is_the_authors_hub_set_read_as_sharegpt(composed):
    sources = composed["entropy_abf_16k"].data.sources
    assert check_sources(sources) == []
    assert (sources["sharegpt_long"].type, sources["sharegpt_long"].format) == ("hf", "sharegpt")


def test_sharegpt_turns_become_chat_messages_from_the_first_human_turn(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "q1"},
                                      {"from": "gpt", "value": "a1"}]},
        {"id": "b", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}]},
    ]
    (tmp_path / "sg.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    src = SourceConfig(type="jsonl", path=str(tmp_path / "sg.jsonl"), format="sharegpt", messages_field="conversations")
    assert check_sources({"sg": src}) == []
    raw = load_source("sg", src, LoadContext(tokenizer=None, seed=0))
    assert raw.kind == "chat" and raw.atomic
    assert list(raw.docs) == [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
                        [{"role": "user", "content": "q"}]]
    (tmp_path / "sg.jsonl").write_text(json.dumps({"conversations": [{"from": "bard", "value": "x"}]}))
    with pytest.raises(SourceError, match="speaker\\(s\\) 'bard'"):
        load_source("sg", src, LoadContext(tokenizer=None, seed=0))
