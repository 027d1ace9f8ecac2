"""The pieces train.py composes: loss, batches, checkpoints, logging, the run card."""
