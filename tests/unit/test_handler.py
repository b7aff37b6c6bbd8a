"""The TorchServe handler without a server: TorchServe's own Context object, built as its worker builds it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import serving
from handlers.checkpoint_handler import CheckpointHandler
from serving.errors import CheckpointNotFoundError
from serving.files import sha256_of
from serving.wire import LOAD_ERROR_MARKER
from tests.conftest import Reference
from tests.unit.test_session import ARCH, DEADLINE_S, predictions, write_checkpoint

METRICS_YAML = Path(serving.__file__).parent / "torchserve" / "metrics.yaml"  # what ckptserve serve passes
JSON_HEADERS = {"Content-Type": "application/json"}
DESCRIBE_JOB: dict[str, Any] = {}  # the management API's describe: no parameters, a "describe" header


def _context(model_dir: Path, handler: dict[str, Any], registered: str = "digits", **top: Any) -> Context:
    yaml = {
        "minWorkers": 1,
        "maxWorkers": 1,
        **top,
        "handler": {"architecture": ARCH, "input": {"shape": [1, 8, 8]}, **handler},
    }
    manifest = {"model": {"modelName": "digits", "modelVersion": "2.0", "handler": "checkpoint_handler.py"}}
    return Context(registered, str(model_dir), manifest, 8, None, "0.12.0", model_yaml_config=yaml)


def _batch(context: Context, jobs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Attach each job's headers as TorchServe's worker does before it calls handle()."""
    context.request_processor = [RequestProcessor(headers) for _, headers in jobs]
    context.request_ids = {idx: f"req-{idx}" for idx in range(len(jobs))}
    return [row for row, _ in jobs]


def _json(inputs: torch.Tensor) -> dict[str, Any]:
    return {"body": json.dumps({"instances": inputs.tolist()}).encode()}


def _status(context: Context, idx: int) -> tuple[int, str | None]:
    return context.get_response_status(idx)


@pytest.fixture
def handler() -> Iterator[CheckpointHandler]:
    created = CheckpointHandler()
    yield created
    if created.session is not None:
        created.session.close()


@pytest.fixture
def context(reference: Reference, tmp_path: Path, handler: CheckpointHandler) -> Context:
    """A worker initialized on a configured checkpoint (epoch 3)."""
    write_checkpoint(tmp_path / "model.pth", reference.model, epoch=3)
    created = _context(tmp_path, {"checkpoint": "model.pth"})
    handler.initialize(created)
    return created


def test_initialize_then_handle_a_batch_sets_statuses_content_types_and_headers(
    reference: Reference, tmp_path: Path, handler: CheckpointHandler
) -> None:
    path = write_checkpoint(tmp_path / "model.pth", reference.model, epoch=3)
    context = _context(tmp_path, {"checkpoint": "model.pth"})  # relative: resolved in model_dir
    handler.initialize(context)
    assert handler.initialized
    form = {"data": json.dumps({"instances": reference.inputs[2:5].tolist()}).encode()}
    rows = _batch(
        context,
        [(_json(reference.inputs[:2]), JSON_HEADERS), (form, {"data": {"content-type": "application/json"}})],
    )
    answers = handler.handle(rows, context)
    torch.testing.assert_close(predictions(answers[0]), reference.outputs[:2])
    torch.testing.assert_close(predictions(answers[1]), reference.outputs[2:5])
    for idx in (0, 1):
        assert _status(context, idx) == (200, "OK")
        assert context.get_response_headers(idx) == {
            "content-type": "application/json",
            "x-ckptserve-batch-size": "5",
            "x-ckptserve-batch-requests": "2",
            "x-ckptserve-checkpoint": f"epoch=3@{sha256_of(path)[:12]}",
        }


def test_describe_answers_only_the_management_job_never_a_client_header(
    reference: Reference, handler: CheckpointHandler, context: Context
) -> None:
    forged = {**JSON_HEADERS, "describe": "True"}  # a client's header: an inference job all the same
    rows = _batch(context, [(_json(reference.inputs[:1]), forged), (DESCRIBE_JOB, {"describe": "True"})])
    inferred, described = handler.handle(rows, context)
    torch.testing.assert_close(predictions(inferred), reference.outputs[:1])
    assert isinstance(described, dict) and described["state"] == "serving"
    assert described["checkpoint"]["epoch"] == 3 and described["outputs"][0]["name"] == "output__0"
    assert context.get_response_headers(1) == {}  # describe's reply is TorchServe's own JSON
    assert context.get_response_headers(0)["x-ckptserve-batch-requests"] == "1"


