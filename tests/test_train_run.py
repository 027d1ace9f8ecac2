"""End-to-end training on a tiny model: files, what trains, what stays frozen, reloads, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from extend.config import ConfigError
from extend.models import load_base_config, load_base_model
from extend.models.tokenizer import load_tokenizer
from extend.rope import apply_rope, resolve_rope
from extend.train import train

from training_fixtures import dataset_dir, make_config, stock_reload_max_diff  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent

FINAL_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "run_card.json",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "adapter",
}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
CHECKPOINT_FILES = {"COMPLETE", "optimizer.pt", "rng.pt", "scheduler.pt", "state.json", "trainable.safetensors"}


def base_model(cfg):
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
    config = load_base_config(cfg.model, tokenizer=tokenizer)
    return load_base_model(cfg.model, apply_rope(config, resolve_rope(cfg.rope, config)))


def test_lora_run_writes_the_documented_files_and_trains_only_the_adapter(make_config):
    cfg = make_config()
    final = train(cfg)
    run = final.parent
    assert {p.name for p in final.iterdir()} == FINAL_FILES
    assert {p.name for p in (final / "adapter").iterdir()} == ADAPTER_FILES
    # 6 steps, a checkpoint every 2, the newest 2 kept.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    assert {p.name for p in (run / "checkpoints" / "step-000006").iterdir()} == CHECKPOINT_FILES

    # Rerunning the finished run says so and touches nothing (no re-export, no re-evaluation).
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert train(cfg) == final
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp

    card = json.loads((final / "run_card.json").read_text())
    assert card["steps"] == 6 and card["tokens"] == 6 * 512 and len(card["losses"]) == 6
    assert card["config"]["rope"]["type"] == "linear"
    assert json.loads((final / "tokenizer_config.json").read_text())["model_max_length"] == 128

    base = base_model(cfg).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(final).state_dict()
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    for name, value in base.items():
        if any(t in name for t in targets):
            assert not torch.equal(merged[name], value), f"{name}: LoRA should have changed it"
        else:
            assert torch.equal(merged[name], value), f"{name}: frozen weight changed"
    lora = load_file(final / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero


def test_trainable_embeddings_and_norms_are_saved_and_merged(make_config):
    cfg = make_config("adapter=longlora")
    final = train(cfg)
    base = base_model(cfg).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(final).state_dict()
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert not torch.equal(merged[name], base[name]), f"{name} should have trained and been merged"
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    saved = load_file(final / "adapter" / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in saved) and any("input_layernorm" in k for k in saved)
    # The adapter folder alone, on the base, rebuilds the merged model.
    restored = PeftModel.from_pretrained(base_model(cfg), final / "adapter").merge_and_unload().state_dict()
    for name, value in merged.items():
        assert torch.allclose(restored[name], value, atol=1e-6), name


@pytest.mark.slow
def test_final_model_reloads_in_a_fresh_process_without_extend(make_config, tmp_path):
    cfg = make_config("rope=yarn", "rope.factor=2")
    final = train(cfg)
    ids = torch.randint(0, 4000, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base_model(cfg), final / "adapter")(ids, use_cache=False).logits
    assert stock_reload_max_diff(final, ids, expected, tmp_path) <= 1e-5


@pytest.mark.slow
def test_a_model_with_rope_per_attention_type_trains_and_reloads(make_config, tmp_path):
    """Gemma 3 keeps a local and a global RoPE base: yarn rescales the global layers only, and the merged
    export reloads in stock transformers with the same logits past the original length."""
    cfg = make_config("model=tiny_gemma3", "rope=yarn", "rope.factor=2")
    final = train(cfg)
    saved = json.loads((final / "config.json").read_text())["rope_parameters"]
    assert saved["full_attention"]["rope_type"] == "yarn" and saved["full_attention"]["rope_theta"] == 1e6
    assert saved["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    ids = torch.randint(0, 4000, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base_model(cfg), final / "adapter")(ids, use_cache=False).logits
    assert stock_reload_max_diff(final, ids, expected, tmp_path) <= 1e-5


def test_batch_one_times_accumulation_four_equals_batch_four(make_config, tmp_path):
    runs = {}
    for micro in (1, 4):
        cfg = make_config(f"train.micro_batch_size={micro}", f"output_dir={tmp_path / f'mb{micro}'}", "train.checkpoint_every=0")
        final = train(cfg)
        runs[micro] = (json.loads((final / "run_card.json").read_text())["losses"], load_file(final / "model.safetensors"))
    (losses1, weights1), (losses4, weights4) = runs[1], runs[4]
    assert losses1 == pytest.approx(losses4, abs=1e-5)
    for name in weights1:
        assert torch.allclose(weights1[name], weights4[name], atol=1e-5), name


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.seed=7"], "was made from a different config"),
        (["rope.type=none", "rope.factor=1"], "curriculum.stages[1].length=128 is longer than the 64 positions"),
        (["model=hf", "model.name_or_path=./no/such/model"], "does not exist"),
        (["adapter.target_modules=[qq_proj]"], "adapter.target_modules ['qq_proj'] do not exist in LlamaForCausalLM"),
        (["train.micro_batch_size=3"], "do not split into micro-batches of 3"),
    ],
)
def test_bad_input_fails_before_training(make_config, overrides, message):
    cfg = make_config(*overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert message in str(err.value)
    assert not Path(cfg.output_dir, "final").exists() and not Path(cfg.output_dir, "checkpoints").exists()


@pytest.mark.slow
def test_cli_rejects_an_unknown_recipe_and_key():
    for args, message in ((["recipe=no_such_recipe"], "recipe=no_such_recipe: no such option"), (["train.learning_rat=1"], "train.learning_rat")):
        proc = subprocess.run([sys.executable, "extend/train.py", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]


def test_per_stage_rope_base(make_config):
    """EasyContext-style: a smaller base in the short stage; the last stage and the export use rope.rope_theta."""
    cfg = make_config(
        "rope=abf", "rope.rope_theta=80000", "train.checkpoint_every=0",
        "curriculum.stages=[{length: 64, steps: 3, rope_theta: 20000}, {length: 128, steps: 3}]",
    )
    final = train(cfg)
    assert json.loads((final / "config.json").read_text())["rope_parameters"]["rope_theta"] == 80000.0
    wrong = make_config("rope=abf", "rope.rope_theta=80000", "curriculum.stages=[{length: 64, steps: 3}, {length: 128, steps: 3, rope_theta: 20000}]")
    with pytest.raises(ConfigError, match="differs from rope.rope_theta=80000.0"):
        train(wrong)
    with pytest.raises(ConfigError, match="needs rope.type abf or entropy_abf"):
        train(make_config("curriculum.stages=[{length: 64, steps: 3, rope_theta: 20000}, {length: 128, steps: 3}]"))


def test_tensorboard_tracker_logs_every_step(make_config):
    cfg = make_config("train.tracker=tensorboard", "train.checkpoint_every=0", "train.max_steps=2")
    final = train(cfg)
    events = list(final.parent.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert all(final.parent / "logs" in e.parents for e in events)  # <run>/logs, not <run>/<run_name>
    with pytest.raises(ConfigError, match="train.tracker='nope' is unknown"):
        train(make_config("train.tracker=nope"))


def test_qlora_trains_on_a_4bit_base_and_exports_full_precision(make_config, tmp_path):
    tokenizer = load_tokenizer("tiny")
    folder = tmp_path / "base"
    config = load_base_config(make_config().model, tokenizer=tokenizer)
    load_base_model(make_config().model, config).save_pretrained(folder)
    cfg = make_config("model=hf", f"model.name_or_path={folder}", "adapter.quantize=4bit", "train.checkpoint_every=0")
    final = train(cfg)
    lora = load_file(final / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # not 4-bit
    expected = PeftModel.from_pretrained(base_model(cfg), final / "adapter").merge_and_unload().state_dict()
    for name, value in merged.state_dict().items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    with pytest.raises(ConfigError, match="needs saved weights"):
        train(make_config("adapter.quantize=4bit"))


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_gradient_checkpointing_recomputes_each_layer_in_the_backward(make_config, adapter, monkeypatch):
    """from_pretrained returns a model in eval mode, where transformers neither checkpoints a layer nor
    applies dropout: the loop must train in training mode, or train.gradient_checkpointing (and LoRA's
    dropout) silently do nothing. With checkpointing each layer's MLP runs twice per row (the forward and the
    backward's recomputation), without it once."""
    import extend.train
    from extend.train import setup, train_step
    from extend.training.batches import StageRows

    loaded = extend.train.load_base_model  # the tiny base is built from its config; a Hub base comes in eval mode
    monkeypatch.setattr(extend.train, "load_base_model", lambda *a, **k: loaded(*a, **k).eval())
    calls = {}
    for checkpointing in (False, True):
        run = setup(make_config(f"adapter={adapter}", f"train.gradient_checkpointing={str(checkpointing).lower()}"))
        assert all(m.training for m in run.model.modules())
        mlp = next(m for name, m in run.model.named_modules() if name.endswith("layers.0.mlp"))
        calls[checkpointing] = []
        hook = mlp.register_forward_pre_hook(lambda *_, c=calls[checkpointing]: c.append(1))
        train_step(run, StageRows(run.stages[0]).step_rows(0))
        hook.remove()
    assert len(calls[False]) > 0 and len(calls[True]) == 2 * len(calls[False])
