"""TorchServe custom handler: a thin adapter from TorchServe's worker API to ckptserve's ``serving`` package.

The only module that knows TorchServe: it reads the worker's context (model_dir, gpu_id, the
model-config.yaml), opens a ``serving.session.ModelSession`` with it, and maps the session's replies
back to per-request statuses, headers and content types. Everything else lives in ``serving/``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

from serving.errors import CkptServeError
from serving.loader import checkpoint_info
from serving.metrics import ALL, Emit, Observation
from serving.session import ModelSession, gpu_count
from serving.spec import parse_spec
from serving.threads import plan_threads
from serving.wire import BATCH_HEADER, BATCH_REQUESTS_HEADER, CHECKPOINT_HEADER, LOAD_ERROR_MARKER

log = logging.getLogger("ckptserve.handler")
# The load-error line goes through the root logger: it stays plain text with json_logs too, because
# `ckptserve serve` finds the reason after the marker in the worker log.
startup_log = logging.getLogger()
# Metric lines for TorchServe's frontend: outside "ckptserve", so json_logs never reformats them.
_metric_lines = logging.getLogger("ts.metrics.ckptserve")
DEFAULT_STARTUP_TIMEOUT_S = 120.0  # TorchServe 0.12.0's ModelConfig.startupTimeout


class CheckpointHandler:
    """One instance per TorchServe worker process: translates its context to a ModelSession and back."""

    def __init__(self) -> None:
        self.initialized = False
        self.session: ModelSession | None = None

    def initialize(self, context: Any) -> None:
        _quiet_per_batch_log()
        try:
            self.session = _open_session(context)
        except CkptServeError as err:
            # ckptserve serve reads this line from the worker log to fail fast with the real reason.
            startup_log.error(
                "%s %s%s", LOAD_ERROR_MARKER, err.message, f" | what to do: {err.hint}" if err.hint else ""
            )
            raise
        except Exception as exc:
            startup_log.exception("%s %s: %s", LOAD_ERROR_MARKER, type(exc).__name__, exc)
            raise
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        # Only the management API's describe job is answered with describe, never a client's
        # "describe" header (see _is_describe); the rest of a batch is served as usual.
        assert self.session is not None, "handle() before initialize()"
        describe = {idx for idx, row in enumerate(data) if _is_describe(context, idx, row)}
        # Positions in TorchServe's batch (its per-request status slots) of the rows we serve.
        slots = [idx for idx in range(len(data)) if idx not in describe]
        answers = self._infer([data[idx] for idx in slots], slots, context) if slots else []
        if not describe:
            return answers
        return [self.describe() if idx in describe else answers.pop(0) for idx in range(len(data))]

    def describe(self) -> dict[str, Any]:
        """Shown as ``customizedMetadata`` by ``GET /models/NAME?customized=true``."""
        assert self.session is not None, "describe() before initialize()"
        return self.session.describe()

    def _infer(self, data: list[dict[str, Any]], slots: list[int], context: Any) -> list[bytes]:
        assert self.session is not None
        requests = [
            (_body(row), _content_type(context, idx, row)) for idx, row in zip(slots, data, strict=True)
        ]
        replies, report = self.session.infer(requests, [context.get_request_id(idx) for idx in slots])
        ran = report.model is not None  # no model runs while the worker waits for its first checkpoint
        served_by = checkpoint_info(report.model).label if report.model is not None else ""
        instances, grouped = str(report.batch_size), str(len(slots))
        for idx, reply in zip(slots, replies, strict=True):
            context.set_response_status(reply.status, reply.phrase, idx)
            context.set_response_content_type(idx, reply.content_type)
            if ran:
                context.set_response_header(idx, BATCH_HEADER, instances)
                context.set_response_header(idx, BATCH_REQUESTS_HEADER, grouped)
            if served_by:
                context.set_response_header(idx, CHECKPOINT_HEADER, served_by)
        return [reply.body for reply in replies]


def _open_session(context: Any) -> ModelSession:
    """What TorchServe's context says, as ModelSession.open takes it."""
    props = context.system_properties
    model_dir = props.get("model_dir") or "."
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    spec = parse_spec(yaml_config.get("handler"), model_dir=model_dir)
    model = (getattr(context, "manifest", None) or {}).get("model", {})
    model_name = model.get("modelName") or getattr(context, "model_name", "model")
    ts_metrics = getattr(context, "metrics", None)
    gpu_id = props.get("gpu_id")
    return ModelSession.open(
        spec,
        model_dir=model_dir,
        gpu_id=gpu_id,
        model_name=model_name,
        model_version=model.get("modelVersion"),
        # Metrics are labelled with the name TorchServe registered, as its own metrics are.
        metrics_name=getattr(context, "model_name", None) or model_name,
        emit=_torchserve_emit(ts_metrics) if spec.metrics and ts_metrics is not None else None,
        # TorchServe starts minWorkers workers of this model (the yaml's top level): they share the CPUs.
        threads=plan_threads(yaml_config, threads=spec.threads, gpus=gpu_count(gpu_id)),
        startup_budget_s=_startup_timeout_s(yaml_config),
    )


