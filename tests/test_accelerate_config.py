"""conf/accelerate/: every option composes into the DeepSpeed config it promises; bad settings are refused."""

from __future__ import annotations

import pytest

from extend.training.distributed import check_accelerate, deepspeed_config

from training_fixtures import compose_typed


@pytest.mark.parametrize("option, stage, offload", [("zero2", 2, None), ("zero3", 3, None), ("zero3_offload", 3, "cpu")])
def test_deepspeed_options(option, stage, offload):
    cfg = compose_typed(f"accelerate={option}", "train.micro_batch_size=2", "train.mixed_precision=bf16")
    ds = deepspeed_config(cfg)
    zero = ds["zero_optimization"]
    assert cfg.accelerate.name == option and zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == offload
    assert zero.get("offload_param", {}).get("device") == offload
    # One engine step per optimizer step: the loop accumulates micro-batches itself.
    assert ds["gradient_accumulation_steps"] == 1 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_clipping"] == cfg.train.max_grad_norm and ds["bf16"]["enabled"]
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    # Buckets sized from the model (accelerate fills "auto" from the prepared model's hidden size), not
    # DeepSpeed's 5e8-element default.
    assert zero["reduce_bucket_size"] == "auto"
    sized = deepspeed_config(cfg, hidden_size=64)["zero_optimization"]
    assert sized["reduce_bucket_size"] == 64 * 64
    if stage == 3:
        assert sized["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert sized["stage3_param_persistence_threshold"] == 640
    else:
        assert "stage3_prefetch_bucket_size" not in sized


def test_ddp_is_the_default_and_valid():
    cfg = compose_typed()
    assert cfg.accelerate.strategy == "ddp" and check_accelerate(cfg, num_heads=4, world_size=1) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["accelerate.strategy=fsdp"], "accelerate.strategy='fsdp' is unknown"),
        (["accelerate=zero2", "accelerate.zero_stage=4"], "accelerate.zero_stage=4: choose 1, 2 or 3"),
        (["accelerate=zero2", "accelerate.offload_params=cpu"], "accelerate.offload_params needs accelerate.zero_stage=3"),
        (["accelerate=zero2", "accelerate.offload_optimizer=nvme"], "accelerate.offload_optimizer='nvme': choose none or cpu"),
        (["accelerate=zero2", "adapter.quantize=4bit"], "adapter.quantize (QLoRA) runs under accelerate=ddp"),
        (["accelerate.sequence_parallel_size=2"], "needs a DeepSpeed option: add accelerate=zero2 or zero3"),
        (["accelerate=zero3", "accelerate.sequence_parallel_size=3"], "does not divide the 4 launched processes"),
        (["accelerate=zero3", "accelerate.sequence_parallel_size=4"], "does not divide the model's 6 attention heads"),
        (["accelerate=zero3", "accelerate.sequence_parallel_size=4", "curriculum.stages=[{length: 66, steps: 1}]"],
         "curriculum.stages[0].length=66 does not split into 4 equal sequence shards"),
        (["accelerate=zero3", "accelerate.sequence_parallel_size=2", "train.packed_attention=false"],
         "set train.packed_attention=true and model.attn_implementation=sdpa"),
        (["accelerate=zero3", "accelerate.sequence_parallel_size=2", "model.attn_implementation=eager"],
         "set train.packed_attention=true and model.attn_implementation=sdpa"),
    ],
)
def test_bad_settings_are_refused(overrides, message, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    problems = check_accelerate(compose_typed(*overrides), num_heads=6, world_size=4)
    assert any(message in p for p in problems), problems


def test_valid_sequence_parallel_settings_pass(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = compose_typed("accelerate=zero3", "accelerate.sequence_parallel_size=2")
    assert check_accelerate(cfg, num_heads=4, world_size=4, kv_heads=2) == []
    assert check_accelerate(cfg, num_heads=4, world_size=4, kv_heads=1) == []  # key/value heads replicated


def test_key_value_heads_and_sequence_parallel_size_must_divide_one_another(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = compose_typed("accelerate=zero3", "accelerate.sequence_parallel_size=4")
    problems = check_accelerate(cfg, num_heads=12, world_size=4, kv_heads=6)
    assert problems == ["accelerate.sequence_parallel_size=4 and the model's 6 key/value heads: one must divide the other"]


def test_deepspeed_without_a_launcher_is_refused(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    problems = check_accelerate(compose_typed("accelerate=zero2"), world_size=1)
    assert problems == ["accelerate=zero2 (DeepSpeed) needs a launcher, even for one process: ./launch.sh --processes N "
                        "... (or torchrun / accelerate launch)"]


def test_rows_per_step_are_dealt_to_sequence_parallel_groups_not_processes():
    from extend.validation import check_training

    # 512 tokens per step: 8 rows at 64, 4 rows at 128; micro-batches of 2 on 4 processes.
    plain = check_training(compose_typed("accelerate=zero3", "train.micro_batch_size=2"), world_size=4, addressable=None)
    assert plain == ["curriculum.stages[1]: 4 rows per step do not split into micro-batches of 2 on 4 process(es); "
                     "change train.micro_batch_size or curriculum.tokens_per_step"]
    sp = compose_typed("accelerate=zero3", "accelerate.sequence_parallel_size=2", "train.micro_batch_size=2")
    assert check_training(sp, world_size=4, addressable=None) == []  # 2 groups of 2 processes
    three = compose_typed("accelerate=zero3", "accelerate.sequence_parallel_size=2",
                          "train.micro_batch_size=3")
    assert any("on 2 sequence-parallel group(s) of 2 processes" in p
               for p in check_training(three, world_size=4, addressable=None))


def test_runs_in_one_process_may_change_mixed_precision(tmp_path):
    """A study or notebook that trains in float32 and then in bf16 in one process: accelerate refuses a
    second Accelerator with another mixed precision unless its per-process state is reset."""
    from extend.training.distributed import build_accelerator

    for precision in ("no", "bf16", "no"):
        cfg = compose_typed(f"train.mixed_precision={precision}", f"output_dir={tmp_path}")
        assert build_accelerator(cfg, None).mixed_precision == precision
