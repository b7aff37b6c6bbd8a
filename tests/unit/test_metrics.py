"""serving.metrics: names and labels defined once, the shipped TorchServe config agrees, events emit what
the dashboard and alerts read; and the handler's adapter through TorchServe's own metric cache."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import ts
import yaml
from ts.metrics.dimension import Dimension
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

from handlers.checkpoint_handler import _torchserve_emit
from serving import checkpoint_info, errors, load_model, metrics, save_checkpoint
from serving.errors import ModelFailedError
from serving.loader import CheckpointInfo
from serving.metrics import ALL, HandlerMetrics, MetricDef
from serving.service import BatchReport
from serving.torchserve.server import METRICS_CONFIG
from tests.polling import wait_until

Sent = list[tuple[str, float, tuple[str, ...]]]


class Recorder:
    """HandlerMetrics' emit on a list: what was sent, and which metrics each emit call carried."""

    def __init__(self) -> None:
        self.sent: Sent = []
        self.names: list[set[str]] = []  # the metric names each emit call carried

    def __call__(self, observations: Any) -> None:
        self.sent.extend((m.name, v, d) for m, v, d in observations)
        self.names.append({m.name for m, _, _ in observations})


def recorder(**options: float) -> tuple[HandlerMetrics, Recorder]:
    emit = Recorder()
    return HandlerMetrics(emit, "digits", **options), emit


def info(
    epoch: int | None, sha: str, path: str = "/nonexistent/ckpt.pth", saved_at: float | None = None
) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        layout="torch_save",
        kind="training_checkpoint",
        sha256=sha * 64,
        size_bytes=1,
        fingerprint="f",
        device="cpu",
        dtype="float32",
        load_seconds=0.25,
        epoch=epoch,
        metadata={"epoch": epoch, "ckptserve": {"saved_at": saved_at}} if saved_at else {"epoch": epoch},
    )


# --- definitions and the shipped config ---------------------------------------------------------


def _config() -> dict[str, Any]:
    return yaml.safe_load(METRICS_CONFIG.read_text())


def test_the_shipped_config_declares_every_handler_metric_with_its_dimensions() -> None:
    declared = {
        kind: {m["name"]: (m["unit"], m["dimensions"]) for m in entries}
        for kind, entries in _config()["model_metrics"].items()
    }
    expected = {
        kind: {m["name"]: (m["unit"], m["dimensions"]) for m in entries}
        for kind, entries in metrics.model_metrics_config().items()
    }
    assert declared == expected


def test_the_shipped_config_keeps_torchserves_useful_frontend_metrics() -> None:
    frontend = _config()["ts_metrics"]
    names = {m["name"] for entries in frontend.values() for m in entries}
    assert {
        "Requests2XX",
        "Requests4XX",
        "Requests5XX",
        "ts_inference_requests_total",
        "ts_inference_latency_microseconds",
        "ts_queue_latency_microseconds",
        "WorkerLoadTime",
    } <= names
    # TorchServe's frontend emits these dimensions in this order; a change would make it drop them.
    by_name = {m["name"]: m["dimensions"] for entries in frontend.values() for m in entries}
    assert by_name["Requests4XX"] == ["Level", "Hostname"]
    assert by_name["ts_inference_requests_total"] == ["model_name", "model_version", "hostname"]


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.name)
def test_names_follow_prometheus_conventions(metric: MetricDef) -> None:
    assert re.fullmatch(r"ckptserve_[a-z][a-z0-9_]*", metric.name)
    assert metric.name.endswith("_total") == (metric.kind == "counter")
    if metric.unit == "seconds":
        assert re.search(r"_seconds(_total)?$", metric.name), "base unit seconds in the name"
    assert not re.search(r"_(ms|milliseconds|microseconds)\b", metric.name)
    assert metric.dimensions[:2] == ("ModelName", "Level")
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in metric.labels)
    # TorchServe's metric line takes [\w\s]+ for the unit: an empty one would make the frontend drop it.
    assert re.fullmatch(r"\w+", metric.unit)
    assert len({m.name for m in ALL}) == len(ALL)


