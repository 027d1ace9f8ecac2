"""Which files a published repository holds, and where each comes from in an export (outputs/RUN/final/).

Two layouts:
- merged (the default): the merged model with its position method in config.json, loadable by stock
  transformers and vLLM at the extended length, plus the LoRA adapter it was merged from in `adapter/`;
- adapter_only: peft's layout at the repository root (adapter_config.json + adapter_model.safetensors).

An adapter alone cannot carry a RoPE change: peft's AutoPeftModel, vLLM's LoRA serving and
`PeftModel.from_pretrained(base, ...)` all build the base from the *base's* config.json, so an extended
position method shipped beside an adapter would be silently ignored by exactly the loaders users reach for.
adapter_only is therefore refused for any run that changed the position method (`rope.type` other than
none); the merged layout carries both the method and the adapter.

Everything else in an export (peft's generated adapter/README.md, checkpoints, pickles, notes) is left out,
and verification refuses a staged folder holding anything not listed here.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
MODEL_CONFIG = ("config.json", "generation_config.json")
TOKENIZER = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
)
# In the repository; an export holds each evaluation in eval/<name>/ and publishes the chosen one as eval/.
EVAL = ("eval/eval.json", "eval/report.md", "eval/*.png")
ADAPTER = ("adapter_config.json", "adapter_model.safetensors")
RUN_CARD = "run_card.json"
CARD = "README.md"

# Files a published repository may hold, by layout (patterns relative to the repository root).
ALLOWED = {
    "merged": (*WEIGHTS, *MODEL_CONFIG, *TOKENIZER, *EVAL, *(f"adapter/{a}" for a in ADAPTER), RUN_CARD, CARD),
    "adapter_only": (*ADAPTER, *TOKENIZER, *EVAL, RUN_CARD, CARD),
}
# Files whose bytes are tensors: safetensors is the only format allowed for them.
TENSOR_SUFFIX = ".safetensors"


def layout_name(adapter_only: bool) -> str:
    return "adapter_only" if adapter_only else "merged"


def is_allowed(relpath: str, layout: str) -> bool:
    """Whether `relpath` matches one of the layout's patterns, folder by folder (`eval/*.png` matches no
    deeper path and `README.md` no README.md inside a folder)."""
    parts = relpath.split("/")
    return any(len(pattern.split("/")) == len(parts) and all(map(fnmatch.fnmatchcase, parts, pattern.split("/")))
               for pattern in ALLOWED[layout])


def published_name(export_relpath: str, layout: str, evaluation: str | None = None) -> str | None:
    """The repository path of an export file, or None when the layout does not publish it. Of the export's
    evaluations (eval/<name>/...), only `evaluation` is published, as eval/..."""
    if export_relpath.startswith("eval/"):
        parts = export_relpath.split("/")
        if evaluation is None or len(parts) != 3 or parts[1] != evaluation:
            return None
        export_relpath = f"eval/{parts[2]}"
    if layout == "adapter_only":
        if export_relpath.startswith("adapter/") and export_relpath[len("adapter/"):] in ADAPTER:
            return export_relpath[len("adapter/"):]
        if export_relpath in ADAPTER:  # an adapter at the root of final/ is not what export writes
            return None
    return export_relpath if is_allowed(export_relpath, layout) and export_relpath != CARD else None


def files_under(folder: Path) -> list[str]:
    """Every file below `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
