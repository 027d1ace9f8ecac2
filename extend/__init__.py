"""extend: fine-tuning that extends the context window of pretrained transformers.

Importing the package registers what stock transformers cannot express: the `entropy_abf` rope type and
its entropy-aware attention functions; the `lm_infinite` and `self_extend` rope types and their remapped
attention (extend/rope/remapped.py); and the `${dataset_dir:}` resolver that names the default dataset
folder (extend/data/manifest.py), so every config composed after `import extend` resolves. It also drops one
import-time warning of bitsandbytes (below).
"""

import logging

# peft imports bitsandbytes at import time whenever it is installed (peft/helpers.py), so every process that
# imports peft loads it, asked for quantisation or not; there is no lazy import to make. On CPUs with
# AVX512-BF16 its CPU backend then logs "Failed to load CPU gemm_4bit_forward ... pip install kernels" once
# per process: an optional faster 4-bit matmul from the Hub, without which 4-bit loading still works. Drop
# that one record at its logger, before anything imports bitsandbytes; its other messages still print.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"))

from extend.data import manifest as _manifest  # noqa: E402
from extend.rope import entropy as _entropy  # noqa: E402
from extend.rope import remapped as _remapped  # noqa: E402

_entropy.register()
_remapped.register()
_manifest.register_resolver()

__version__ = "0.1.0"
