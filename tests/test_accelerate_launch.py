"""The form users know: `accelerate launch extend/train.py recipe=tiny`, on one process and on two (the CPU
form `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`, since `--cpu` silently runs
one process). The recipe is the tiny one, shortened: its random-weight architecture instead of the cached
pretrained tiny base (built once, minutes), its data mix with fewer items, two steps, no evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extend.config import CONF_DIR

pytestmark = pytest.mark.slow  # each launch starts 2-3 Python processes (~10 s of imports each)

REPO = Path(__file__).resolve().parent.parent
SHORT = [
    "model=tiny_base_llama",  # the tiny base's architecture, random weights: nothing to build first
    "data.sources.stdlib.max_documents=24", "data.sources.passkey.num_items=2", "data.sources.copy.num_items=2",
    "curriculum.tokens_per_step=2048", "curriculum.stages=[{length: 1024, steps: 2}]",
    "train.micro_batch_size=1", "eval.after_training=false", "train.tracker=none", "train.checkpoint_every=0",
]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Prepared here, once: a launch on several processes refuses to tokenise (it races the timeout)."""
    from extend.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "tiny"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["recipe=tiny", *SHORT, f"data.output_dir={folder}"]))
    prepare(cfg, log=lambda _: None)
    return folder


def launch(launcher: list[str], env: dict[str, str], dataset: Path, output: Path) -> dict:
    args = ["extend/train.py", "recipe=tiny", *SHORT, f"data.output_dir={dataset}", f"output_dir={output}"]
    proc = subprocess.run([*ACCELERATE, *launcher, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = output / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    card = json.loads((final / "run_card.json").read_text())
    assert card["steps"] == 2 and len(card["losses"]) == 2
    assert card["run_name"] == "tiny" and (card["config"]["rope"]["type"], card["config"]["rope"]["factor"]) == ("yarn", 8.0)
    return card


def test_accelerate_launch_tiny_recipe_on_one_process(dataset_dir, tmp_path):
    card = launch([], {}, dataset_dir, tmp_path / "run")
    assert card["processes"] == 1


def test_accelerate_launch_tiny_recipe_on_two_cpu_processes(dataset_dir, tmp_path):
    card = launch(["--multi_gpu", "--num_processes", "2"], {"ACCELERATE_USE_CPU": "1"}, dataset_dir, tmp_path / "run")
    assert card["processes"] == 2
