"""Hot reload: watch a directory, choose a checkpoint by policy, validate it, swap it in atomically."""

from serving.errors import CandidateRejected
from serving.reload.candidates import Candidate, Scanner, number_in_name
from serving.reload.policy import rank
from serving.reload.slot import (
    ModelSlot,
    check_forward,
    check_weights_finite,
    sample_input,
)
from serving.reload.watcher import Rejection, Reloader, ReloadStatus

__all__ = [
    "Candidate",
    "CandidateRejected",
    "ModelSlot",
    "Rejection",
    "ReloadStatus",
    "Reloader",
    "Scanner",
    "check_forward",
    "check_weights_finite",
    "number_in_name",
    "rank",
    "sample_input",
]
