"""bench/studies/export_memory.py's comparison of two exports, tensor by tensor (the measured runs need two
DeepSpeed launches: results/scale_out.md)."""

from __future__ import annotations

import torch

from bench.studies.export_memory import compare
from extend.models.loading import build_random

from eval_helpers import tiny_config


def test_equal_exports_compare_equal_and_one_changed_tensor_is_named(tmp_path):
    for name in ("a", "b", "c"):
        build_random(tiny_config(300), seed=0).save_pretrained(tmp_path / name)
    changed = build_random(tiny_config(300), seed=0)
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1e-6
    changed.save_pretrained(tmp_path / "c")
    assert compare(tmp_path / "a", tmp_path / "b") == {"tensors": 21, "differing": [], "configs_equal": True}
    assert compare(tmp_path / "a", tmp_path / "c")["differing"] == ["lm_head.weight"]
