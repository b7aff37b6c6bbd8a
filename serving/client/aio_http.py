"""The asyncio HTTP client: HttpClient's calls, awaited, over a small pool of keep-alive connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.client.access import resolve_token, ssl_context
from serving.client.common import (
    InferResult,
    Tensors,
    encode_instances,
    host_and_port,
    json_inputs,
    predictions,
)
from serving.client.http import raise_for_status
from serving.errors import DeadlineExceededError, ServerError
from serving.retry import Backoff
from serving.wire import JSON_TYPE

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _ProtocolError(Exception):
    """The server's bytes are no HTTP/1.1 response we can read."""


class AsyncHttpClient:
    """HTTP/1.1 over asyncio streams (stdlib only); concurrent calls each take a pooled connection.

    ``timeout_s`` is each call's deadline, retries included; 503 and refused connections are retried
    with exponential backoff, nothing else.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
        key_file: str | Path | None = None,
        tls_ca: str | Path | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_idle: int = 32,
    ) -> None:
        self._host, self._port = host_and_port(base_url)
        self.token = resolve_token(token, key_file)
        self.timeout_s, self.backoff = timeout_s, Backoff(retries, backoff_s)
        tls = base_url.startswith("https:") or tls_ca is not None
        self._ssl = ssl_context(tls_ca) if tls else None
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self.last_headers: dict[str, str] = {}

    async def predict(self, model: str, instances: Any) -> Any:
        body, content_type = encode_instances(instances)
        status, data = await self.request("POST", f"/predictions/{model}", body, content_type)
        return predictions(raise_for_status(status, data))

    async def infer(
        self,
        model: str,
        tensors: Tensors,
        request_id: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
    ) -> InferResult:
        body: dict[str, Any] = {"inputs": json_inputs(tensors)}
        if request_id:
            body["id"] = request_id
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        status, data = await self.request(
            "POST", f"/v2/models/{model}/infer", json.dumps(body).encode(), JSON_TYPE
        )
        return InferResult.from_json(raise_for_status(status, data))

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        attempts = self.backoff.attempts(self.timeout_s)  # one deadline covers every try
        while True:
            try:
                status, data = await asyncio.wait_for(
                    self._exchange(method, path, body, content_type), max(attempts.remaining(), 0.001)
                )
                delay = attempts.next_delay() if status == 503 else None
                if delay is None:
                    return status, data
            except asyncio.TimeoutError:
                raise DeadlineExceededError(
                    f"No answer from {self._host}:{self._port} within {self.timeout_s:g} s.",
                    hint="Allow more time.",
                ) from None
            except (OSError, _ProtocolError, asyncio.IncompleteReadError) as exc:
                delay = attempts.next_delay()
                if delay is None:
                    raise ServerError(
                        f"No answer from {self._host}:{self._port} after {attempts.tries} tries: {exc}.",
                        hint="Is the server running? `ckptserve serve` starts it.",
                    ) from None
            await asyncio.sleep(delay)

    async def _exchange(
        self, method: str, path: str, body: bytes | None, content_type: str | None
    ) -> tuple[int, bytes]:
        if self._idle:
            try:
                return await self._send(self._idle.pop(), method, path, body, content_type)
            except (_ProtocolError, asyncio.IncompleteReadError, ConnectionError):
                pass  # the server closed this idle keep-alive connection: a fresh one follows
        connection = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        return await self._send(connection, method, path, body, content_type)

    async def _send(
        self, connection: _Connection, method: str, path: str, body: bytes | None, content_type: str | None
    ) -> tuple[int, bytes]:
        reader, writer = connection
        try:
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {self._host}:{self._port}",
                f"Content-Length: {len(body or b'')}",
            ]
            if content_type:
                head.append(f"Content-Type: {content_type}")
            if self.token:
                head.append(f"Authorization: Bearer {self.token}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await writer.drain()
            status, headers, data = await _read_response(reader)
        except BaseException:
            writer.close()  # a half-read connection cannot carry the next request
            raise
        self.last_headers = headers
        if headers.get("connection", "").lower() == "close" or len(self._idle) >= self._max_idle:
            writer.close()
        else:
            self._idle.append(connection)
        return status, data

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    line = await reader.readline()
    if not line:
        raise _ProtocolError("the connection closed before a response")  # a stale pooled connection
    try:
        status = int(line.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise _ProtocolError(f"not an HTTP status line: {line[:60]!r}") from None
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readline()  # no trailers from TorchServe: the blank line after the last chunk
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, headers, b"".join(chunks)
    if "content-length" not in headers:
        raise _ProtocolError("a response without Content-Length or chunked encoding")
    return status, headers, await reader.readexactly(int(headers["content-length"]))
