"""Writing the extended vision-language model so that stock transformers reloads it.

`InternVLForConditionalGeneration.from_pretrained(final)` reads the rope method from
`text_config.rope_parameters` / `max_position_embeddings` (the portable form extend.rope writes). The V2PE
increment has no field transformers reads: a stock load numbers positions 0, 1, 2, ... unless the caller
passes `position_ids`. So it is recorded twice, as the extra config.json attribute `extend_v2pe` (kept by
a stock load as `config.extend_v2pe`) and in extend_vision.json beside the weights, and users compute the
positions with `extend.vision.v2pe_position_ids` (or its few lines, README) and pass them in together with
an attention mask.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from extend.vision.data import Vocab

V2PE_KEY = "extend_v2pe"
RULE = ("p_first = 0; p_i = p_{i-1} + delta if token i is image_token_id else p_{i-1} + 1; padding advances "
        "nothing; pass these float position_ids and an explicit attention_mask")


def save_vision(model: PreTrainedModel, tokenizer, folder: Path, *, delta: float, original_length: int,
                rope: dict | None, vocab: Vocab, train: dict) -> Path:
    """save_pretrained + the tokenizer (real checkpoints) + extend_vision.json (how it was made)."""
    folder.mkdir(parents=True, exist_ok=True)
    v2pe = {"delta": delta, "image_token_id": model.config.image_token_id, "rule": RULE,
            "helper": "extend.vision.v2pe_position_ids(input_ids, image_token_id, delta, attention_mask)"}
    setattr(model.config, V2PE_KEY, v2pe)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    note = {"v2pe": v2pe, "original_length": original_length,
            "extended_length": model.config.text_config.max_position_embeddings,
            "rope": rope, "vocab": vars(vocab) if tokenizer is None else None, "train": train}
    (folder / "extend_vision.json").write_text(json.dumps(note, indent=2) + "\n")
    return folder
