"""extend: fine-tuning that extends the context window of pretrained transformers.

Importing the package registers what stock transformers cannot express: the `entropy_abf` rope type and
its entropy-aware attention functions; and the `${dataset_dir:}` resolver that names the default dataset
folder (extend/data/manifest.py), so every config composed after `import extend` resolves.
"""

from extend.data import manifest as _manifest
from extend.rope import entropy as _entropy

_entropy.register()
_manifest.register_resolver()

__version__ = "0.1.0"
