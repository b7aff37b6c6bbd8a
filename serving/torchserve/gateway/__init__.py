"""The Open Inference Protocol v2 gRPC gateway: a process beside TorchServe that forwards to its gRPC APIs."""
