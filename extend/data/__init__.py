"""Long-sample data preparation: sources, tokenisation, length upsampling, packing with document boundaries,
curriculum stages, and the manifest training checks (`verify_dataset`)."""

from extend.data.manifest import DatasetMismatchError, verify_dataset
from extend.data.prepare import prepare

__all__ = ["DatasetMismatchError", "prepare", "verify_dataset"]
