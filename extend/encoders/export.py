"""Writing an extended encoder so that stock transformers and sentence-transformers load it at the new length.

transformers reads `max_position_embeddings` from config.json (the table's rows; for RoPE, the length the
method's export states) and the tokenizer's `model_max_length`; sentence-transformers caps inputs at `max_seq_length` in sentence_bert_config.json and
pools as modules.json / 1_Pooling/config.json say. All of them carry the new length here. A stock load reads
the table with consecutive position ids (position interpolation); the mapped-id mode is not exported.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from extend.config import EncoderConfig

POOLING_MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def sentence_transformers_files(folder: Path, hidden_size: int, max_length: int, pooling: str, normalize: bool) -> None:
    """modules.json (Transformer -> Pooling [-> Normalize]), the pooling config and max_seq_length."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": hidden_size, **{mode: key == pooling for key, mode in POOLING_MODES.items()},
                      "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2) + "\n")


def save_encoder(model: PreTrainedModel, tokenizer, folder: Path, cfg: EncoderConfig, positions: dict) -> Path:
    """The model, its tokenizer (model_max_length = the new length), sentence-transformers files and a note
    of how the positions were extended (extend_encoder.json; `positions` is Extension.note())."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.model_max_length = cfg.target_length
    tokenizer.save_pretrained(folder)
    sentence_transformers_files(folder, model.config.hidden_size, cfg.target_length, cfg.pooling, cfg.normalize)
    note = {**positions, "pooling": cfg.pooling, "normalize": cfg.normalize, "append_eos": cfg.append_eos,
            "query_prefix": cfg.query_prefix, "passage_prefix": cfg.passage_prefix,
            "fine_tuned_steps": cfg.train.steps, "trainable": cfg.train.trainable if cfg.train.steps else []}
    (folder / "extend_encoder.json").write_text(json.dumps(note, indent=2) + "\n")
    return folder
