"""A small synchronous HTTP client for TorchServe's inference API: stdlib, keep-alive, retries on 503."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from serving.errors import CkptServeError, ModelNotReadyError, RequestError, ServerError


class ServerReplyError(CkptServeError):
    """The server answered with an error status; ``status`` and ``body`` hold what it said."""

    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.http_status = status


class HttpClient:
    """One keep-alive connection to ``base_url`` (e.g. http://127.0.0.1:8080); not thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise RequestError(f"Expected an http://host:port URL, got {base_url!r}.")
        self._host, self._port = parsed.hostname, parsed.port or 80
        self.timeout_s, self.token, self.retries, self.backoff_s = timeout_s, token, retries, backoff_s
        self._conn: http.client.HTTPConnection | None = None
        self.last_headers: dict[str, str] = {}  # of the latest response, names lower-cased

    def predict(self, model: str, instances: Sequence[Any]) -> list[Any]:
        """KServe v1: ``instances`` in, the list of predictions out."""
        reply = self.post_json(f"/predictions/{model}", {"instances": list(instances)})
        return reply["predictions"]

    def infer(
        self, model: str, inputs: Sequence[Mapping[str, Any]], request_id: str | None = None
    ) -> dict[str, Any]:
        """Open Inference Protocol v2: the ``inputs`` tensors in, the whole v2 response out."""
        body: dict[str, Any] = {"inputs": list(inputs)}
        if request_id:
            body["id"] = request_id
        return self.post_json(f"/v2/models/{model}/infer", body)

    def post_json(self, path: str, body: Any) -> Any:
        status, data = self.request("POST", path, json.dumps(body).encode(), "application/json")
        return _decode(status, data)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        """Send one request; retry on 503 and connection errors with exponential backoff."""
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.last_headers = {k.lower(): v for k, v in response.getheaders()}
                if response.status != 503 or attempt == self.retries:
                    return response.status, data
            except (ConnectionError, http.client.HTTPException, TimeoutError, OSError) as exc:
                self.close()
                if attempt == self.retries:
                    raise ServerError(
                        f"No answer from {self._host}:{self._port} after {attempt + 1} tries: {exc}.",
                        hint="Is the server running? `ckptserve serve` starts it.",
                    ) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(status: int, data: bytes) -> Any:
    try:
        parsed: Any = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    if status < 400:
        return parsed
    message = parsed.get("error") or parsed.get("message") if isinstance(parsed, dict) else str(parsed)
    if status == 503:
        raise ModelNotReadyError(f"The server is not ready (503): {message}")
    raise ServerReplyError(status, parsed, f"The server answered {status}: {message}")