def test_a_bad_request_gets_its_typed_error_reply_and_the_rest_of_the_batch_is_served(
    reference: Reference, handler: CheckpointHandler, context: Context
) -> None:
    rows = _batch(
        context, [({"body": b"{not json"}, JSON_HEADERS), (_json(reference.inputs[:1]), JSON_HEADERS)]
    )
    bad, good = handler.handle(rows, context)
    assert _status(context, 0) == (400, "RequestError") and _status(context, 1) == (200, "OK")
    error = json.loads(bad)
    assert error["type"] == "RequestError" and "malformed JSON" in error["error"] and error["hint"], error
    assert context.get_response_content_type(0) == "application/json"
    torch.testing.assert_close(predictions(good), reference.outputs[:1])


def test_a_worker_waiting_for_its_first_checkpoint_answers_503_and_describes_waiting(
    reference: Reference, tmp_path: Path, handler: CheckpointHandler
) -> None:
    watch = tmp_path / "checkpoints"  # training has not created it yet
    context = _context(tmp_path, {"watch_dir": str(watch), "poll_interval_s": 3600})
    handler.initialize(context)
    rows = _batch(
        context, [(_json(reference.inputs[:1]), JSON_HEADERS), (DESCRIBE_JOB, {"describe": "True"})]
    )
    refused, described = handler.handle(rows, context)
    assert _status(context, 0) == (503, "ModelNotReadyError")
    error = json.loads(refused)
    assert error["type"] == "ModelNotReadyError" and str(watch) in error["error"], error
    assert context.get_response_headers(0) == {"content-type": "application/json"}  # no model ran
    assert described["state"] == "waiting" and described["waiting_for"] == str(watch)


def test_a_failed_initialize_logs_the_load_error_line_that_serve_reads(
    tmp_path: Path, handler: CheckpointHandler, caplog: pytest.LogCaptureFixture
) -> None:
    context = _context(tmp_path, {"checkpoint": "model_epoch_1.pth"})
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointNotFoundError):
        handler.initialize(context)
    (line,) = [r.getMessage() for r in caplog.records if LOAD_ERROR_MARKER in r.getMessage()]
    assert "model_epoch_1.pth" in line and "| what to do:" in line
    assert not handler.initialized


def test_startup_timeout_bounds_the_wait_for_files_still_being_written(
    reference: Reference, tmp_path: Path, handler: CheckpointHandler
) -> None:
    watch = tmp_path / "checkpoints"
    write_checkpoint(watch / "model_epoch_1.pth", reference.model, epoch=1)
    (watch / "model_epoch_2.pth").write_bytes(b"PK\x03\x04 still being written")
    # An hour between polls, and TorchServe kills a worker whose initialize() outlasts 2 s.
    context = _context(tmp_path, {"watch_dir": str(watch), "poll_interval_s": 3600}, startupTimeout=2)
    starting = threading.Thread(target=handler.initialize, args=(context,), daemon=True)
    starting.start()
    starting.join(DEADLINE_S)
    assert not starting.is_alive() and handler.initialized
    assert handler.describe()["checkpoint"]["epoch"] == 1


def test_metrics_go_to_torchserves_frontend_labelled_with_the_registered_name(
    reference: Reference, tmp_path: Path, handler: CheckpointHandler, caplog: pytest.LogCaptureFixture
) -> None:
    write_checkpoint(tmp_path / "model.pth", reference.model, epoch=3)
    context = _context(tmp_path, {"checkpoint": "model.pth"}, registered="digits-canary")
    context.metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    context.metrics.initialize_cache()  # what each worker does with the config TorchServe passes it
    with caplog.at_level(logging.INFO):
        handler.initialize(context)
        rows = _batch(context, [(_json(reference.inputs[:3]), JSON_HEADERS)])
        handler.handle(rows, context)
        assert handler.session is not None
        handler.session.close()  # flushes what is pending
    lines = [
        line for r in caplog.records for line in r.getMessage().splitlines() if line.startswith("[METRICS]")
    ]
    assert "declared with dimensions" not in caplog.text
    assert any(line.startswith("[METRICS]ckptserve_worker_starts_total.") for line in lines), lines
    (batch,) = [line for line in lines if line.startswith("[METRICS]ckptserve_batch_size.")]
    assert ":3.0|#ModelName:digits-canary,Level:Model|#type:HISTOGRAM" in batch, batch
