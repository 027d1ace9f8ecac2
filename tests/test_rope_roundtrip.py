"""Every method survives save -> fresh process -> stock transformers load, for Llama, Qwen2 and Mistral."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config, save_extended
from extend.rope import apply_rope, resolve_rope

from conftest import FAMILY_PRESETS, METHOD_SETTINGS

pytestmark = pytest.mark.slow  # saves every method and family, then reloads them in a fresh Python process

TOLERANCE = 1e-5
# Methods stock transformers cannot express, and the attention function the refusal names with `import extend`.
NEEDS_EXTEND = {"entropy_abf": "extend_entropy_sdpa", "lm_infinite": "extend_remapped", "self_extend": "extend_remapped"}


def save_case(root: Path, preset: str, method: str) -> Path:
    base = load_base_config(ModelConfig(name_or_path=preset))
    resolved = resolve_rope(RopeConfig(type=method, **METHOD_SETTINGS[method]), base)
    model = build_random(apply_rope(base, resolved), seed=1).eval()
    # An input 4x the original length, so every extended position is exercised.
    input_ids = torch.randint(0, base.vocab_size, (1, 4 * resolved.original_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids, use_cache=False).logits
    folder = save_extended(model, None, root / f"{preset}--{method}")
    save_file({"input_ids": input_ids, "logits": logits}, folder / "reference.safetensors")
    return folder


def test_fresh_process_reload(tmp_path):
    folders = [save_case(tmp_path, preset, method) for preset in FAMILY_PRESETS for method in sorted(METHOD_SETTINGS)]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fresh_load.py")), *map(str, folders)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))

    for name, result in results.items():
        method = name.split("--")[1]
        if method in NEEDS_EXTEND:
            # Stock transformers must refuse, never run with the query scaling or remapped positions silently missing.
            assert method in result["stock_error"], result
            assert NEEDS_EXTEND[method] in result["with_extend_default_attention"], result
            assert result["with_extend"] <= TOLERANCE, (name, result)
        else:
            assert "stock" in result, (name, result)
            assert result["stock"] <= TOLERANCE, (name, result)
