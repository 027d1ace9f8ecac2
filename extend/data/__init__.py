"""Long-sample data preparation: sources, tokenisation, length upsampling, packing with document boundaries,
curriculum stages with optional PoSE position ids (`pose.py`; `extend.data.prepare.prepare`), and the manifest
training checks (`verify_dataset`)."""

from extend.data.manifest import DatasetMismatchError, verify_dataset

__all__ = ["DatasetMismatchError", "verify_dataset"]
