"""extend: fine-tuning that extends the context window of pretrained transformers.

Importing the package registers what stock transformers cannot express: the `entropy_abf` rope type and
its entropy-aware attention functions.
"""

from extend.rope import entropy as _entropy

_entropy.register()

__version__ = "0.1.0"
