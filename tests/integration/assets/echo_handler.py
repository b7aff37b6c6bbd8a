"""A minimal TorchServe handler for the integration tests: echoes each request, or fails on purpose."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from serving.wire import LOAD_ERROR_MARKER  # the worker-log line ckptserve looks for, as the real handler

logger = logging.getLogger(__name__)


class EchoHandler:
    """Echoes each request's body; ``echo.fail`` or ``echo.crash`` in model-config.yaml makes it fail.

    ``fail`` logs the ckptserve marker line before raising (what our real handler does); ``crash`` raises
    a plain exception, as a handler with a bug would. A request ``{"log": text}`` logs ``text``: a test
    waits for that line to know the worker's earlier output has reached the log.
    """

    def __init__(self) -> None:
        self.initialized = False

    def initialize(self, context: Any) -> None:
        settings = (context.model_yaml_config or {}).get("echo") or {}
        if settings.get("fail"):
            logger.error("%s %s", LOAD_ERROR_MARKER, settings["fail"])
            raise RuntimeError(settings["fail"])
        if settings.get("crash"):
            raise ValueError(settings["crash"])
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        replies = []
        for request in data:
            body = request.get("body", request.get("data"))
            if isinstance(body, (bytes, bytearray)):  # ckptserve turns TorchServe's JSON decoding off
                body = body.decode("utf-8", errors="replace")
                with contextlib.suppress(ValueError):
                    body = json.loads(body)
            if isinstance(body, dict) and "log" in body:
                logger.warning("%s", body["log"])
            replies.append(json.dumps({"model": context.model_name, "echo": body}, default=repr))
        return replies
