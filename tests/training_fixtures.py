"""A tiny prepared dataset and config for training tests (import the fixtures into a test module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extend.config import CONF_DIR, ExtendConfig

# 64 trained positions on the tiny Llama preset, linear x2 to 128; stages of 64 then 128 tokens with
# 512 tokens per optimizer step (8 then 4 rows per step).
BASE_OVERRIDES = [
    "model=tiny_llama",
    "rope=linear",
    "rope.factor=2",
    "data=stdlib",
    "data.sources.stdlib.max_documents=24",
    "curriculum.tokens_per_step=512",
    "curriculum.stages=[{length: 64, steps: 3}, {length: 128, steps: 3}]",
    "train.learning_rate=1e-2",
    "train.checkpoint_every=2",
    "train.tracker=none",
]


def compose_typed(*overrides: str) -> ExtendConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[*BASE_OVERRIDES, *overrides]))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from extend.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "tiny"
    prepare(compose_typed(f"data.output_dir={folder}"), log=lambda _: None)
    return folder


@pytest.fixture
def make_config(dataset_dir, tmp_path):
    """make_config(*overrides) -> a typed config that trains on the shared dataset into tmp_path/run."""

    def _make(*overrides: str) -> ExtendConfig:
        return compose_typed(f"data.output_dir={dataset_dir}", f"output_dir={tmp_path / 'run'}", *overrides)

    return _make


def stock_reload_max_diff(folder: Path, ids: torch.Tensor, expected: torch.Tensor, workdir: Path,
                          check: str = "True") -> float:
    """Largest logit difference of `folder` loaded in a fresh process by stock transformers (never importing
    extend) from `expected` on `ids`; `check` is an extra assertion on the loaded model `m`."""
    torch.save({"ids": ids, "logits": expected}, workdir / "ref.pt")
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"ref = torch.load({str(workdir / 'ref.pt')!r}, weights_only=True)\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"assert 'extend' not in sys.modules and ({check})\n"
        "with torch.no_grad(): out = m(ref['ids'], use_cache=False).logits\n"
        "print('DIFF', (out - ref['logits']).abs().max().item())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split("DIFF")[1])
