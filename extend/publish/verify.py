"""Verification of a staged folder before anything is uploaded; every problem is named with its file.

Cheap checks first, all of them reported at once: only published files (layout.py), safetensors and no
pickles, no local path or token in any file, a card whose metadata parses and states the promised length,
and a config from which transformers, the tokenizer and vLLM all derive that length. Then, when those
pass, the folder is reloaded in a fresh Python process (reload_probe.py) with stock transformers, or with
`import extend` where the card says so, and run at the far end of its promised length.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from extend.config import REPO_ROOT
from extend.models.placement import place, weights_bytes
from extend.publish import layout
from extend.publish.card import CONTEXT_LINE, probe_start, reload_how
from extend.publish.scrub import has_token, local_paths_in
from extend.rope.export import served_lengths

# Leading bytes of pickles (protocol 2-5) and of torch.save's zip archives, whatever the file is called.
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
PROBE = Path(__file__).with_name("reload_probe.py")
# Variables the reload must not see: it loads from the folder alone, offline, with no credential.
_HIDDEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@dataclass(frozen=True)
class Expectations:
    """What the staged folder must show."""

    layout: str  # merged or adapter_only
    promised_length: int
    with_extend: bool  # the card says the model needs `import extend`
    adapter_base: str | None  # adapter_only: the Hub id of the base the adapter applies to
    evaluated: bool  # eval.json was published, so the card must carry model-index results
    token: str | None  # the token in use, which no file may contain
    local_paths: list[str]  # this machine's folders, which no file may mention


def _safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """(header, None) for a well-formed safetensors file, else (None, what is wrong)."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return None, "is too short to be safetensors"
        (size,) = struct.unpack("<Q", prefix)
        total = path.stat().st_size
        if size > total - 8:
            return None, "has a safetensors header longer than the file"
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "has no valid safetensors header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end != total:
        return None, f"holds {total - 8 - size} bytes of tensor data where its header describes {end}"
    return header, None


def check_files(folder: Path, exp: Expectations) -> list[str]:
    problems = []
    files = layout.files_under(folder)
    for rel in files:
        if not layout.is_allowed(rel, exp.layout):
            problems.append(f"{rel}: not part of a published checkpoint ({exp.layout} layout); remove it")
        with (folder / rel).open("rb") as f:
            if f.read(4).startswith(PICKLE_MAGIC):
                problems.append(f"{rel}: is a pickle or torch.save archive; only safetensors are published")
        if rel.endswith(layout.TENSOR_SUFFIX):
            _, wrong = _safetensors_header(folder / rel)
            if wrong:
                problems.append(f"{rel}: {wrong}")
    required = ["README.md"] + (["adapter_config.json", "adapter_model.safetensors"] if exp.layout == "adapter_only"
                                else ["config.json", "tokenizer_config.json"])
    problems += [f"{name}: missing from the staged folder" for name in required if name not in files]
    if exp.layout == "merged" and not any(rel.startswith("model") and rel.endswith(layout.TENSOR_SUFFIX) for rel in files):
        problems.append("no model*.safetensors weights in the staged folder")
    if "model.safetensors.index.json" in files:
        shards = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
        problems += [f"model.safetensors.index.json: names {s}, which is not in the folder" for s in sorted(shards - set(files))]
    return problems


def _scanned_bytes(path: Path, rel: str) -> tuple[bytes, bytes]:
    """(bytes scanned for tokens, bytes scanned for local paths). A safetensors file is scanned in its
    header, where metadata lives; a vocabulary entry of tokenizer.json is text, not a path."""
    if rel.endswith(layout.TENSOR_SUFFIX):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = f.read(size)
        return header, header
    data = path.read_bytes()
    if Path(rel).name == "tokenizer.json":
        tokenizer = json.loads(data)
        tokenizer.get("model", {}).pop("vocab", None)
        tokenizer.get("model", {}).pop("merges", None)
        tokenizer.pop("added_tokens", None)
        return data, json.dumps(tokenizer).encode()
    return data, data