def test_the_definitions_import_without_torch_or_torchserve() -> None:
    code = "import sys, serving.metrics, serving.logs; print(sorted({'torch', 'ts'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_error_reasons_are_a_bounded_set_that_knows_every_request_error() -> None:
    def subclasses(cls: type[Exception]) -> set[type[Exception]]:
        return {cls} | {s for c in cls.__subclasses__() for s in subclasses(c)}

    # The errors a batch can end with: the codecs' (serving.errors) and the data plane's own.
    for cls in subclasses(errors.CkptServeError):
        if cls.__module__ in ("serving.errors", "serving.service"):
            assert metrics.error_reason(cls.__name__) == cls.__name__
    assert metrics.error_reason(ModelFailedError.__name__) == "ModelFailedError"
    assert metrics.error_reason("CkptServeError") == "CkptServeError"  # internal errors, as clients see them
    assert metrics.error_reason("KeyError") == "other"
    assert metrics.error_reason("AnythingAnAttackerNames") == "other"


# --- events -------------------------------------------------------------------------------------


def test_a_batch_reports_stage_times_batch_size_and_errors_by_reason() -> None:
    handler_metrics, emit = recorder()
    report = BatchReport(
        preprocess=0.001,
        inference=0.02,
        postprocess=0.003,
        batch_size=7,
        errors=["RequestError", "RequestError", "PayloadTooLargeError", "ZeroDivisionError"],
    )
    handler_metrics.batch(report)
    assert emit.sent == [], "the request path only records"
    handler_metrics.flush()
    base = ("digits", "Model")
    assert emit.sent == [
        ("ckptserve_preprocess_seconds", 0.001, base),
        ("ckptserve_inference_seconds", 0.02, base),
        ("ckptserve_postprocess_seconds", 0.003, base),
        ("ckptserve_batch_size", 7.0, base),
        ("ckptserve_request_errors_total", 2.0, (*base, "RequestError")),
        ("ckptserve_request_errors_total", 1.0, (*base, "PayloadTooLargeError")),
        ("ckptserve_request_errors_total", 1.0, (*base, "other")),
    ]


def test_a_batch_without_a_valid_request_reports_no_forward() -> None:
    handler_metrics, emit = recorder()
    handler_metrics.batch(BatchReport(preprocess=0.001, batch_size=0, errors=["RequestError"]))
    handler_metrics.flush()
    assert [name for name, _, _ in emit.sent] == [
        "ckptserve_preprocess_seconds",
        "ckptserve_request_errors_total",
    ]


def test_reloads_count_by_result_and_time_only_successes() -> None:
    handler_metrics, emit = recorder()
    handler_metrics.reloaded("rejected", 0.5)
    handler_metrics.reloaded("success", 1.5)
    handler_metrics.reloaded("exploded", 1.0)  # not a result the reloader reports: never a new label
    handler_metrics.flush()
    assert emit.sent == [
        ("ckptserve_reloads_total", 1.0, ("digits", "Model", "rejected")),
        ("ckptserve_reloads_total", 1.0, ("digits", "Model", "success")),
        ("ckptserve_reload_seconds", 1.5, ("digits", "Model")),
    ]


def test_the_info_metric_exports_one_live_checkpoint_and_zeroes_the_replaced_one() -> None:
    handler_metrics, emit = recorder()
    handler_metrics.started(info(3, "a", saved_at=1_700_000_000.5), reloads=True)
    handler_metrics.reloaded("success", 0.1, info(3, "a", saved_at=1_700_000_000.5))  # same: nothing zeroed
    handler_metrics.reloaded("success", 0.1, info(4, "b", saved_at=1_700_000_100.0))
    handler_metrics.stop()
    info_series = [(v, d[2:]) for n, v, d in emit.sent if n == "ckptserve_checkpoint_info"]
    assert info_series == [
        (1.0, ("3", "a" * 12)),
        (1.0, ("3", "a" * 12)),
        (0.0, ("3", "a" * 12)),
        (1.0, ("4", "b" * 12)),
    ]
    assert [v for n, v, _ in emit.sent if n == "ckptserve_checkpoint_epoch"] == [3.0, 3.0, 4.0]
    # A watching worker starts both reload counters at 0, so increase() sees the first rejection.
    reloads = [(v, d[2]) for n, v, d in emit.sent if n == "ckptserve_reloads_total"]
    assert reloads[:2] == [(0.0, "success"), (0.0, "rejected")]
    written = [v for n, v, _ in emit.sent if n == "ckptserve_checkpoint_written_timestamp_seconds"]
    assert written == [1_700_000_000.5, 1_700_000_000.5, 1_700_000_100.0]


