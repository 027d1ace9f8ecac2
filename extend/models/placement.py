"""Where a model is loaded for evaluation and the publish reload: the accelerator(s) this machine has, with a
CPU fallback.

The choice is `choose_placement(knob, accelerators, model_bytes)`, a pure function of what the machine has,
how large the weights are and the `eval.device` knob, so it is tested on a machine without a GPU by handing
it a made-up machine. `accelerators()` reads the real one from torch; `weights_bytes` estimates the size.

    auto      CUDA when present, else Apple MPS, else the CPU
    cuda      CUDA (refused when there is none): the whole model on GPU 0 when it fits there and it is the
              only GPU; otherwise spread over every GPU (and, past their memory, the CPU) by accelerate's
              `device_map="auto"`
    cuda:N    that GPU alone, as asked
    mps, cpu  that device

Inputs go where the model's input embeddings live (`input_device`), the first device of a spread model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

# The share of a GPU's free memory the weights may take to be placed on it whole: the rest is left for
# activations and the KV cache of long inputs. Past it, the model is spread by accelerate.
FIT_FRACTION = 0.8
KNOB = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class Accelerators:
    """What a machine offers: the free memory of each CUDA device in bytes (empty: none), and whether Apple's
    MPS backend is usable."""

    cuda_free: tuple[int, ...] = ()
    mps: bool = False


@dataclass(frozen=True)
class Placement:
    """Where a model goes: `device` receives the inputs; `device_map` is what from_pretrained gets
    (None: load on the CPU as transformers does by default)."""

    device: str
    device_map: str | None
    why: str

    def load_kwargs(self) -> dict:
        """Keyword arguments for from_pretrained."""
        return {} if self.device_map is None else {"device_map": self.device_map}


def accelerators() -> Accelerators:
    """This machine's accelerators, as torch sees them."""
    cuda: tuple[int, ...] = ()
    if torch.cuda.is_available():
        cuda = tuple(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return Accelerators(cuda_free=cuda, mps=torch.backends.mps.is_available())


def device_problems(key: str, knob: str, cuda_count: int | None = None, mps: bool | None = None) -> list[str]:
    """One line when `knob` is not a device name or names a device this machine (or one with `cuda_count`
    GPUs and `mps`) does not have. Counting GPUs starts no CUDA context."""
    cuda_count = torch.cuda.device_count() if cuda_count is None else cuda_count
    mps = torch.backends.mps.is_available() if mps is None else mps
    if not KNOB.match(knob):
        return [f"{key}={knob!r}: choose auto, cpu, cuda, cuda:N or mps"]
    if knob.startswith("cuda") and not cuda_count:
        return [f"{key}={knob}: this machine has no CUDA device (torch.cuda.is_available() is False); use "
                f"{key}=auto or {key}=cpu"]
    if knob.startswith("cuda:") and int(knob[5:]) >= cuda_count:
        return [f"{key}={knob}: this machine has {cuda_count} CUDA device(s), cuda:0..cuda:{cuda_count - 1}; "
                f"pick one of them or {key}=cuda"]
    if knob == "mps" and not mps:
        return [f"{key}=mps: torch.backends.mps is not available here; use {key}=auto or {key}=cpu"]
    return []


def choose_placement(knob: str, machine: Accelerators, model_bytes: int | None) -> Placement:
    """The placement for `knob` on `machine` of a model whose weights take `model_bytes` (None: unknown,
    which spreads by device_map="auto": accelerate still keeps a model that fits on GPU 0). The knob must
    have passed device_problems."""
    problems = device_problems("device", knob, len(machine.cuda_free), machine.mps)
    if problems:
        raise ValueError(problems[0])
    if knob == "cpu" or (knob == "auto" and not machine.cuda_free and not machine.mps):
        return Placement("cpu", None, "cpu" if knob == "cpu" else "no accelerator: cpu")
    if knob == "mps" or (knob == "auto" and not machine.cuda_free):
        return Placement("mps", "mps", "mps")
    if knob.startswith("cuda:"):
        return Placement(knob, knob, f"{knob} as asked")
    if len(machine.cuda_free) > 1:
        return Placement("cuda:0", "auto", f"{len(machine.cuda_free)} GPUs: spread by device_map=auto")
    if model_bytes is None:
        return Placement("cuda:0", "auto", "weights of unknown size: device_map=auto")
    gib = model_bytes / 2**30
    if model_bytes > FIT_FRACTION * machine.cuda_free[0]:
        return Placement("cuda:0", "auto", f"{gib:.1f} GiB of weights exceed {FIT_FRACTION:.0%} of GPU 0's "
                         f"{machine.cuda_free[0] / 2**30:.1f} GiB free: device_map=auto (CPU offload)")
    return Placement("cuda:0", "cuda:0", f"cuda:0 ({gib:.1f} GiB of weights)")


def place(knob: str, model_bytes: int | None) -> Placement:
    """choose_placement on this machine (reads each GPU's free memory only when there are GPUs)."""
    return choose_placement(knob, accelerators(), model_bytes)


def weights_bytes(folder: str | Path) -> int | None:
    """The size of a saved model's weights: the safetensors index's total_size, else the weight files' sizes;
    None when `folder` is not a local folder with weights."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return int(total)
    files = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None


def config_bytes(config, dtype: torch.dtype) -> int:
    """The weights of a model built from `config` in `dtype`, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def input_device(model) -> torch.device:
    """Where a model's inputs go: its device, or for a model spread over devices by accelerate (it has an
    hf_device_map) the device of its input embeddings, its first."""
    if len(set(getattr(model, "hf_device_map", {}).values())) > 1:
        return model.get_input_embeddings().weight.device
    return model.device