def check_contents(folder: Path, exp: Expectations) -> list[str]:
    problems = []
    for rel in layout.files_under(folder):
        for_tokens, for_paths = _scanned_bytes(folder / rel, rel)
        if has_token(for_tokens, exp.token):
            problems.append(f"{rel}: contains a Hugging Face token (or something shaped like one, hf_...); remove it")
        for path in local_paths_in(for_paths, exp.local_paths):
            problems.append(f"{rel}: mentions the local path {path}; remove it (publish scrubs the files it writes)")
    return problems


def check_card(folder: Path, exp: Expectations) -> list[str]:
    try:
        card = ModelCard.load(folder / "README.md")
    except ValueError as err:
        return [f"README.md: its metadata does not parse with huggingface_hub's ModelCard ({err})"]
    problems = []
    if CONTEXT_LINE.format(length=exp.promised_length) not in card.text:
        problems.append(f"README.md: does not state the promised length ({exp.promised_length} tokens)")
    if exp.evaluated and not card.data.eval_results:
        problems.append("README.md: eval/eval.json is published but the metadata has no model-index results")
    return problems


def check_lengths(config: dict, tokenizer_max_length: int | None, promised: int, where: str) -> list[str]:
    """Every reader (transformers, tokenizer, vLLM) must derive the promised length from the config."""
    served = served_lengths(config, tokenizer_max_length)
    return [
        f"{where}: {reader} would derive {value} tokens, not the promised {promised}"
        + ("" if value is not None else " (tokenizer_config.json has no model_max_length)")
        for reader, value in served.items() if value != promised
    ]


def run_probe(folder: Path, exp: Expectations) -> dict:
    """Reload `folder` in a fresh interpreter (reload_probe.py) and return its report."""
    args = [str(folder.resolve()), str(probe_start(exp.promised_length)), str(exp.promised_length - 1)]
    if exp.with_extend:
        args.append("--with-extend")
    if exp.adapter_base:
        args += ["--adapter-base", exp.adapter_base]
    # On the accelerator(s) here, as eval.device=auto places a model; the CPU where there is none. The
    # weights are the folder's, or the base's for an adapter (unknown for a Hub id: spread by accelerate).
    size = weights_bytes(exp.adapter_base or folder) if torch.cuda.is_available() else None
    placement = place("auto", size)
    if placement.device_map is not None:
        args += ["--device-map", placement.device_map]
    env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    if exp.with_extend:  # the extend the card asks for is the one publishing it
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", PROBE.read_text(), *args], cwd=folder, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RELOAD ")]
    if not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the reload process exited with code {done.returncode}: {last}"}
    return json.loads(lines[-1][len("RELOAD "):])


def check_reload(folder: Path, exp: Expectations) -> list[str]:
    how = reload_how(exp.with_extend, exp.adapter_base is not None)
    report = run_probe(folder, exp)
    if "error" in report:
        return [f"the folder does not reload in a fresh process {how}: {report['error']}"]
    problems = [
        f"reloading {how}: {kind.replace('_', ' ')} {names[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        for kind, names in report["weights"].items() if names
    ]
    if not report["finite"]:
        problems.append(f"reloading {how}: logits at positions up to {exp.promised_length - 1} are not finite")
    if exp.layout == "adapter_only":  # the base's config, as loaded, is what serves the adapter
        problems += check_lengths(report["config"], report["tokenizer_max_length"], exp.promised_length,
                                  f"the base {exp.adapter_base} as reloaded")
    return problems


def verify(folder: Path, exp: Expectations) -> list[str]:
    """Every problem with the staged `folder`; empty when it may be uploaded."""
    problems = check_files(folder, exp) + check_contents(folder, exp) + check_card(folder, exp)
    if exp.layout == "merged" and (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        tokenizer_max = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")
        problems += check_lengths(config, tokenizer_max, exp.promised_length, "config.json + tokenizer_config.json")
    if problems:  # the reload costs a process start and a model load: only for a folder that passed the rest
        return problems
    return check_reload(folder, exp)
