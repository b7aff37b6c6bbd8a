"""gRPC front ends: the standard Open Inference Protocol v2 service in front of TorchServe's gRPC API."""

from serving.errors import ModelNotFoundError, ModelStatefulError, UnsupportedModelError

__all__ = ["ModelNotFoundError", "ModelStatefulError", "UnsupportedModelError"]