def test_a_checkpoint_without_epoch_or_saved_at(tmp_path: Path) -> None:
    handler_metrics, emit = recorder()
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    handler_metrics.reloaded("success", 0.1, info(None, "c", path=str(path)))
    handler_metrics.flush()
    assert ("ckptserve_checkpoint_info", 1.0, ("digits", "Model", "none", "c" * 12)) in emit.sent
    assert ("ckptserve_checkpoint_epoch", -1.0, ("digits", "Model")) in emit.sent
    # Without saved_at metadata the file's mtime says when it was written.
    written = ("ckptserve_checkpoint_written_timestamp_seconds", path.stat().st_mtime, ("digits", "Model"))
    assert written in emit.sent


def test_the_written_time_is_the_one_save_checkpoint_records(tmp_path: Path) -> None:
    before = time.time()
    path = save_checkpoint(tmp_path, torch.nn.Linear(2, 2), epoch=1)
    after = time.time()
    os.utime(path, (1.0, 1.0))  # a copy or a restore changes the mtime; the metadata still knows
    loaded = load_model(torch.nn.Linear, path, architecture_kwargs={"in_features": 2, "out_features": 2})
    written = metrics.written_at(checkpoint_info(loaded))
    assert written is not None and before <= written <= after


def test_the_reporter_flushes_in_the_background_and_keeps_the_ready_clock() -> None:
    handler_metrics, emit = recorder(flush_interval_s=0.02, ready_tick_s=0.1)
    began = time.monotonic()
    handler_metrics.started(info(1, "d", saved_at=1.0))
    # Nobody calls flush(): only the reporter thread can make these arrive.
    wait_until(lambda: len(emit.sent) >= 3, "the reporter's first flush")
    assert emit.sent[:3] == [
        ("ckptserve_worker_starts_total", 1.0, ("digits", "Model")),
        ("ckptserve_worker_ready_seconds_total", 0.0, ("digits", "Model")),
        ("ckptserve_model_load_seconds", 0.25, ("digits", "Model")),
    ]
    for _ in range(50):  # batches between two flushes go out in one emit call (one write)
        handler_metrics.batch(BatchReport(preprocess=0.001, inference=0.002, batch_size=1))

    def ticks() -> list[float]:
        return [v for n, v, _ in list(emit.sent) if n == "ckptserve_worker_ready_seconds_total"][1:]

    wait_until(lambda: len(ticks()) >= 4, "four ticks of the ready clock")
    wait_until(
        lambda: sum(1 for n, _, _ in list(emit.sent) if n == "ckptserve_inference_seconds") == 50,
        "the 50 batches' observations",
    )
    handler_metrics.stop()
    elapsed = time.monotonic() - began
    assert sum(1 for n, _, _ in emit.sent if n == "ckptserve_inference_seconds") == 50
    batch_calls = sum(1 for names in emit.names if "ckptserve_inference_seconds" in names)
    assert batch_calls <= 10  # 50 one-batch emit calls would be one write per batch
    assert not any(n == "ckptserve_reloads_total" for n, _, _ in emit.sent)  # this worker watches nothing
    # Measured, not assumed: each tick is the time since the last one (at least the tick), they add up
    # to no more than the time that passed, and they are not all the nominal 0.1 s.
    ready = ticks()
    assert all(v >= 0.1 for v in ready) and sum(ready) <= elapsed, (ready, elapsed)
    assert len(set(ready)) > 1, ready


def test_switched_off_records_nothing_and_a_broken_emitter_never_raises(caplog) -> None:
    off = HandlerMetrics(None, "digits")
    off.batch(BatchReport(preprocess=1.0, batch_size=1, errors=["RequestError"]))
    off.reloaded("success", 1.0, info(1, "e"))
    off.started(info(1, "e"))
    assert not off.enabled and off._reporter is None and off._pending == []

    def broken(*_: object) -> None:
        raise OSError("stdout closed")

    failing = HandlerMetrics(broken, "digits")
    failing.batch(BatchReport(preprocess=1.0, batch_size=1))
    with caplog.at_level(logging.ERROR, logger="serving.metrics"):
        failing.flush()
    assert "could not emit metrics ckptserve_batch_size" in caplog.text


