"""ckptserve: serve PyTorch models straight from what training writes."""

from serving.checkpoints import save_checkpoint
from serving.errors import CkptServeError
from serving.loader import CheckpointInfo, checkpoint_info, load_model

__all__ = ["CheckpointInfo", "CkptServeError", "checkpoint_info", "load_model", "save_checkpoint"]
__version__ = "0.1.0"
