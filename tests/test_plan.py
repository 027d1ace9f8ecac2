"""The memory planner (extend/plan.py): golden numbers for a small hand-computed case, the fit and advice
logic, one-line refusals, and the verb's help. In process, no weights."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from extend.commands import VERBS, verb_help
from extend.plan import (
    GB, Geometry, Setup, activation_bytes, advice, fits, loss_bytes, main, plan_rows, render, split_plan_args,
    state_bytes, trainable_parameters,
)

# hidden 64, 2 layers, 4 heads of 16 (2 key/value heads), MLP 128, vocabulary 256, untied: tiny-llama's shape.
G = Geometry(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=256, tied=False)
FULL = Setup(geometry=G, adapter="full", weight_bytes=2, activation_bytes=2, loss_chunk=1024)


def test_parameter_counts_by_hand():
    # per layer: q, o 64x64 each; k, v 64x32 each; gate, up, down 64x128 each; two norms of 64
    assert G.layer_parameters() == 2 * 4096 + 2 * 2048 + 3 * 8192 + 128 == 36_992
    assert G.parameters() == 2 * 36_992 + 2 * 256 * 64 + 64 == 106_816
    # LoRA r=8 on q, k, v, o: 8 x (64+64), 8 x (64+32) twice, 8 x (64+64), per layer
    assert trainable_parameters(replace(FULL, adapter="lora")) == 2 * (1024 + 768 + 768 + 1024) == 7_168
    assert trainable_parameters(replace(FULL, adapter="lora", train_embeddings=True)) == 7_168 + 256 * 64


def test_states_per_zero_stage():
    p = 106_816
    assert state_bytes(FULL) == {"params": 2 * p, "grads": 2 * p, "optimizer": 4 * p}  # ddp: bf16 moments
    four = replace(FULL, gpus=4)
    assert state_bytes(replace(four, zero_stage=1)) == {"params": 2 * p, "grads": 2 * p, "optimizer": 12 * p / 4}
    assert state_bytes(replace(four, zero_stage=2)) == {"params": 2 * p, "grads": 2 * p / 4, "optimizer": 12 * p / 4}
    gathered = 2 * 36_992 * 2  # two layers in flight, 16-bit
    assert state_bytes(replace(four, zero_stage=3)) == {"params": 2 * p / 4 + gathered, "grads": 2 * p / 4,
                                                        "optimizer": 12 * p / 4}
    offloaded = state_bytes(replace(four, zero_stage=3, offload_optimizer=True, offload_params=True))
    assert offloaded == {"params": gathered, "grads": 0.0, "optimizer": 0.0}
    # float32 under ddp: 4 + 4 + 8 bytes per parameter
    fp32 = replace(FULL, weight_bytes=4, activation_bytes=4)
    assert sum(state_bytes(fp32).values()) == 16 * p


def test_activations_with_and_without_checkpointing():
    layer = 4 * 64 + 3 * 64 + 2 * 32 + 4 * 128  # 1,024 elements per token
    work = 2 * 64 + 2 * 128 + 4 * 64  # 640
    assert G.layer_activation_elements() == layer == 1024
    off = replace(FULL, checkpointing=False)
    assert activation_bytes(off, 1000) == (2 * layer + work) * 1000 * 2 == 5_376_000
    assert activation_bytes(FULL, 1000) == (2 * 64 + layer + work) * 1000 * 2 == 3_584_000
    assert activation_bytes(replace(FULL, micro_batch=2), 1000) == 2 * 3_584_000


def test_sequence_parallel_halves_activations_and_loss():
    sp = replace(FULL, gpus=2, sp=2, zero_stage=2)
    for length in (1000, 8192):
        assert activation_bytes(sp, length) == activation_bytes(FULL, length) / 2
    assert loss_bytes(sp, 2048) == loss_bytes(FULL, 1024)  # 1,024 tokens per rank either way


def test_eager_attention_is_quadratic_and_fused_is_not():
    eager = replace(FULL, eager_attention=True, checkpointing=False)
    extra = lambda n: activation_bytes(eager, n) - activation_bytes(replace(eager, eager_attention=False), n)  # noqa: E731
    assert extra(2000) == 4 * extra(1000)
    assert extra(1000) == 2 * 4 * 1000**2 * 2 * 2  # layers x heads x n^2 x 2 tensors x bytes


def test_the_loss_and_the_recomputed_layer_are_not_counted_together():
    from extend.plan import activation_parts

    for setup in (FULL, replace(FULL, checkpointing=False), replace(FULL, loss_chunk=0)):
        for length in (512, 8192):
            kept, recomputed = activation_parts(setup, length)
            (row,) = plan_rows(setup, [length])
            assert row.activations == kept + recomputed == activation_bytes(setup, length)
            states = row.params + row.grads + row.optimizer
            assert row.total == states + kept + max(recomputed, row.loss)
    kept, recomputed = activation_parts(FULL, 1000)
    assert kept == (2 * 64 + 4 * 64) * 1000 * 2  # the layer inputs, embedding output, final norm, loss input


def test_chunked_loss_against_full_logits():
    tokens = 8192
    full = loss_bytes(replace(FULL, loss_chunk=0), tokens)
    assert full == tokens * 256 * (2 + 12)
    # One chunk's float32 logits, turned into their gradient in place, beside a bf16 copy; + the head's fp32 grad.
    assert loss_bytes(FULL, tokens) == 1024 * 256 * (4 + 2) + 256 * 64 * 4
    assert loss_bytes(replace(FULL, adapter="lora"), tokens) == 1024 * 256 * 6
    assert loss_bytes(replace(FULL, zero_stage=3), tokens) == 1024 * 256 * 6  # ZeRO-3: the head's grad is its own
    assert loss_bytes(replace(FULL, adapter="lora", activation_bytes=4), tokens) == 1024 * 256 * 4  # float32: no copy


def test_fit_and_advice():
    big = Geometry(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000, tied=False)
    s = Setup(geometry=big, adapter="full", gpus=8, zero_stage=3, checkpointing=True)
    lengths = [262144]
    assert not fits(s, lengths, 80)
    lines = advice(s, lengths, 80)
    assert lines and all(line.startswith("  ") and line.count("\n") == 0 for line in lines)
    sp_lines = [line for line in lines if "sequence_parallel_size" in line]
    assert sp_lines and sp_lines[-1].endswith("(fits)")
    assert fits(replace(s, sp=int(sp_lines[-1].split("=")[1].split()[0])), lengths, 80)
    off = replace(s, checkpointing=False)
    assert any(line.startswith("  train.gradient_checkpointing=true") for line in advice(off, lengths, 80))
    text = render(s, lengths, 80, "t")
    assert "NO" in text and "Does not fit" in text
    assert "yes" in render(s, [4096], 80, "t") and "Does not fit" not in render(s, [4096], 80, "t")
    assert plan_rows(s, lengths)[0].total > 0.9 * 80 * GB


def test_planner_arguments_are_split_from_overrides():
    own, rest = split_plan_args(["recipe=tiny", "gpus=8", "offload_activations", "train.micro_batch_size=2"])
    assert own == {"gpus": "8", "offload_activations": "true"} and rest == ["recipe=tiny", "train.micro_batch_size=2"]


@pytest.mark.parametrize("args, key", [(["gpus=0"], "gpus=0"), (["gpu_memory=-1"], "gpu_memory=-1"),
                                       (["gpus=two"], "gpus='two'"), (["tiled_mlp=maybe"], "tiled_mlp")])
def test_bad_input_is_one_line_and_exit_2(args, key, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["model=tiny_llama", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and key in err.err


def test_sequence_parallel_must_divide_gpus(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["model=tiny_llama", "gpus=3", "accelerate.sequence_parallel_size=2"])
    assert stopped.value.code == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "sequence_parallel_size=2" in err.err


def test_plan_a_recipe_in_process(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        main(["recipe=tiny", "gpus=1", "gpu_memory=0.1"])
    except SystemExit as stopped:
        assert stopped.code in (0, None)
    out = capsys.readouterr().out
    assert "extend plan: tiny" in out and "  512  " in out and "1,024" in out
    assert "Does not fit" in out  # 0.1 GB is too little for micro-batches of 4 x 1,024 tokens
    assert not any(tmp_path.iterdir())  # planning writes nothing
    # offline only while planning: later code in the process (a test's local Hub stand-in) may still connect
    assert "HF_HUB_OFFLINE" not in os.environ and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_verb_help():
    text = verb_help("plan")
    assert VERBS["plan"].module == "extend.plan"
    assert text.startswith("usage: extend plan ") and "gpu_memory=GB" in text and "giraffe_16k" in text
    for example in VERBS["plan"].examples:
        assert f"  {example}\n" in text


def test_the_cpu_study_replans_stored_measurements(tmp_path, capsys):
    """bench/studies/plan_validation.py at minimal size: one stored measurement, re-planned without training."""
    import json

    from bench.studies.plan_validation import main as study

    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps([{"adapter": "lora", "length": 1024, "checkpointing": True, "measured_gb": 0.5}]))
    (row,) = study(["--measured", str(measured), "--out", str(tmp_path / "out.json")])
    # 1,023 x 32,000 x 4 B of float32 logits (scored in place; 0.122 GB) beside the activations kept through
    # the backward (0.008 GB); the recomputed layer (0.028 GB) comes after the loss's buffers are gone.
    assert row["plan_beyond_weights"] == pytest.approx(0.131, abs=0.002)
    assert row["error"] == pytest.approx(row["plan_beyond_weights"] / 0.5 - 1, abs=2e-3)
    assert row["measured_live_gb"] is None and row["error_live"] is None  # not in the stored measurement
    assert "| lora | 1,024 | on | – | 0.131 | 0.036 / 0.122 | – | 0.500 | -74% |" in capsys.readouterr().out


def test_a_base_not_on_this_machine_is_one_line_or_read_from_base_config(tmp_path, monkeypatch, capsys):
    from transformers import LlamaConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["model=hf", "model.name_or_path=some-org/not-here"])
    assert stopped.value.code == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "base_config=PATH" in err.err
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=256, tie_word_embeddings=False).save_pretrained(tmp_path / "geometry")
    try:
        main(["model=hf", "model.name_or_path=some-org/not-here", f"base_config={tmp_path / 'geometry' / 'config.json'}"])
    except SystemExit as done:
        assert done.code in (0, None)
    assert "0.1M parameters (2 layers, hidden 64, 4/2 heads, MLP 128, vocab 256)" in capsys.readouterr().out


def test_the_train_memory_options_are_planned_like_the_what_if_switches():
    from extend.plan import setup_from_config
    from training_fixtures import compose_typed

    plain = setup_from_config(compose_typed(), G, gpus=1)
    keys = setup_from_config(compose_typed("train.tiled_mlp=true", "train.checkpoint_offload=true"), G, gpus=1)
    switches = setup_from_config(compose_typed(), G, gpus=1, offload_activations=True, tiled_mlp=True)
    assert not plain.tiled_mlp and not plain.offload_activations
    assert keys == switches and keys.tiled_mlp and keys.offload_activations
