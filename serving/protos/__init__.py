"""gRPC wire contracts: TorchServe's inference/management APIs and the Open Inference Protocol v2."""
