"""Optional JSON log lines (handler config ``json_logs: true``) with model, checkpoint and request ids."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from serving.service import Reply

# ckptserve's own loggers: the handler ("ckptserve.handler") and the library ("serving.*"). TorchServe's
# loggers keep their plain lines: its frontend parses "[METRICS]..." lines from the worker's stdout.
LOGGERS = ("ckptserve", "serving")

_request_ids: ContextVar[tuple[str, ...]] = ContextVar("ckptserve_request_ids", default=())
_installed: list[tuple[logging.Logger, logging.Handler]] = []


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, model, checkpoint, request_ids.

    ``checkpoint`` is called for every line, so a line logged after a reload names the new checkpoint.
    """

    def __init__(self, model: str, checkpoint: Callable[[], str | None] = lambda: None) -> None:
        super().__init__()
        self.model = model
        self.checkpoint = checkpoint

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "model": self.model,
        }
        try:
            checkpoint = self.checkpoint()
        except Exception:  # before the first model is loaded, or a provider that broke: log anyway
            checkpoint = None
        if checkpoint:
            entry["checkpoint"] = checkpoint
        request_id = getattr(record, "request_id", None)
        ids = _request_ids.get()
        if request_id is not None:
            entry["request_id"] = request_id
        elif ids:
            entry["request_ids"] = list(ids)
        entry["pid"] = record.process or os.getpid()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


@contextlib.contextmanager
def request_scope(request_ids: Iterable[str]) -> Iterator[None]:
    """Lines logged inside carry ``request_ids`` (the thread's context only: a reload thread's don't)."""
    token = _request_ids.set(tuple(str(i) for i in request_ids))
    try:
        yield
    finally:
        _request_ids.reset(token)


def log_failed_requests(
    logger: logging.Logger, request_ids: Sequence[str | None], replies: Sequence[Reply]
) -> None:
    """One line per request answered with an error: its id, status, error type and message."""
    for request_id, reply in zip(request_ids, replies, strict=False):
        if reply.error is not None:
            logger.info(
                "request failed: %d %s: %s",
                reply.status,
                type(reply.error).__name__,
                reply.error.message,
                extra={"request_id": request_id},
            )


def install_json_logs(
    formatter: logging.Formatter, stream: TextIO | None = None, loggers: Iterable[str] = LOGGERS
) -> logging.Handler:
    """Send ckptserve's loggers through ``formatter`` to ``stream`` (stdout: TorchServe's worker log),
    instead of the root logger's plain handler. Calling it again replaces the earlier installation."""
    uninstall_json_logs()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False  # not twice: once as JSON here, once in plain text from the root
        _installed.append((logger, handler))
    return handler


def uninstall_json_logs() -> None:
    while _installed:
        logger, handler = _installed.pop()
        logger.removeHandler(handler)
        logger.propagate = True
