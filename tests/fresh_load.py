"""Run in a fresh interpreter by test_rope_roundtrip.py: reload saved checkpoints with stock transformers.

For every folder given: load it WITHOUT importing extend, run the stored input, and report the largest
logit difference from the logits the saving process computed. Folders whose method stock transformers
cannot express must fail to load; they are then loaded again after `import extend`.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def max_diff(model, folder: Path) -> float:
    saved = load_file(folder / "reference.safetensors")
    with torch.no_grad():
        logits = model(saved["input_ids"], use_cache=False).logits
    return (logits - saved["logits"]).abs().max().item()


results = {}
for folder in map(Path, sys.argv[1:]):
    try:
        model = AutoModelForCausalLM.from_pretrained(folder)
        results[folder.name] = {"stock": max_diff(model, folder)}
    except Exception as err:  # recorded, then judged by the test
        results[folder.name] = {"stock_error": f"{type(err).__name__}: {err}"}
assert "extend" not in sys.modules, "the stock pass must not import extend"

import extend  # noqa: E402,F401
from extend.models import load_pretrained  # noqa: E402

for folder in map(Path, sys.argv[1:]):
    if "stock_error" in results[folder.name]:
        try:
            AutoModelForCausalLM.from_pretrained(folder)
            results[folder.name]["with_extend_default_attention"] = "loaded"
        except ValueError as err:
            results[folder.name]["with_extend_default_attention"] = f"ValueError: {err}"
        results[folder.name]["with_extend"] = max_diff(load_pretrained(folder), folder)
print("RESULTS " + json.dumps(results))
