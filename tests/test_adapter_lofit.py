"""LoFiT: what each stage trains, the head selection, the folded export, exact resume and bad input.

One real training run (6 steps, stage 1 = steps 1-3, a checkpoint after every step) is inspected step by
step through its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, GPT2Config, MistralConfig

from extend.adapters import build_adapter
from extend.config import AdapterConfig, LofitConfig
from extend.models import load_base_model
from extend.train import train

from training_fixtures import dataset_dir, make_config, stock_reload_max_diff  # noqa: F401  (fixtures)

LOFIT = ["adapter=lofit", "adapter.lofit.heads=3", "adapter.lofit.select_steps=3", "adapter.lofit.l1=1e-3",
         "train.checkpoint_every=1", "train.keep_checkpoints=10"]
TENSORS = ("probe", "scale", "offset")


def checkpoint(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors")


def by_kind(state: dict[str, torch.Tensor], kind: str) -> list[torch.Tensor]:
    """The (heads, head_dim) tensors of one kind, layer by layer."""
    return [state[k] for k in sorted(state) if k.endswith(f"lofit.{kind}")]


@pytest.fixture(scope="module")
def lofit_run(dataset_dir, tmp_path_factory):
    from training_fixtures import compose_typed

    out = tmp_path_factory.mktemp("lofit") / "run"
    cfg = compose_typed(f"data.output_dir={dataset_dir}", f"output_dir={out}", *LOFIT)
    return cfg, train(cfg)


@pytest.mark.slow
def test_stage_one_trains_only_the_scalings(lofit_run):
    cfg, final = lofit_run
    run = final.parent
    for step in (1, 2, 3):
        state = checkpoint(run, step)
        assert set(k.rsplit(".", 1)[-1] for k in state) == set(TENSORS)  # nothing else trains
        assert all(p.abs().sum() > 0 for p in by_kind(state, "probe")), f"A did not train at step {step}"
        assert all(torch.count_nonzero(t) == 0 for t in by_kind(state, "scale") + by_kind(state, "offset"))


@pytest.mark.slow
def test_selection_matches_a_hand_computed_ranking(lofit_run):
    cfg, final = lofit_run
    probes = by_kind(checkpoint(final.parent, 3), "probe")
    norms = [(p[h].norm().item(), layer, h) for layer, p in enumerate(probes) for h in range(p.shape[0])]
    expected = sorted([layer, h] for _, layer, h in sorted(norms, key=lambda t: (-t[0], t[1], t[2]))[:3])
    card = json.loads((final / "run_card.json").read_text())["adapter"]
    assert [[s["layer"], s["head"]] for s in card["selected_heads"]] == expected
    assert [r["norm"] for r in card["ranking"]] == pytest.approx(sorted((n for n, _, _ in norms), reverse=True))
    state = json.loads((final.parent / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["adapter_state"]["selected_heads"] == expected  # the ranking travels with the checkpoint
    assert card["stage2_trainable_parameters"] == 3 * probes[0].shape[1]


@pytest.mark.slow
def test_stage_two_trains_only_the_offsets_of_the_selected_heads(lofit_run):
    cfg, final = lofit_run
    selected = {(s["layer"], s["head"]) for s in json.loads((final / "run_card.json").read_text())["adapter"]["selected_heads"]}
    stage_one = checkpoint(final.parent, 3)
    for step in (4, 5, 6):
        state = checkpoint(final.parent, step)
        for a, b in zip(by_kind(stage_one, "probe"), by_kind(state, "probe")):
            assert torch.equal(a, b), "stage 1's A moved in stage 2"
        assert all(torch.count_nonzero(t) == 0 for t in by_kind(state, "scale"))
        for layer, offset in enumerate(by_kind(state, "offset")):
            for head in range(offset.shape[0]):
                assert (offset[head].abs().sum() > 0) == ((layer, head) in selected), (step, layer, head)


@pytest.mark.slow
def test_folded_export_matches_the_unfolded_model_in_a_fresh_process(lofit_run, tmp_path):
    cfg, final = lofit_run
    adapter = build_adapter(cfg.adapter)
    from extend.models import load_base_config
    from extend.models.tokenizer import load_tokenizer
    from extend.rope import apply_rope, resolve_rope

    base_config = load_base_config(cfg.model, tokenizer=load_tokenizer(cfg.data.tokenizer))
    unfolded = adapter.attach(load_base_model(cfg.model, apply_rope(base_config, resolve_rope(cfg.rope, base_config)), seed=cfg.seed))
    trained = checkpoint(final.parent, 6)
    unfolded.load_state_dict(trained, strict=False)
    adapter.load_state(unfolded, json.loads((final.parent / "checkpoints" / "step-000006" / "state.json").read_text())["adapter_state"])
    ids = torch.randint(0, 4000, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = unfolded(ids, use_cache=False).logits
    assert stock_reload_max_diff(final, ids, expected, tmp_path, check="m.config.attention_bias") <= 1e-5
    # And the fold changed something: the offsets became o_proj's bias.
    exported = load_file(final / "model.safetensors")
    assert any(k.endswith("o_proj.bias") and torch.count_nonzero(v) for k, v in exported.items())
    assert (final / "adapter" / "lofit.safetensors").exists() and (final / "adapter" / "lofit.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [2, 5], ids=["mid-stage-1", "mid-stage-2"])
def test_resume_mid_stage_is_exact(lofit_run, make_config, stop_at, capsys):
    _, reference = lofit_run
    cfg = make_config(*LOFIT, f"train.max_steps={stop_at}")
    train(cfg)  # stops after `stop_at` steps, as an interrupted run would have
    capsys.readouterr()
    resumed = train(make_config(*LOFIT))
    assert f"step-{stop_at:06d} (step {stop_at})" in capsys.readouterr().out
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resuming at step {stop_at}"


@pytest.mark.slow
def test_scales_in_stage_two_train_only_on_selected_heads(make_config):
    final = train(make_config(*LOFIT, "adapter.lofit.train_scales=true"))
    selected = {(s["layer"], s["head"]) for s in json.loads((final / "run_card.json").read_text())["adapter"]["selected_heads"]}
    for layer, scale in enumerate(by_kind(checkpoint(final.parent, 6), "scale")):
        for head in range(scale.shape[0]):
            assert (scale[head].abs().sum() > 0) == ((layer, head) in selected)


def meta_model(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize(
    "model, lofit, message",
    [
        (LlamaConfig(**LLAMA), LofitConfig(heads=9), "adapter.lofit.heads=9 is more than the model's 8 attention heads"),
        (LlamaConfig(**LLAMA), LofitConfig(heads=2.5), "give a count (a whole number >= 1) or a fraction in (0, 1)"),
        (LlamaConfig(**LLAMA), LofitConfig(l1=-0.1), "adapter.lofit.l1=-0.1 must be >= 0"),
        (LlamaConfig(**LLAMA), LofitConfig(select_steps=0), "adapter.lofit.select_steps=0 must be >= 1"),
        (GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64), LofitConfig(), "needs attention modules with a per-head output"),
        (MistralConfig(**LLAMA), LofitConfig(), "o_proj cannot take a bias in stock transformers"),
    ],
)
def test_bad_input_is_refused(model, lofit, message):
    problems = build_adapter(AdapterConfig(type="lofit", lofit=lofit)).check(meta_model(model))
    assert any(message in p for p in problems), problems


def test_scalings_only_is_accepted_where_offsets_cannot_fold():
    adapter = build_adapter(AdapterConfig(type="lofit", lofit=LofitConfig(train_offsets=False, train_scales=True)))
    assert adapter.check(meta_model(MistralConfig(**LLAMA))) == []


def test_stage_one_longer_than_the_run_is_refused(make_config):
    from extend.config import ConfigError

    with pytest.raises(ConfigError, match="adapter.lofit.select_steps=6 leaves no steps for stage 2"):
        train(make_config("adapter=lofit", "adapter.lofit.select_steps=6"))


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_run(lofit_run, make_config):
    _, reference = lofit_run
    final = train(make_config(*LOFIT, "train.gradient_checkpointing=true"))
    want = json.loads((reference / "run_card.json").read_text())["losses"]
    got = json.loads((final / "run_card.json").read_text())["losses"]
    assert got == pytest.approx(want, rel=1e-6)
