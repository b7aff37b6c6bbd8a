"""One retry policy for every client: the schedule itself, and the HTTP clients living by it."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from serving.client import AsyncHttpClient, HttpClient
from serving.errors import ServerError
from serving.retry import Backoff


def test_attempts_give_the_backoff_s_waits_then_stop() -> None:
    attempts = Backoff(retries=3, first_s=0.01).attempts(timeout_s=60)
    assert [attempts.next_delay() for _ in range(4)] == [0.01, 0.02, 0.04, None]
    assert attempts.tries == 4  # the first try and three retries


def test_attempts_never_wait_past_the_deadline() -> None:
    attempts = Backoff(retries=3, first_s=5.0).attempts(timeout_s=1.0)
    assert attempts.next_delay() is None
    assert attempts.tries == 1
    assert 0 < attempts.remaining() <= 1.0


class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 for the first ``busy`` requests, then 200."""

    busy = 0
    seen = 0

    def do_POST(self) -> None:
        type(self).seen += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = 503 if type(self).seen <= type(self).busy else 200
        body = b'{"predictions": [1]}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"busy": 2, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_both_http_clients_retry_503_by_the_same_policy(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    with HttpClient(url, retries=2, backoff_s=0.01) as client:
        assert client.request("POST", "/predictions/m", b"{}")[0] == 200
    assert handler.seen == 3  # two 503s, then the answer

    handler.seen = 0
    with HttpClient(url, retries=1, backoff_s=0.01) as client:
        assert client.request("POST", "/predictions/m", b"{}")[0] == 503  # retries spent: the 503 itself

    async def aio(retries: int) -> int:
        async with AsyncHttpClient(url, retries=retries, backoff_s=0.01) as client:
            return (await client.request("POST", "/predictions/m", b"{}"))[0]

    handler.seen = 0
    assert asyncio.run(aio(2)) == 200
    assert handler.seen == 3
    handler.seen = 0
    assert asyncio.run(aio(1)) == 503


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_both_http_clients_count_their_tries_when_nobody_listens() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with (
        pytest.raises(ServerError, match="after 3 tries"),
        HttpClient(url, retries=2, backoff_s=0.01) as client,
    ):
        client.request("GET", "/ping")

    async def aio() -> None:
        async with AsyncHttpClient(url, retries=2, backoff_s=0.01) as client:
            await client.request("GET", "/ping")

    with pytest.raises(ServerError, match="after 3 tries"):
        asyncio.run(aio())
