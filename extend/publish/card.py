"""The model card: metadata the Hub indexes (huggingface_hub's ModelCardData, evaluation in model-index form)
and a body that says how far the checkpoint reaches, how to load it, how it was made and how it scored.

Everything is read from the export (export_info.py) after its local paths were scrubbed; nothing is
guessed: a base that is not a Hub id gets no `base_model`, a license that cannot be read is not stated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, try_to_load_from_cache

from extend.eval.report import render_sections
from extend.publish.export_info import AFTER_TRAINING, BaseModel, ExportInfo
from extend.rope import METHODS

TASK_TYPE = "text-generation"
# How many of the last positions of the promised length the reload check runs the model at.
PROBE_POSITIONS = 8
# The line that states the promised length; verification checks that the card carries it.
CONTEXT_LINE = "**Context length: {length:,} tokens**"
LICENSE_FIELDS = ("license", "license_name", "license_link")


def probe_start(length: int) -> int:
    """The first position the reload check runs (it runs the last PROBE_POSITIONS of the promised length)."""
    return max(0, length - PROBE_POSITIONS)


def base_license(base: BaseModel) -> dict[str, str]:
    """The license fields of the base's own card, where that card is on this machine (a local folder, or the
    Hugging Face cache for a Hub id); empty when it is not: publish never downloads to find out."""
    readme = None
    if base.kind == "hub":
        cached = try_to_load_from_cache(base.name, "README.md", revision=base.revision)
        readme = Path(cached) if isinstance(cached, str) else None
    elif base.kind == "local" and (Path(base.name).expanduser() / "README.md").is_file():
        readme = Path(base.name).expanduser() / "README.md"
    if readme is None:
        return {}
    data = ModelCard.load(readme, ignore_metadata_errors=True).data
    return {key: data.get(key) for key in LICENSE_FIELDS if data.get(key)}


def eval_results(eval_data: dict[str, Any] | None) -> list[EvalResult]:
    """The published model's own results (the first evaluated condition), one per task and length."""
    if not eval_data:
        return []
    own = eval_data["conditions"][0]["name"]
    results = []
    for task, block in eval_data["results"].get(own, {}).items():
        for cell in sorted(block["by_length"].values(), key=lambda c: c["length"]):
            if cell["value"] is None:  # perplexity overflowed: the body's table says so, model-index cannot
                continue
            results.append(EvalResult(
                task_type=TASK_TYPE, dataset_type=task, dataset_name=f"{task} ({cell['length']} tokens)",
                dataset_config=f"{cell['length']}-tokens", metric_type=block["metric"],
                metric_name=f"{block['metric']} @ {cell['length']} tokens", metric_value=round(cell["value"], 6),
            ))
    return results


