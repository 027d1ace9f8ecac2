"""Load a staged folder the way a user will, in a fresh interpreter, and report what loaded.

Run by extend/publish/verify.py as `python -c <this file's source> FOLDER FIRST LAST [--with-extend]
[--adapter-base BASE] [--device-map MAP]`, with the folder as working directory and the Hub offline, so
nothing of the publishing process (its imports, registrations, path) leaks in. Stock transformers only,
unless `--with-extend` (a rope type that `import extend` registers, which the card says); with
`--adapter-base` the folder is a peft adapter applied to BASE. `--device-map` is from_pretrained's
device_map, chosen by the publishing process (extend/models/placement.py: a GPU, several, or MPS); without
it the model loads on the CPU. Prints one line: `RELOAD {json}`.
"""

import json
import sys


def probe(folder: str, first: int, last: int, with_extend: bool, adapter_base: str | None,
          device_map: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report: dict = {"with_extend": with_extend}
    placed = {} if device_map is None else {"device_map": device_map}
    if with_extend:
        # Importing extend registers the rope type and attention functions the folder needs.
        from extend.models import load_pretrained as load
    else:
        load = AutoModelForCausalLM.from_pretrained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if adapter_base is not None:
        from peft import PeftModel

        base, info = load(adapter_base, output_loading_info=True, **placed)
        model = PeftModel.from_pretrained(base, folder)
        config = base.config
    else:
        model, info = load(folder, output_loading_info=True, **placed)
        config = model.config
    report["weights"] = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    # Positions FIRST..LAST (the far end of the promised length) on a few real tokens: the rotary tables
    # where the extension matters, without the cost of a full-length input.
    positions = torch.arange(first, last + 1)[None]
    ids = tokenizer("Publishing checks the far end of the context window.", return_tensors="pt").input_ids
    ids = ids.repeat(1, positions.shape[1])[:, : positions.shape[1]]
    # Inputs go where the input embeddings are (the first device of a model spread over several).
    device = model.get_input_embeddings().weight.device
    report["device"] = str(device)
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), position_ids=positions.to(device), use_cache=False).logits
    report["finite"] = bool(torch.isfinite(logits).all())
    report["config"] = config.to_dict()
    report["tokenizer_max_length"] = tokenizer.model_max_length
    report["model_class"] = type(model).__name__
    return report


if __name__ == "__main__":
    args = sys.argv[1:]
    with_extend = "--with-extend" in args
    base = args[args.index("--adapter-base") + 1] if "--adapter-base" in args else None
    device_map = args[args.index("--device-map") + 1] if "--device-map" in args else None
    try:
        result = probe(args[0], int(args[1]), int(args[2]), with_extend, base, device_map)
    except Exception as err:  # reported to the publishing process, which names the failure
        result = {"error": f"{type(err).__name__}: {err}"}
    if not with_extend and "extend" in sys.modules:
        result = {"error": "the stock reload imported extend; it must load without it"}
    print("RELOAD " + json.dumps(result, default=str))