def test_non_finite_values_are_not_sent() -> None:
    # TorchServe's frontend parses the value with [0-9\-,.e]+: "nan" or "inf" would be a parse error.
    handler_metrics, emit = recorder()
    handler_metrics.batch(BatchReport(preprocess=float("nan"), inference=float("inf"), batch_size=1))
    handler_metrics.flush()
    assert [name for name, _, _ in emit.sent] == ["ckptserve_postprocess_seconds", "ckptserve_batch_size"]


def test_recording_from_several_threads_while_flushing_keeps_every_event() -> None:
    handler_metrics, emit = recorder(flush_interval_s=0.001)
    handler_metrics.start()

    def work() -> None:
        for _ in range(500):
            handler_metrics.batch(BatchReport(preprocess=0.001, batch_size=0))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler_metrics.stop()
    assert len(emit.sent) == 2000


# --- through TorchServe's own metric cache ------------------------------------------------------

# The frontend's parser for a worker's metric line (org.pytorch.serve.metrics.Metric, TorchServe 0.12.0).
FRONTEND_LINE = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),([^,]+)(,(.*))?"
)
LABELS = {"reason": "RequestError", "result": "success", "epoch": "12", "sha256": "0123456789ab"}


def _worker_cache() -> Any:
    cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
    cache.initialize_cache()  # what each worker does with the config TorchServe passes it
    cache.model_name = "digits"
    return cache


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        line for r in caplog.records for line in r.getMessage().splitlines() if line.startswith("[METRICS]")
    ]


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.name)
def test_the_adapter_writes_the_line_torchserves_add_metric_writes(metric: MetricDef, caplog) -> None:
    cache = _worker_cache()
    dimensions = ("digits", "Model", *(LABELS[name] for name in metric.labels))
    with caplog.at_level(logging.INFO):
        # TorchServe's own API, with the dimensions spelled out as serving.metrics sends them.
        cache.add_metric(
            metric.name,
            0.25,
            metric.unit,
            dimensions=[Dimension(n, v) for n, v in zip(metric.dimensions, dimensions, strict=True)],
            metric_type=MetricTypes(metric.kind),
        )
        (theirs,) = _lines(caplog)
        caplog.clear()
        _torchserve_emit(cache)([(metric, 0.25, dimensions)])
        (ours,) = _lines(caplog)
    assert "declared with dimensions" not in caplog.text
    # Identical up to the timestamp.
    assert ours.rsplit(",", 1)[0] == theirs.rsplit(",", 1)[0]
    match = FRONTEND_LINE.fullmatch(ours.removeprefix("[METRICS]"))
    assert match, ours
    name, unit, value, dims, _, kind = match.groups()[:6]
    assert (name, unit, float(value), kind) == (metric.name, metric.unit, 0.25, metric.kind.upper())
    assert [d.split(":", 1) for d in dims.split(",")] == [
        [n, v] for n, v in zip(metric.dimensions, dimensions, strict=True)
    ]


def test_the_adapter_writes_a_flush_at_once_and_warns_about_undeclared_metrics(caplog) -> None:
    cache = _worker_cache()
    handler_metrics = HandlerMetrics(_torchserve_emit(cache), "digits")
    report = BatchReport(preprocess=0.001, inference=0.002, batch_size=3, errors=["RequestError"])
    with caplog.at_level(logging.INFO):
        handler_metrics.batch(report)
        handler_metrics.batch(report)
        handler_metrics.flush()
    records = [r for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    assert len(records) == 1 and len(records[0].getMessage().splitlines()) == 10  # two batches, one write
    # A worker started with TorchServe's default metrics config (not ckptserve's) says what is missing.
    default = Path(ts.__file__).parent / "configs" / "metrics.yaml"
    bare = MetricsCacheYamlImpl(config_file_path=str(default))
    bare.initialize_cache()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ckptserve.handler"):
        _torchserve_emit(bare)
    assert "ckptserve_inference_seconds is declared with dimensions None" in caplog.text