def card_metadata(info: ExportInfo, repo_id: str, adapter_only: bool, license_fields: dict[str, str]) -> ModelCardData:
    base, rope_type = info.base, info.config["rope"]["type"]
    adapter = info.config["adapter"]["type"]
    tags = ["extend", *(["long-context", f"rope-{rope_type}"] if rope_type != "none" else []),
            "full-finetune" if adapter == "full" else adapter]
    datasets = [s["path"] for s in info.config["data"]["sources"].values()
                if s["type"] == "hf" and s.get("path") and BaseModel.of(s["path"], None).kind == "hub"]
    results = eval_results(info.eval)
    return ModelCardData(
        base_model=base.hub_id,
        base_model_relation=("adapter" if adapter_only else "finetune") if base.hub_id else None,
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag=TASK_TYPE,
        tags=tags,
        datasets=datasets or None,
        **license_fields,
        # model-index names the model its results belong to; without results there is no model-index.
        model_name=repo_id.split("/")[1] if results else None,
        eval_results=results or None,
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def human_size(num_bytes: int) -> str:
    power = min(int(math.log(max(num_bytes, 1), 1024)), 3)
    return f"{num_bytes} B" if power == 0 else f"{num_bytes / 1024**power:,.1f} {('KB', 'MB', 'GB')[power - 1]}"


def _method_line(info: ExportInfo) -> str:
    method = info.position_method
    if not method:
        return "unchanged: the base's own RoPE"
    params = ", ".join(f"{k}={v}" for k, v in method.items() if k not in ("type", "base_rope_theta") and v is not None)
    return f"`{method['type']}` ({METHODS[method['type']].summary}): {params}; base rope_theta {method['base_rope_theta']}"


def _adapter_line(adapter: dict[str, Any], adapter_only: bool) -> str:
    if adapter["type"] == "full":
        return "full fine-tuning (every weight trained)"
    extra = [name for name, on in (("embeddings", adapter["train_embeddings"]), ("norms", adapter["train_norms"])) if on]
    line = (f"LoRA r={adapter['r']}, alpha={adapter['alpha']}, dropout={adapter['dropout']} on "
            f"{', '.join(adapter['target_modules'])}" + (f", plus trainable {' and '.join(extra)}" if extra else ""))
    if adapter.get("quantize"):
        line += f" (QLoRA: frozen base in {adapter['quantize']}, folded into the full-precision base)"
    return line + ("" if adapter_only else "; merged into the weights")


def _usage(info: ExportInfo, repo_id: str, adapter_only: bool, length: int) -> list[str]:
    base = info.base.hub_id or info.base.name
    if adapter_only:
        return [
            "peft (the base is downloaded from the Hub and the adapter applied to it):", "", "```python",
            "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", "",
            "vLLM:", "", "```bash", f"vllm serve {base} --enable-lora --lora-modules adapter={repo_id} --max-model-len {length}",
            "```", "", "lm-evaluation-harness:", "", "```bash",
            f"lm_eval --model hf --model_args pretrained={base},peft={repo_id},max_length={length} --tasks TASKS --batch_size 1",
            "```",
        ]
    if info.needs_extend:
        rope_type = info.rope_parameters["rope_type"]
        return [
            f"This position method ({rope_type}) lives partly in attention, which no stock loader can express: "
            "`import extend` registers its rope type and attention functions with transformers. Without it "
            f"transformers fails with `KeyError: '{rope_type}'` while building the model; vLLM and lm-eval load "
            "through stock code and cannot run it.", "", "```python", f"import extend  # registers {rope_type}",
            "from extend.models import load_pretrained", "from transformers import AutoTokenizer", "",
            f'model = load_pretrained("{repo_id}")', f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```",
        ]
    lines = [
        "transformers (the position method is in config.json; nothing else is needed):", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", "",
        "vLLM:", "", "```bash", f"vllm serve {repo_id} --max-model-len {length}", "```", "",
        "lm-evaluation-harness (pass the length: lm-eval otherwise trusts `max_position_embeddings`):", "", "```bash",
        f"lm_eval --model hf --model_args pretrained={repo_id},max_length={length} --tasks TASKS --batch_size 1", "```",
    ]
    if info.has_adapter:
        lines += ["", "`adapter/` holds the LoRA weights these were merged from. An adapter cannot carry a position "
                  "method, so they reproduce this model only on a base built with this repository's config.json:"]
        if info.base.hub_id:
            lines += ["", "```python", "from peft import PeftModel",
                      "from transformers import AutoConfig, AutoModelForCausalLM", "",
                      f'config = AutoConfig.from_pretrained("{repo_id}")',
                      f'base = AutoModelForCausalLM.from_pretrained("{info.base.hub_id}", config=config)',
                      f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="adapter")', "```"]
        else:
            lines += ["", "the base is not on the Hub, so outside the training machine only the merged weights are usable."]
    return lines


def _base_name(base: BaseModel) -> str:
    return f"[`{base.name}`](https://huggingface.co/{base.name})" if base.kind == "hub" else f"`{base.name}`"


def _base_line(base: BaseModel) -> str:
    if base.kind == "hub":
        return _base_name(base) + (f" at revision `{base.revision}`" if base.revision else "")
    reason = {
        "project": "built by this project's own recipe (recipes/tiny_base.yaml), not on the Hub",
        "preset": "randomly initialised from an extend preset, not on the Hub",
        "local": "a local folder on the training machine, not identified on the Hub",
    }[base.kind]
    return f"{_base_name(base)}: {reason}, so the metadata names no base_model"


def _made(info: ExportInfo, adapter_only: bool) -> list[str]:
    cfg, card = info.config, info.run_card
    curriculum = cfg["curriculum"]
    stages = " → ".join(f"{s['length']:,} tokens × " + (_count(s["steps"], "step") if s.get("steps") else _count(s["tokens"], "token"))
                        for s in curriculum["stages"])
    sources = ", ".join(
        f"{name} ({s['type']}" + (f" {s['task']}" if s.get("task") else "") + (f" `{s['path']}`" if s.get("path") else "")
        + f", weight {s['weight']})" for name, s in cfg["data"]["sources"].items())
    hw = card.get("hardware", {})
    device = hw.get("device", "unknown") + (f" × {hw['device_count']}" if hw.get("device_count") else "") + (
        f" ({hw['cpu_threads']} threads)" if hw.get("cpu_threads") else "")
    accelerate = card.get("accelerate") or cfg.get("accelerate") or {}
    fingerprints = card.get("data_manifest", {})
    rows = [
        ("base model", _base_line(info.base)),
        ("position method", _method_line(info)),
        ("adapter", _adapter_line(cfg["adapter"], adapter_only)),
        ("curriculum", f"{stages}; {curriculum['tokens_per_step']:,} tokens per optimizer step"),
        ("optimizer", f"AdamW, lr {cfg['train']['learning_rate']}, {cfg['train']['lr_schedule']} schedule, "
                      f"{cfg['train']['warmup_steps']} warmup steps, seed {cfg['seed']}"),
        ("training", f"{_count(card.get('steps', 0), 'step')}, {_count(card.get('tokens', 0), 'token')}, "
                     f"{_duration(card.get('train_seconds', 0))} of training"),
        ("hardware", f"{device}, {card.get('processes', 1)} process" + ("es" if card.get("processes", 1) != 1 else "")
                     + (f", {accelerate.get('strategy')}" if accelerate else "")
                     + f"; torch {hw.get('torch')}, Python {hw.get('python')}"),
        ("data", f"{sources}; tokenizer `{cfg['data']['tokenizer']}`, {cfg['data']['packing']} packing, data seed "
                 f"{cfg['data']['seed']}"),
        ("data fingerprint", ", ".join(f"{k} `{v}`" for k, v in fingerprints.items()) or "not recorded"),
        ("run config fingerprint", f"`{card.get('config_fingerprint')}`"),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _recipe(info: ExportInfo) -> list[str]:
    command = ("`python extend/train.py " + " ".join(info.overrides) + "`") if info.overrides is not None else (
        "not recorded (the run was started from Python); the composed config below is complete")
    return [
        f"Command: {command}", "",
        "<details><summary>The composed config of the run (every key, defaults included)</summary>", "",
        "```yaml", yaml.safe_dump(info.config, sort_keys=False).rstrip(), "```", "", "</details>",
    ]


def _evaluation(info: ExportInfo) -> list[str]:
    if not info.eval:
        return ["Not evaluated before publishing (`python -m extend.eval model=PATH` measures a checkpoint)."]
    cfg = info.eval["config"]
    origin = " (the one training ran on its export)" if info.eval_name == AFTER_TRAINING else ""
    return [
        f"Evaluation `{info.eval_name}`{origin}. "
        f"Measured with `extend.eval` on this checkpoint (`{info.eval['conditions'][0]['name']}`), every compared "
        f"model answering the same items (seed {cfg['seed']}, tasks {', '.join(cfg['tasks'])}). † = beyond the "
        "length that model addresses. Raw results: [eval/eval.json](eval/eval.json); report: "
        "[eval/report.md](eval/report.md).", "",
        render_sections(info.eval, level=3, image_dir="eval/").rstrip(),
    ]


def reload_how(with_extend: bool, adapter_only: bool) -> str:
    """How verification reloads the folder, as the card and the command's output say it."""
    return "with `import extend`" if with_extend else "with stock transformers" + (" and peft" if adapter_only else "")


def _license_line(base: BaseModel, fields: dict[str, str], source: str) -> str:
    if fields.get("license"):
        return f"`{fields['license']}` ({source})"
    if base.kind in ("hub", "local"):
        return ("not stated: the base model's card, which says its license, is not on the publishing machine; set "
                "publish.license=ID when you know it")
    return "not stated: the base was built by extend itself and has none; set publish.license=ID to give one"


def _lengths(info: ExportInfo, adapter_only: bool) -> list[str]:
    length, served = info.promised_length, info.served()
    tokenizer = f"{served['tokenizer']:,}" if served["tokenizer"] else "not set"
    return [
        CONTEXT_LINE.format(length=length), "",
        "| reader | length it derives |", "|---|---|",
        f"| transformers (`max_position_embeddings`, × factor for linear and dynamic) | {served['transformers']:,} |",
        f"| tokenizer (`model_max_length`) | {tokenizer} |",
        f"| vLLM (`max_model_len`) | {served['vllm']:,} |", "",
        f"Before upload this folder was reloaded in a fresh Python process {reload_how(info.needs_extend, adapter_only)}, "
        f"gave finite logits at positions {probe_start(length):,}–{length - 1:,}, and every reader above arrived at the "
        "promised length. Weights are safetensors only.",
    ]


def render_card(info: ExportInfo, repo_id: str, adapter_only: bool, files: dict[str, int],
                license_fields: dict[str, str], license_source: str) -> ModelCard:
    """The whole card. `files`: every other published file and its size in bytes."""
    method = info.position_method
    what = (f"extended from {info.original_length:,} to {info.promised_length:,} tokens with `{method['type']}`"
            if method else f"fine-tuned at its own {info.promised_length:,} tokens")
    kind = "A LoRA adapter for" if adapter_only else "A checkpoint of"
    body = [
        f"# {repo_id.split('/')[1]}", "",
        f"{kind} {_base_name(info.base)}, {what}, trained and verified with the `extend` pipeline "
        f"(run `{info.run_name}`).", "",
        *_lengths(info, adapter_only), "",
        "## How to use", "", *_usage(info, repo_id, adapter_only, info.promised_length), "",
        "## How it was made", "", *_made(info, adapter_only), "",
        "The base's rope parameters (unchanged):" if adapter_only else "config.json's rope parameters:", "",
        "```json", json.dumps(info.rope_parameters, indent=2), "```", "",
        "### Recipe", "", *_recipe(info), "",
        "## Evaluation", "", *_evaluation(info), "",
        "## Files", "", "| file | size |", "|---|---|", *(f"| `{p}` | {human_size(n)} |" for p, n in sorted(files.items())), "",
        "## License", "", f"License: {_license_line(info.base, license_fields, license_source)}.", "",
    ]
    data = card_metadata(info, repo_id, adapter_only, license_fields)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
