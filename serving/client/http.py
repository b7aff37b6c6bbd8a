"""A small synchronous HTTP client for TorchServe's inference API: stdlib, keep-alive, retries on 503."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.client.access import resolve_token, ssl_context
from serving.client.common import (
    InferResult,
    Tensors,
    decode_answer,
    encode_instances,
    error_document,
    host_and_port,
    json_inputs,
    parse_error_body,
    predictions,
)
from serving.error_codes import error_from_http
from serving.errors import (
    AuthenticationError,
    DeadlineExceededError,
    ServerError,
    ServerReplyError,
)
from serving.retry import Backoff
from serving.wire import JSON_TYPE


class HttpClient:
    """One keep-alive connection to ``base_url`` (e.g. http://127.0.0.1:8080); not thread-safe."""

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
    ) -> None:
        self._host, self._port = host_and_port(base_url)
        self.token = resolve_token(token, key_file)
        self.timeout_s, self.backoff = timeout_s, Backoff(retries, backoff_s)
        # https:// (or a CA) verifies the server: against ``tls_ca``, or the system's roots.
        tls = base_url.startswith("https:") or tls_ca is not None
        self._ssl = ssl_context(tls_ca) if tls else None
        self._conn: http.client.HTTPConnection | None = None
        self.last_headers: dict[str, str] = {}  # of the latest response, names lower-cased

    def predict(self, model: str, instances: Any) -> Any:
        """KServe v1 rows in, predictions out; an array (or tensor) travels as npy and comes back as one."""
        body, content_type = encode_instances(instances)
        status, data = self.request("POST", f"/predictions/{model}", body, content_type)
        return predictions(raise_for_status(status, data))

    def infer(
        self,
        model: str,
        tensors: Tensors,
        request_id: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
    ) -> InferResult:
        """Open Inference Protocol v2: ``{"name": array}`` (or OIP JSON input objects) in, named arrays out.

        ``result["outputs"]`` still reads the answer as the OIP JSON document.
        """
        body: dict[str, Any] = {"inputs": json_inputs(tensors)}
        if request_id:
            body["id"] = request_id
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        return InferResult.from_json(self.post_json(f"/v2/models/{model}/infer", body))

    def post_json(self, path: str, body: Any) -> Any:
        status, data = self.request("POST", path, json.dumps(body).encode(), JSON_TYPE)
        return raise_for_status(status, data)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        """Send one request; retry on 503 and connection errors with exponential backoff."""
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempts = self.backoff.attempts(self.timeout_s)  # one deadline covers every try
        while True:
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.last_headers = {k.lower(): v for k, v in response.getheaders()}
                delay = attempts.next_delay() if response.status == 503 else None
                if delay is None:
                    return response.status, data
            except TimeoutError:
                self.close()
                raise DeadlineExceededError(
                    f"No answer from {self._host}:{self._port} within {self.timeout_s:g} s.",
                    hint="Allow more time.",
                ) from None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                delay = attempts.next_delay()
                if delay is None:
                    raise ServerError(
                        f"No answer from {self._host}:{self._port} after {attempts.tries} tries: {exc}.",
                        hint="Is the server running? `ckptserve serve` starts it.",
                    ) from None
            time.sleep(delay)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ssl is not None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout_s, context=self._ssl
                )
            else:
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


def raise_for_status(status: int, data: bytes) -> Any:
    """The decoded answer (npy as an array, JSON parsed) or, for an error status, its typed error.

    4xx become RequestError subclasses (ModelNotFoundError for 404, PayloadTooLargeError for 413, ...),
    503 ModelNotReadyError; each keeps ``http_status`` and the parsed ``body``.
    """
    if status < 400:
        return decode_answer(data)
    parsed = parse_error_body(data)
    doc = error_document(status, parsed)
    message, hint = doc["error"], doc.get("hint") if isinstance(doc.get("hint"), str) else None
    if isinstance(parsed, dict) and parsed.get("type") == "InvalidKeyException":
        # TorchServe answers a missing or wrong key with 400, not 401: say which key to send.
        denied = AuthenticationError(
            f"The server answered {status}: {message}",
            hint="Token authorization is on: pass the inference key (token=, key_file= pointing at "
            "key_file.json in the server's runtime directory, or $CKPTSERVE_TOKEN).",
        )
        denied.http_status, denied.body = status, parsed  # type: ignore[attr-defined]
        raise denied
    if status >= 500 and status not in (503, 504):
        raise ServerReplyError(status, parsed, f"The server answered {status}: {message}")
    err = error_from_http(status, f"The server answered {status}: {message}", hint)
    err.body = parsed  # type: ignore[attr-defined]
    raise err
