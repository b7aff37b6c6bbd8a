"""The gateway's HTTP data path against a real asyncio HTTP/1.1 server on loopback: reuse, framing, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from serving.error_codes import status_code
from serving.errors import (
    AuthenticationError,
    CkptServeError,
    ConfigError,
    DeadlineExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestError,
    ServerError,
)
from serving.torchserve import free_port
from serving.torchserve.gateway.http_pool import HttpPredictions
from serving.wire import NPY_MAGIC

NPY_BODY = NPY_MAGIC + b"\x01\x00" + b"rest of an npy file"


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeTorchServe:
    """Reads each request whole, then lets ``answer`` write whatever bytes the test needs."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(head[0], headers, body)
                self.requests.append(request)
                await self.answer(request, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def response(status: int, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} Whatever", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def echo(status: int = 200) -> Answer:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(status, b"answer to " + request.body))

    return answer


def run(
    answer: Answer, scenario: Callable[[HttpPredictions, FakeTorchServe], Awaitable[Any]], **kw: Any
) -> Any:
    async def main() -> Any:
        fake = FakeTorchServe(answer)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPredictions(f"http://127.0.0.1:{port}", **kw)
        try:
            return await scenario(pool, fake)
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_calls_share_one_keep_alive_connection_and_say_what_they_send() -> None:
    keys = iter(["k1", "k2"])

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        assert await pool.predict("my model", "2.0", NPY_BODY, timeout=10) == b"answer to " + NPY_BODY
        assert await pool.predict("digits", "", b'{"id": 1}', timeout=10) == b'answer to {"id": 1}'
        assert fake.connections == 1
        first, second = fake.requests
        assert first.line == "POST /predictions/my%20model/2.0 HTTP/1.1"
        assert first.headers["content-type"] == "application/x-npy" and first.body == NPY_BODY
        assert second.line == "POST /predictions/digits HTTP/1.1"
        assert second.headers["content-type"] == "application/json"
        # the key is read per call: TorchServe rewrites key_file.json when keys rotate
        assert [r.headers["authorization"] for r in fake.requests] == ["Bearer k1", "Bearer k2"]

    run(echo(), scenario, token=lambda: next(keys))


def test_no_token_sends_no_authorization_header() -> None:
    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        await pool.predict("digits", "", NPY_BODY, timeout=10)
        assert "authorization" not in fake.requests[0].headers

    run(echo(), scenario)


def test_concurrent_calls_each_take_a_connection_and_leave_it_for_the_next() -> None:
    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        bodies = [NPY_BODY + bytes([i]) for i in range(3)]
        for _ in range(2):
            answers = await asyncio.gather(*(pool.predict("digits", "", b, timeout=10) for b in bodies))
            assert answers == [b"answer to " + b for b in bodies]  # each answer reaches its own caller
            assert fake.connections == 3  # none was idle at first; the second time all three were

    run(echo(), scenario)


def test_a_chunked_answer_in_pieces_is_put_together() -> None:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        pieces = [
            b"HTTP/1.1 200 OK\r\ntransfer-",
            b"encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r\n",
            b"0\r\n\r\n",
        ]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        assert await pool.predict("digits", "", NPY_BODY, timeout=10) == b"hello world"
        assert await pool.predict("digits", "", NPY_BODY, timeout=10) == b"hello world"
        assert fake.connections == 1

    run(answer, scenario)


def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, request.body))
        await writer.drain()
        writer.close()  # no "connection: close" header: the client learns it only from the socket

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        for i in range(3):
            assert await pool.predict("digits", "", NPY_BODY + bytes([i]), timeout=10) == NPY_BODY + bytes(
                [i]
            )
        assert fake.connections == 3

    run(answer, scenario)


def test_connection_close_is_honoured() -> None:
    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        await pool.predict("digits", "", NPY_BODY, timeout=10)
        await pool.predict("digits", "", NPY_BODY, timeout=10)
        assert fake.connections == 2

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"ok", "Connection: close"))

    run(answer, scenario)


HANDLER_400 = {"code": 400, "type": "RequestError", "error": "instance 0 has shape [7]", "hint": "reshape"}
ERRORS: dict[str, tuple[int, Any, type[CkptServeError], grpc.StatusCode, str]] = {
    "handler's bad request": (400, HANDLER_400, RequestError, grpc.StatusCode.INVALID_ARGUMENT, "has shape"),
    "handler's too large": (
        413,
        {"code": 413, "type": "PayloadTooLargeError", "error": "65 instances; at most 64"},
        PayloadTooLargeError,
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 64",
    ),
    "unknown model": (
        404,
        {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"},
        ModelNotFoundError,
        grpc.StatusCode.NOT_FOUND,
        "nope",
    ),
    "no worker": (
        503,
        {"code": 503, "type": "ServiceUnavailableException", "message": 'Model "digits" has no worker'},
        ModelNotReadyError,
        grpc.StatusCode.UNAVAILABLE,
        "no worker",
    ),
    "wrong key": (
        400,
        {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"},
        AuthenticationError,
        grpc.StatusCode.UNAUTHENTICATED,
        "Authorization failed",
    ),
    "not JSON": (500, "boom", CkptServeError, grpc.StatusCode.INTERNAL, "boom"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_answers_become_typed_errors_with_their_grpc_status(case: str) -> None:
    status, doc, kind, code, fragment = ERRORS[case]
    body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(status, body) if request.body == NPY_BODY else response(200, b"fine"))

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        with pytest.raises(CkptServeError) as caught:
            await pool.predict("digits", "", NPY_BODY, timeout=10)
        assert type(caught.value) is kind
        assert status_code(caught.value) is code
        assert fragment in caught.value.message
        assert await pool.predict("digits", "", b"{}", timeout=10) == b"fine"  # the connection stays usable
        assert fake.connections == 1

    run(answer, scenario)


def test_no_answer_within_the_deadline_is_deadline_exceeded_and_the_late_answer_is_never_read() -> None:
    release = asyncio.Event()  # the slow answer comes only after the call has given up

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.body == b"slow":
            await release.wait()
            writer.write(response(200, b"late answer to slow"))
        else:
            writer.write(response(200, b"answer to " + request.body))

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        with pytest.raises(DeadlineExceededError) as caught:
            await pool.predict("digits", "", b"slow", timeout=0.2)
        assert status_code(caught.value) is grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert await pool.predict("digits", "", b"fast", timeout=10) == b"answer to fast"
        assert fake.connections == 2  # the expired call's connection was dropped, not reused

    run(answer, scenario)


def test_nothing_listening_is_unavailable_at_once() -> None:
    async def main() -> None:
        pool = HttpPredictions(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ServerError) as caught:
            await pool.predict("digits", "", NPY_BODY, timeout=30)
        assert status_code(caught.value) is grpc.StatusCode.UNAVAILABLE
        assert "unavailable" in caught.value.message

    asyncio.run(main())


def test_an_answer_cut_short_is_a_server_error() -> None:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    async def scenario(pool: HttpPredictions, fake: FakeTorchServe) -> None:
        with pytest.raises(ServerError, match="broke off"):
            await pool.predict("digits", "", NPY_BODY, timeout=10)

    run(answer, scenario)


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "http://127.0.0.1"])
def test_an_address_without_scheme_or_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="needs a host and a port"):
        HttpPredictions(url)
