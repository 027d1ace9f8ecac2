"""Started by tests/test_train_sequence_parallel.py under torchrun (2 processes, gloo): the gradients of one
optimizer step on packed rows under sequence parallelism, at ZeRO stages 1, 2 and 3, written to OUT.

    python -m torch.distributed.run --nproc_per_node 2 tests/sequence_parallel_worker.py OUT ROWS OVERRIDES...

ROWS is a torch file of whole rows (input_ids, labels, position_ids). Stage 2 is the run extend/train.py
builds (setup: accelerate, Ulysses registration, ZeRO through accelerate); stages 1 and 3 are engines built
on fresh copies of the same base in the same processes (Ulysses is registered once per process). Every
stage takes its inputs and loss scale from extend.train (step_inputs, backward_loss), as train_step does,
and stops before the optimizer step: the full gradients are gathered with DeepSpeed's safe_get_full_grad.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from extend.config import CONF_DIR  # noqa: E402
from extend.models import load_base_model  # noqa: E402
from extend.models.packed_attention import use_packed_attention  # noqa: E402
from extend.train import backward_loss, forward_loss, setup, step_inputs  # noqa: E402
from extend.training.distributed import deepspeed_config  # noqa: E402
from extend.training.model import ChunkedCausalLM, without_zero3_init  # noqa: E402


def gradients(run, rows) -> dict:
    """Loss and full gradients of one step's rows, through the engine in run.model (not stepped)."""
    batches, tokens = step_inputs(run, rows)
    engine, total = run.model, torch.zeros(())
    for i, batch in enumerate(batches):
        engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
        loss_sum = forward_loss(run, batch)
        engine.backward(backward_loss(run, loss_sum, tokens))
        total += loss_sum.detach()
    torch.distributed.all_reduce(total)
    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters() if p.requires_grad}
    return {"loss": float(total) / tokens, "grads": {k: v.detach().clone() for k, v in grads.items()}}


def main() -> None:
    out, rows_file, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=overrides))
    rows = torch.load(rows_file, weights_only=True)
    run = setup(cfg)
    results = {cfg.accelerate.zero_stage: gradients(run, rows)}
    for stage in (1, 3):
        if stage in results:
            continue
        staged = replace(cfg, accelerate=replace(cfg.accelerate, zero_stage=stage))
        with without_zero3_init(run.accelerator):
            model = load_base_model(cfg.model, run.model_config, seed=cfg.seed)
        use_packed_attention(model)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=ChunkedCausalLM(model, cfg.train.loss_chunk_size),
                                          optimizer=torch.optim.AdamW(params), config=deepspeed_config(staged, model.config.hidden_size))
        results[stage] = gradients(replace(run, model=engine), rows)
    if run.accelerator.is_main_process:
        torch.save(results, out)


if __name__ == "__main__":
    main()
