"""Publishing: an export verified, carded and uploaded to the Hugging Face Hub (`python -m extend.publish`)."""

from extend.publish.hub import PublishError
from extend.publish.publish_run import publish_run, training_problems

__all__ = ["PublishError", "publish_run", "training_problems"]
