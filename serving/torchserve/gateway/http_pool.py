"""TorchServe's HTTP inference API as the gateway's data path: keep-alive HTTP/1.1 over asyncio protocols."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote, urlsplit

from serving.error_codes import MODEL_NOT_FOUND_HINT, TORCHSERVE_NOT_FOUND, error_from_body, error_from_http
from serving.errors import (
    AuthenticationError,
    CkptServeError,
    ConfigError,
    DeadlineExceededError,
    ModelNotFoundError,
    ServerError,
)
from serving.wire import JSON_TYPE, NPY_MAGIC, NPY_TYPE

# At most this many idle connections are kept; more concurrent calls open more, then close the extras.
MAX_IDLE = 64


class _Closed(Exception):
    """The connection ended before a whole response arrived."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered  # some response bytes came: the request reached the server


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; parses the response as bytes arrive.

    A protocol rather than asyncio streams: one callback and one future per response instead of a
    coroutine per header line, which is most of what a request costs the gateway on a loaded core.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body_at = -1  # offset of the body once the head is in
        self._length = -1  # Content-Length, or -1 for a chunked body
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def send(self, data: bytes, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        assert self.transport is not None
        self._waiter, self._buffer, self._body_at = waiter, bytearray(), -1
        self.transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            self.abort()  # bytes nobody asked for: this connection cannot be trusted with another request
            return
        try:
            answer = self._parse()
        except _Closed as exc:
            self._waiter.set_exception(exc)
            self.abort()
            return
        if answer is not None:
            self._waiter.set_result(answer)

    def _parse(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        if self._body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            try:
                self._status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                raise _Closed(f"not an HTTP status line: {lines[0][:60]!r}", answered=True) from None
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            self.keep_alive = headers.get("connection") != "close"
            if headers.get("transfer-encoding") == "chunked":
                self._length = -1
            elif "content-length" in headers:
                self._length = int(headers["content-length"])
            else:
                raise _Closed("a response without Content-Length or chunked encoding", answered=True)
            self._body_at = end + 4
        if self._length >= 0:
            if len(buffer) - self._body_at < self._length:
                return None
            return self._status, bytes(buffer[self._body_at : self._body_at + self._length])
        body = _dechunk(buffer, self._body_at)
        return None if body is None else (self._status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            reason = str(exc) if exc else "the server closed the connection"
            self._waiter.set_exception(_Closed(reason, answered=bool(self._buffer)))


def _dechunk(buffer: bytearray, pos: int) -> bytes | None:
    """A whole chunked body from ``pos``, or None while its last chunk has not arrived."""
    parts: list[bytes] = []
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buffer[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise _Closed("a damaged chunk size", answered=True) from None
        if size == 0:
            return b"".join(parts) if buffer.find(b"\r\n", eol + 2) >= 0 else None  # the closing blank line
        if len(buffer) < eol + 2 + size + 2:
            return None
        parts.append(bytes(buffer[eol + 2 : eol + 2 + size]))
        pos = eol + 2 + size + 2


class HttpPredictions:
    """POST /predictions/NAME[/VERSION] over a pool of keep-alive connections; errors become typed errors.

    TorchServe's HTTP frontend keeps the status each request's handler answered (its gRPC frontend
    drops it), and an HTTP/1.1 request costs a Python client a fraction of a gRPC call: this is the
    gateway's data path. A call with no connection idle opens one; at most ``MAX_IDLE`` stay open.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: Callable[[], str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.hostname is None or parts.port is None:
            raise ConfigError(
                f"TorchServe's HTTP inference address {base_url!r} needs a host and a port",
                hint="pass it as http://HOST:PORT (https:// when TorchServe serves TLS)",
            )
        self.target = base_url
        self._host, self._port = parts.hostname, parts.port
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._token = token
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = f"Host: {host}:{self._port}\r\n"
        self._idle: list[_Connection] = []
        self._paths: dict[tuple[str, str], str] = {}

    async def predict(self, model: str, version: str, body: bytes, *, timeout: float) -> bytes:
        """The handler's answer to ``body`` (npy, else JSON); any error status raises its typed error."""
        head = self._head(model, version, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            connection = self._idle_connection()
            reused = connection is not None
            try:
                if connection is None:
                    connection = await self._connect(deadline - loop.time())
                status, answer = await self._exchange(loop, connection, head + body, deadline)
                break
            except _Closed as exc:
                if reused and not exc.answered:
                    continue  # an idle connection the server had closed: the request never got there
                raise ServerError(
                    f"TorchServe at {self.target} broke off its answer: {exc}",
                    hint="Its log (ts_log.log) says why; retry the call.",
                ) from None
        if connection.keep_alive and not connection.closed and len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.abort()
        if status >= 400:
            raise _error(status, answer)
        return answer

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:  # the server may have closed it while it was idle
                return connection
        return None

    def _head(self, model: str, version: str, body: bytes) -> bytes:
        path = self._paths.get((model, version))
        if path is None:
            path = "".join(f"/{quote(part, safe='')}" for part in ("predictions", model, version) if part)
            self._paths[(model, version)] = path
        kind = NPY_TYPE if body[:6] == NPY_MAGIC else JSON_TYPE  # the signature probe sends JSON
        auth = f"Authorization: Bearer {self._token()}\r\n" if self._token is not None else ""
        return (
            f"POST {path} HTTP/1.1\r\n{self._host_header}Content-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n{auth}\r\n"
        ).encode("latin-1")

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        try:
            _, connection = await asyncio.wait_for(opening, max(timeout, 0.001))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"No connection to TorchServe at {self.target} within the deadline.", hint="Allow more time."
            ) from None
        except OSError as exc:
            raise ServerError(
                f"TorchServe at {self.target} is unavailable: {exc.strerror or exc}",
                hint="Is the server running? `ckptserve serve` starts it.",
            ) from None
        return connection

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, connection: _Connection, request: bytes, deadline: float
    ) -> tuple[int, bytes]:
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        expiry = loop.call_at(deadline, _expire, connection, waiter)
        try:
            connection.send(request, waiter)
            return await waiter
        except BaseException:
            connection.abort()  # cancelled or expired half way: the answer would land on the next request
            raise
        finally:
            expiry.cancel()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


def _expire(connection: _Connection, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(
            DeadlineExceededError("No answer from TorchServe within the deadline.", hint="Allow more time.")
        )
        connection.abort()


def _error(status: int, body: bytes) -> CkptServeError:
    """The typed error for an error answer: the handler's own JSON body, else TorchServe's."""
    err = error_from_body(body)
    if err is not None:
        return err
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return error_from_http(status, f"TorchServe answered {status}: {body[:200].decode(errors='replace')}")
    message, kind = str(doc.get("message") or f"TorchServe answered {status}"), doc.get("type")
    if kind in TORCHSERVE_NOT_FOUND:
        return ModelNotFoundError(message, hint=MODEL_NOT_FOUND_HINT)
    if kind == "InvalidKeyException":  # TorchServe answers a wrong key with 400
        return AuthenticationError(message, hint="the gateway's key_file.json does not hold TorchServe's key")
    return error_from_http(status, message)
