"""serving.logs: the handler's optional JSON log lines (model, checkpoint, request ids), on real loggers."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from serving.errors import PayloadTooLargeError, RequestError
from serving.logs import (
    JsonFormatter,
    install_json_logs,
    log_failed_requests,
    request_scope,
    uninstall_json_logs,
)
from serving.service import Reply


@pytest.fixture
def stream(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    caplog.set_level(logging.INFO)  # a TorchServe worker logs at INFO (its basicConfig)
    out = io.StringIO()
    live = {"label": "epoch=1@aaaaaaaaaaaa"}
    install_json_logs(JsonFormatter("digits", lambda: live["label"]), stream=out)
    out.live = live  # type: ignore[attr-defined]
    yield out
    uninstall_json_logs()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_ckptserve_loggers_write_one_json_object_per_line(stream: io.StringIO) -> None:
    logging.getLogger("serving.reload.watcher").warning("reload: rejected %s", "x.pth")
    stream.live["label"] = "epoch=2@bbbbbbbbbbbb"  # type: ignore[attr-defined]
    logging.getLogger("ckptserve.handler").info("ready")
    first, second = lines(stream)
    assert first["level"] == "WARNING" and first["logger"] == "serving.reload.watcher"
    assert first["message"] == "reload: rejected x.pth"
    assert (first["model"], first["checkpoint"]) == ("digits", "epoch=1@aaaaaaaaaaaa")
    assert second["checkpoint"] == "epoch=2@bbbbbbbbbbbb"  # read at each line: a reload shows at once
    assert first["time"].endswith("Z") and isinstance(first["pid"], int)


def test_other_loggers_are_untouched(stream: io.StringIO, caplog) -> None:
    # TorchServe's frontend parses "[METRICS]..." lines on the worker's stdout: they must stay plain.
    with caplog.at_level(logging.INFO):
        logging.getLogger("ts.metrics.caching_metric").info("[METRICS]x.seconds:1|#|#hostname:h,1")
    assert stream.getvalue() == ""
    assert "[METRICS]x.seconds" in caplog.text


def test_lines_inside_a_request_scope_carry_the_batch_request_ids(stream: io.StringIO) -> None:
    log = logging.getLogger("serving.service")
    with request_scope(["r-1", "r-2"]):
        log.warning("batched forward failed")
        thread = threading.Thread(target=lambda: log.warning("from the reload thread"))
        thread.start()
        thread.join()
    log.warning("after the batch")
    inside, other_thread, after = lines(stream)
    assert inside["request_ids"] == ["r-1", "r-2"]
    assert "request_ids" not in other_thread and "request_ids" not in after


def test_failed_requests_are_logged_one_per_line_with_their_id(stream: io.StringIO) -> None:
    replies = [
        Reply(b"{}"),
        Reply(b"{}", status=400, error=RequestError("malformed JSON at line 1")),
        Reply(b"{}", status=413, error=PayloadTooLargeError("65 instances; at most 64")),
    ]
    log_failed_requests(logging.getLogger("ckptserve.handler"), ["a", "b", "c"], replies)
    first, second = lines(stream)
    assert first["request_id"] == "b" and first["message"].startswith("request failed: 400 RequestError")
    assert second["request_id"] == "c" and "413 PayloadTooLargeError" in second["message"]


def test_exceptions_are_kept_and_installing_twice_replaces(stream: io.StringIO) -> None:
    log = logging.getLogger("serving.loader")
    try:
        raise ValueError("bad tensor")
    except ValueError:
        log.exception("load failed")
    (entry,) = lines(stream)
    assert "ValueError: bad tensor" in entry["exception"]
    second = io.StringIO()
    install_json_logs(JsonFormatter("digits"), stream=second)
    log.info("once")
    assert len(lines(stream)) == 1 and len(lines(second)) == 1
    assert "checkpoint" not in lines(second)[0]  # no model loaded yet: no checkpoint field
