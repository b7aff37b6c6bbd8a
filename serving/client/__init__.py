"""Clients for a ckptserve server: HTTP now; gRPC and asyncio in the same call shape."""

from serving.client.http import HttpClient, ServerReplyError

__all__ = ["HttpClient", "ServerReplyError"]