def _startup_timeout_s(yaml_config: dict[str, Any]) -> float:
    """TorchServe kills a worker whose initialize() outlasts the yaml's startupTimeout (default 120 s;
    0.12.0 keeps the default for a value that is not a positive number)."""
    try:
        seconds = int(yaml_config.get("startupTimeout", DEFAULT_STARTUP_TIMEOUT_S))
    except (TypeError, ValueError):
        return DEFAULT_STARTUP_TIMEOUT_S
    return float(seconds) if seconds > 0 else DEFAULT_STARTUP_TIMEOUT_S


def _torchserve_emit(ts_metrics: Any) -> Emit:
    """serving.metrics' emitter on TorchServe: the lines ``context.metrics.add_metric`` would log, all
    of one flush in one write. (add_metric logs and flushes each metric on its own, and the frontend
    wakes up for each line: measured with benchmarks/metrics.py, that cost the demo 12% of its
    throughput at 16 connections.)"""
    from ts.metrics.metric_type_enum import MetricTypes

    for metric in ALL:  # the frontend exports a metric only as its config declares it: say so once
        try:
            declared = list(ts_metrics.get_metric(metric.name, MetricTypes(metric.kind)).dimension_names)
        except Exception:
            declared = None
        if declared != list(metric.dimensions):
            log.warning(
                "%s %s is declared with dimensions %s in TorchServe's metrics config, not %s: it will not "
                "be exported (ckptserve serve passes serving/torchserve/metrics.yaml)",
                metric.kind,
                metric.name,
                declared,
                list(metric.dimensions),
            )
    host = socket.gethostname()

    def emit(observations: Sequence[Observation]) -> None:
        # TorchServe 0.12.0's line (ts.metrics.caching_metric), as its frontend parses it.
        tail = f"|#hostname:{host},{int(time.time())}"
        _metric_lines.info(
            "\n".join(
                f"[METRICS]{m.name}.{m.unit}:{value}"
                f"|#{','.join(f'{n}:{v}' for n, v in zip(m.dimensions, dims, strict=True))}"
                f"|#type:{m.kind.upper()}{tail}"
                for m, value, dims in observations
            )
        )

    return emit


# Headers only a client or TorchServe's inference routes put on a job (0.12.0, InferenceRequestHandler
# adds explain and url_path); its management describe job copies a GET's headers and adds describe.
_INFERENCE_ONLY_HEADERS = frozenset({"content-type", "explain", "url_path"})


def _is_describe(context: Any, idx: int, row: dict[str, Any]) -> bool:
    """Whether this job is the management API's describe, which a client's "describe" header must not fake.

    TorchServe forwards every client header to the worker and sends a describe job as an ordinary
    request, so the header alone proves nothing. What a client cannot forge: a describe job has no
    parameters, and an HTTP inference job without parameters exists only when the frontend decoded a
    form, which it does only for a request with a Content-Type header, forwarded with the rest; gRPC
    inference forwards no client headers at all. (So a management GET that sends a Content-Type
    header gets no describe: our clients and the gRPC gateway send none.)
    """
    headers = context.get_all_request_header(idx) or {}
    if headers.get("describe") != "True" or row:
        return False
    return not any(str(name).lower() in _INFERENCE_ONLY_HEADERS for name in headers)


def _drop_per_batch_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Backend received inference")


def _quiet_per_batch_log() -> None:
    # TorchServe's worker logs one line per batch on the root logger; the frontend then reads,
    # filters and discards it. Dropping it at the source saves both processes the work.
    for handler in logging.getLogger().handlers:
        if _drop_per_batch_line not in handler.filters:
            handler.addFilter(_drop_per_batch_line)


def _body(row: dict[str, Any]) -> Any:
    # TorchServe passes the payload as "data" (gRPC / form field) or "body" (raw HTTP body).
    for key in ("data", "body"):
        if row.get(key) is not None:
            return row[key]
    return next(iter(row.values()), None) if row else None


def _content_type(context: Any, idx: int, row: dict[str, Any]) -> str | None:
    headers = context.get_all_request_header(idx) or {}
    for key in ("data", "body"):
        if key in row and isinstance(headers.get(key), dict):
            content_type: str | None = headers[key].get("content-type")
            return content_type
    return headers.get("Content-Type") or headers.get("content-type")
