"""Forward passes with V2PE positions, a short AdamW fine-tune, and answer accuracy on held-out samples.

Every forward passes an explicit attention mask. Without one, transformers' masking_utils reads
`position_ids` as packed sequences wherever consecutive positions differ by anything but 1 (with no cache,
i.e. in training): V2PE's fractional steps would then cut the sequence into blocks that cannot attend to
each other, and the question after the image could no longer see the image (tests/test_vision.py checks
that attention stays causal across the image).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from extend.training.steps import Schedule, StepLoss, Trainable, fit
from extend.vision.data import Batch, Vocab, make_batch
from extend.vision.v2pe import v2pe_position_ids


def forward_logits(model: PreTrainedModel, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                   delta: float | torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (batch, seq, vocab) with V2PE positions and an explicit mask (see the module docstring)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = model.device
    positions = v2pe_position_ids(input_ids, model.config.image_token_id, delta, attention_mask)
    return model(input_ids=input_ids.to(device), pixel_values=pixel_values.to(device, model.dtype),
                 attention_mask=attention_mask.to(device), position_ids=positions.to(device), use_cache=False).logits


def answer_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the answer token, predicted from the position before it."""
    return F.cross_entropy(logits[:, -2].float(), batch.labels[:, -1].to(logits.device))


def fine_tune(model: PreTrainedModel, vocab: Vocab, *, steps: int, batch_size: int, learning_rate: float,
              filler_tokens: list[int], trainable: list[str], delta: float, noise: float, seed: int,
              images: int = 1, deltas: list[float] | None = None, log_every: int = 10) -> list[dict]:
    """Train `model` in place on the colour task; one log record per step (step, filler, loss, seconds).
    With `deltas`, each sample's V2PE increment is drawn from them (seeded) instead of `delta`."""
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    image_tokens, image_size = model.config.image_seq_length, model.config.vision_config.image_size[0]

    def batch(filler: int) -> Batch:
        return make_batch(vocab, batch_size, filler, image_tokens, image_size, noise, generator, rng, images)

    def loss(samples: Batch) -> StepLoss:
        step_delta = torch.tensor([rng.choice(deltas) for _ in range(batch_size)]) if deltas else delta
        value = answer_loss(forward_logits(model, samples.input_ids, samples.pixel_values, step_delta), samples)
        return StepLoss(value, {"loss": round(value.item(), 4)})

    return fit(model, Trainable(trainable, "vision.train.trainable",
                                "'multi_modal_projector', 'language_model', 'vision_tower'"),
               Schedule("filler", filler_tokens), batch, loss, steps=steps, learning_rate=learning_rate, seed=seed,
               train_mode=True, log_every=log_every)


@torch.no_grad()
def evaluate(model: PreTrainedModel, vocab: Vocab, *, filler_tokens: list[int], samples: int, batch_size: int,
             delta: float, noise: float, seed: int, images: int = 1) -> dict[str, dict]:
    """Per filler length: mean answer loss and accuracy (argmax over the colour tokens) on seeded samples."""
    model.eval()
    image_tokens, image_size = model.config.image_seq_length, model.config.vision_config.image_size[0]
    colour_ids = torch.tensor(vocab.colours)
    results = {}
    for filler in filler_tokens:
        generator, rng = torch.Generator().manual_seed(seed + filler), random.Random(seed + filler)
        losses, correct = [], 0
        for first in range(0, samples, batch_size):
            batch = make_batch(vocab, min(batch_size, samples - first), filler, image_tokens, image_size, noise,
                               generator, rng, images)
            logits = forward_logits(model, batch.input_ids, batch.pixel_values, delta).float().cpu()
            losses.append(answer_loss(logits, batch).item() * len(batch.answers))
            correct += (logits[:, -2, colour_ids].argmax(-1) == batch.answers).sum().item()
        results[str(filler)] = {"loss": round(sum(losses) / samples, 4), "accuracy": round(correct / samples, 4),
                                "length": batch.input_ids.shape[1]}
    return results
