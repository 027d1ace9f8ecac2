"""`python -m extend.rope`: the report a user reads before spending GPU hours, and every recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from extend.config import ConfigError
from extend.inspection import rope_report

REPO = Path(__file__).resolve().parent.parent


def test_report_for_the_tiny_recipe(compose_config):
    # The tiny base's architecture without its weights: inspecting needs only the config.
    report = rope_report(OmegaConf.to_object(compose_config("recipe=tiny", "model.cache_dir=/nonexistent")))
    assert "original length L = 128, factor s = 8 -> extended length 1024" in report
    assert "attention factor (scales cos and sin) = 1.207944" in report  # 0.1 ln 8 + 1
    assert "vLLM max_model_len:          1024" in report
    assert '"rope_type": "yarn"' in report
    assert len([l for l in report.splitlines() if l.strip().split(" ")[0].isdigit()]) == 16  # one row per dim


def test_report_rejects_bad_settings(compose_config):
    cfg = OmegaConf.to_object(compose_config("rope=truncated"))
    with pytest.raises(ConfigError, match="rope.truncation_length is required"):
        rope_report(cfg)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "extend.rope", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    out = run("model=tiny_qwen2", "rope=linear", "rope.factor=4")
    assert out.returncode == 0, out.stderr
    assert "extended length 256" in out.stdout and "x factor): 256" in out.stdout
    bad = run("rope=linear", "rope.factor=0.5")
    assert bad.returncode == 2 and "rope.factor=0.5 must be >= 1" in bad.stderr
    assert not any(tmp_path.iterdir()), "the inspection must not write run folders or logs"
