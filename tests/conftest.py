"""Shared fixtures: Hydra composition and the method settings every rope test walks through."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import extend  # noqa: F401  (registers entropy_abf)
from extend.config import CONF_DIR

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# DeepSpeed compiles its ops (shared-memory comm, CPU Adam) on first use, ~45-80 s each on 2 cores, into
# TORCH_EXTENSIONS_DIR. Keep them in the project's cache, per Python and torch version (a compiled op is
# tied to both), so that every run after the first reuses them; the processes tests start inherit it.
# An explicit TORCH_EXTENSIONS_DIR wins.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(
    Path("~/.cache/extend/torch_extensions").expanduser() / f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"))

# The benchmark smoke tests (tests/test_bench_*.py, tests/test_data_bench.py) run whole benchmark scripts at
# their smallest size, 10-50 s each: all are in the slow tier, including ones added later.
BENCH_SMOKE_TESTS = ("test_bench_*.py", "test_data_bench.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.path.match(pattern) for pattern in BENCH_SMOKE_TESTS):
            item.add_marker(pytest.mark.slow)


# Tiny configs of the three decoder families every round trip covers.
FAMILY_PRESETS = ("tiny-llama", "tiny-mistral", "tiny-qwen2")

# One parameter set per method, valid for the tiny presets (rotary dim 16, 64 trained positions).
METHOD_SETTINGS: dict[str, dict] = {
    "linear": {"factor": 4},
    "ntk": {"factor": 4},
    "dynamic": {"factor": 4},
    "yarn": {"factor": 4},
    "llama3": {"factor": 4, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    "longrope": {
        "factor": 4,
        "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [1.0 + 0.5 * i for i in range(8)],
    },
    "abf": {"factor": 4, "rope_theta": 500000.0},
    "power": {"factor": 4, "power": 0.5},
    "truncated": {"factor": 4, "truncation_length": 8.0},
    "entropy_abf": {"factor": 4, "rope_theta": 500000.0, "exempt_layers": 1, "log_scale_length": 64},
    "lm_infinite": {"factor": 4, "global_tokens": 4, "local_window": 32, "distance_limit": 32},
    "self_extend": {"factor": 4, "group_size": 8, "neighbor_window": 16},
}


@pytest.fixture
def compose_config():
    """compose_config(*overrides) -> the composed DictConfig, exactly as the CLIs see it."""

    def _compose(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose
