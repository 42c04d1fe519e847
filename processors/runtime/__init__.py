"""The processor runtime: the checkpoint protocol (``checkpoint``), the error policy (``policy``) and
the only code that knows faust's insides (``faust_glue``). Processors plug in small link objects and
handlers; the protocol and the policy import no faust and are tested directly."""

from processors.runtime.checkpoint import Checkpointer, CheckpointFailed, Pending
from processors.runtime.policy import PROCESSING, QUARANTINED, BatchRunner, RetryPolicy, processing_error

__all__ = [
    "PROCESSING",
    "QUARANTINED",
    "BatchRunner",
    "CheckpointFailed",
    "Checkpointer",
    "Pending",
    "RetryPolicy",
    "processing_error",
]
