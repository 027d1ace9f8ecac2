"""Embedding encoders with learned absolute positions (BERT / E5 / XLM-R): extend the position table by
interpolation, optionally fine-tune contrastively, evaluate with LongEmbed-style retrieval, export."""

from extend.encoders.positions import (FAMILIES, check_target, extend_encoder, family_of, interpolate_table,
                                       mapped_position_ids, original_length)

__all__ = ["FAMILIES", "check_target", "extend_encoder", "family_of", "interpolate_table", "mapped_position_ids",
           "original_length"]
