"""Clients for a ckptserve server, one call shape over HTTP and gRPC, sync and asyncio.

``predict(model, instances)`` (KServe v1 rows, or an array sent as npy) and ``infer(model, tensors)``
(Open Inference Protocol v2, ``{"name": array}`` in, ``InferResult`` out) on every client.
"""

from serving.client.aio_http import AsyncHttpClient
from serving.client.common import InferResult
from serving.client.grpc import AsyncGrpcClient, GrpcClient
from serving.client.http import HttpClient
from serving.errors import ServerReplyError

__all__ = [
    "AsyncGrpcClient",
    "AsyncHttpClient",
    "GrpcClient",
    "HttpClient",
    "InferResult",
    "ServerReplyError",
]
