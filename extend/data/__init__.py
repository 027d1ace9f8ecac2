"""Long-sample data preparation: sources, tokenisation, length upsampling, packing with document boundaries,
curriculum stages, and the manifest training checks (`verify_dataset`). The pipeline itself is
`extend.data.prepare.prepare` (not imported here: extend.models.tokenizer imports this package)."""

from extend.data.manifest import DatasetMismatchError, verify_dataset

__all__ = ["DatasetMismatchError", "verify_dataset"]
