"""Embedding encoders: extend a learned absolute position table (BERT / E5 / XLM-R) by interpolation, or a
RoPE encoder (ModernBERT, decoder-based embedders) with a position method; optionally fine-tune
contrastively, evaluate with LongEmbed-style retrieval, export."""

from extend.encoders.positions import (FAMILIES, check_target, extend_encoder, family_of, interpolate_table,
                                       mapped_position_ids, original_length)

__all__ = ["FAMILIES", "check_target", "extend_encoder", "family_of", "interpolate_table", "mapped_position_ids",
           "original_length"]
