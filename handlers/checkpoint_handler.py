"""TorchServe custom handler: a thin adapter from TorchServe's worker API to ckptserve's ``serving`` package.

The only module that knows TorchServe: it reads the worker's context (model_dir, gpu_id, the
model-config.yaml), builds the model through ``serving``, and maps replies back to per-request
statuses and content types. Everything else lives in ``serving/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from serving.codecs import encode_error
from serving.errors import CheckpointError, CkptServeError, ModelNotReadyError
from serving.loader import checkpoint_info, load_model
from serving.logs import JsonFormatter, install_json_logs, log_failed_requests, request_scope
from serving.metrics import ALL, Emit, HandlerMetrics, Observation
from serving.reload import ModelSlot, Reloader, check_forward, check_weights_finite, sample_input
from serving.reload.watcher import Rejection
from serving.service import InferenceService
from serving.spec import ModelSpec, missing_checkpoint_error, parse_spec
from serving.threads import apply_threads, plan_threads
from serving.wire import BATCH_HEADER, BATCH_REQUESTS_HEADER, CHECKPOINT_HEADER, LOAD_ERROR_MARKER

log = logging.getLogger("ckptserve.handler")
# The load-error line goes through the root logger: it stays plain text with json_logs too, because
# `ckptserve serve` finds the reason after the marker in the worker log.
startup_log = logging.getLogger()
# Metric lines for TorchServe's frontend: outside "ckptserve", so json_logs never reformats them.
_metric_lines = logging.getLogger("ts.metrics.ckptserve")


class CheckpointHandler:
    """One instance per TorchServe worker process."""

    def __init__(self) -> None:
        self.initialized = False
        self.spec: ModelSpec | None = None
        self.service: InferenceService | None = None
        self.slot: ModelSlot | None = None
        self.reloader: Reloader | None = None
        self.threads = 1
        self.metrics = HandlerMetrics(None, "model")
        self.json_logs = False

    # --- TorchServe entry points ----------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        _quiet_per_batch_log()
        try:
            self._initialize(context)
        except CkptServeError as err:
            # ckptserve serve reads this line from the worker log to fail fast with the real reason.
            startup_log.error(
                "%s %s%s", LOAD_ERROR_MARKER, err.message, f" | what to do: {err.hint}" if err.hint else ""
            )
            raise
        except Exception as exc:
            startup_log.exception("%s %s: %s", LOAD_ERROR_MARKER, type(exc).__name__, exc)
            raise

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        # Only the management API's describe job is answered with describe, never a client's
        # "describe" header (see _is_describe); the rest of a batch is served as usual.
        describe = {idx for idx, row in enumerate(data) if _is_describe(context, idx, row)}
        if describe:
            answers = self._infer([row for i, row in enumerate(data) if i not in describe], context, describe)
            return [self.describe() if i in describe else answers.pop(0) for i in range(len(data))]
        return self._infer(data, context, set())

    def _infer(self, data: list[dict[str, Any]], context: Any, skipped: set[int]) -> list[Any]:
        if not data:
            return []
        # Positions in TorchServe's batch (its per-request status slots) of the rows we serve.
        slots = [i for i in range(len(data) + len(skipped)) if i not in skipped]
        if self.service is None:
            return self._not_ready(context, slots)
        requests = [
            (_body(row), _content_type(context, slot, row)) for slot, row in zip(slots, data, strict=True)
        ]
        with self._log_scope(context):
            replies, report = self.service.infer(requests)
        self.metrics.batch(report)
        if self.json_logs:  # structured logs go to a log store: there, one line per failed request pays off
            log_failed_requests(log, [context.get_request_id(i) for i in slots], replies)
        served_by = _checkpoint_label(report.model)
        instances, grouped = str(report.batch_size), str(len(slots))
        for idx, reply in zip(slots, replies, strict=True):
            context.set_response_status(reply.status, reply.phrase, idx)
            context.set_response_content_type(idx, reply.content_type)
            context.set_response_header(idx, BATCH_HEADER, instances)
            context.set_response_header(idx, BATCH_REQUESTS_HEADER, grouped)
            if served_by:
                context.set_response_header(idx, CHECKPOINT_HEADER, served_by)
        return [reply.body for reply in replies]

    def _not_ready(self, context: Any, slots: list[int]) -> list[Any]:
        """503 for every request while the worker waits for its first checkpoint."""
        assert self.reloader is not None, "handle() before initialize()"
        rejected = self.reloader.status.recent_rejections
        error = ModelNotReadyError(
            f"No checkpoint is served yet: waiting for the first one in {str(self.reloader.watch_dir)!r}"
            + (f"; rejected: {_rejections(rejected)}" if rejected else "."),
            hint="Let training write a checkpoint there; it is served within one poll interval.",
        )
        body = encode_error(error)
        for idx in slots:
            context.set_response_status(error.http_status, type(error).__name__, idx)
            context.set_response_content_type(idx, "application/json")
        return [body for _ in slots]

    # --- describe -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Shown as ``customizedMetadata`` by ``GET /models/NAME?customized=true``."""
        assert self.spec is not None
        if self.slot is None:  # waiting for the first checkpoint: not ready
            assert self.reloader is not None
            return {
                "state": "waiting",
                "waiting_for": str(self.reloader.watch_dir),
                "checkpoint": None,
                "reload": self.reloader.status.to_dict(),
                "input": self._input(),
                "pid": os.getpid(),
            }
        info = self.slot.info
        return {
            "state": "serving",
            "checkpoint": {k: v for k, v in info.to_dict().items() if k != "metadata"},
            "checkpoint_metadata": info.metadata,
            "reload": self.reloader.status.to_dict() if self.reloader else None,
            "input": self._input(),
            "outputs": self._outputs(),
            "postprocess": self.spec.postprocess.kind,
            "threads": self.threads,
            "pid": os.getpid(),
        }

    def _input(self) -> dict[str, Any]:
        assert self.spec is not None
        return {
            "name": self.spec.input.name,
            "shape": list(self.spec.input.shape),
            "dtype": str(self.spec.input.dtype).removeprefix("torch."),
        }

    def _outputs(self) -> list[dict[str, Any]]:
        """OIP outputs of one request (batch axis -1), for the gRPC gateway's ModelMetadata."""
        assert self.spec is not None and self.slot is not None
        post, per_instance = self.spec.postprocess, list(self.slot.output_shape[1:])
        if post.kind == "topk":
            k = min(post.k, per_instance[-1])
            kinds = {"topk_indices": "INT64", "topk_scores": "FP32", "topk_labels": "BYTES"}
            names = list(kinds) if post.labels else list(kinds)[:2]
            return [{"name": n, "datatype": kinds[n], "shape": [-1, k]} for n in names]
        if -1 in self.spec.input.shape:  # the warm-up sample fixed -1 axes to 1: sizes may vary
            per_instance = [-1] * len(per_instance)
        # Floating outputs are served as float32 (serving.service casts them).
        return [{"name": post.output_name, "datatype": "FP32", "shape": [-1, *per_instance]}]

    # --- start-up -------------------------------------------------------------------------------

    def _initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir") or "."
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.spec = spec = parse_spec(yaml_config.get("handler"), model_dir=model_dir)
        manifest = getattr(context, "manifest", None) or {}
        model_name = manifest.get("model", {}).get("modelName") or getattr(context, "model_name", "model")
        # Metrics are labelled with the name TorchServe registered, as its own metrics are.
        registered = getattr(context, "model_name", None) or model_name
        if spec.json_logs:
            self.json_logs = True
            install_json_logs(JsonFormatter(registered, self._served_checkpoint))
        ts_metrics = getattr(context, "metrics", None)
        self.metrics = HandlerMetrics(
            _torchserve_emit(ts_metrics) if spec.metrics and ts_metrics is not None else None, registered
        )
        # Each worker is its own process: torch's default (all cores each) makes workers fight.
        plan = plan_threads(yaml_config, threads=spec.threads, gpus=_gpu_count(props.get("gpu_id")))
        apply_threads(plan)
        self.threads = plan.intra_op
        log.info("threads: %s", plan.to_dict())
        started = time.perf_counter()
        gpu_id = props.get("gpu_id")
        sample = sample_input(spec.input.shape, spec.input.dtype)

        def load(path: Path, sha256: str | None = None) -> torch.nn.Module:
            return load_model(
                spec.architecture,
                path,
                architecture_kwargs=spec.architecture_kwargs,
                device=spec.device,
                gpu_id=gpu_id,
                dtype=spec.dtype,
                strict=spec.strict,
                trust_pickle=spec.trust_pickle,
                state_dict_key=spec.state_dict_key,
                safe_globals=spec.safe_globals,
                search_paths=[model_dir],
                sha256=sha256,
            )

        model = None
        if spec.reload.watch_dir is not None:
            self.reloader = Reloader(spec, load, self._on_reload)
            model = self.reloader.initial_model(lambda m: _gate(m, sample))
            configured = spec.checkpoint is not None and spec.checkpoint.exists()
            if model is None and not configured and not self.reloader.status.rejected:
                # Training has written nothing yet. Waiting here would outlast TorchServe's start-up
                # timeout (it kills the worker): return now, answer 503, and let the reloader's
                # thread serve the first checkpoint that lands.
                log.info("waiting for the first checkpoint in %s", spec.reload.watch_dir)
                self.reloader.start_waiting(
                    lambda m: _gate(m, sample),
                    lambda m: self._serve(m, sample, model_name, manifest, started),
                )
                self.initialized = True
                return
        if model is None:
            model = self._fallback(load)
        slot = self._serve(model, sample, model_name, manifest, started)
        if self.reloader is not None:
            self.reloader.start(slot)
        self.initialized = True

    def _serve(
        self, model: torch.nn.Module, sample: torch.Tensor, model_name: str, manifest: Any, started: float
    ) -> ModelSlot:
        """Warm ``model`` up and make it the served one (at start-up, or when the first checkpoint lands)."""
        assert self.spec is not None
        slot = ModelSlot(model, sample)
        service = InferenceService(
            slot.use,
            input_spec=self.spec.input,
            postprocess=self.spec.postprocess,
            model_name=model_name,
            model_version=manifest.get("model", {}).get("modelVersion"),
        )
        self._warm_up(service)
        self.slot, self.service = slot, service  # the service last: handle() serves once it is set
        info = slot.info
        log.info(
            "ready: %r (epoch %s, sha256 %s) on %s, %d thread(s), %.2fs%s",
            info.path,
            info.epoch,
            info.sha256[:12],
            info.device,
            self.threads,
            time.perf_counter() - started,
            f", watching {self.spec.reload.watch_dir}" if self.reloader else "",
        )
        self.metrics.started(info, reloads=self.reloader is not None)
        return slot

    def _on_reload(self, result: str, seconds: float) -> None:
        # Called by the reloader's thread after each attempt; after a success the slot holds the new model.
        self.metrics.reloaded(result, seconds, self.slot.info if self.slot and result == "success" else None)

    def _served_checkpoint(self) -> str | None:
        return _checkpoint_label(self.slot.model) if self.slot is not None else None

    def _log_scope(self, context: Any) -> contextlib.AbstractContextManager[None]:
        if not self.json_logs:
            return contextlib.nullcontext()
        ids = getattr(context, "request_ids", None) or {}
        return request_scope(ids.values() if isinstance(ids, dict) else [ids])

    def _fallback(self, load: Any) -> torch.nn.Module:
        """The configured checkpoint, when no watched one is usable (or nothing is watched)."""
        assert self.spec is not None
        if self.spec.checkpoint is not None and (self.reloader is None or self.spec.checkpoint.exists()):
            if not self.spec.checkpoint.exists():
                raise missing_checkpoint_error(self.spec)
            return load(self.spec.checkpoint)
        rejected = self.reloader.status.recent_rejections if self.reloader else []
        raise CheckpointError(
            f"No valid checkpoint in {str(self.spec.reload.watch_dir)!r}: rejected: {_rejections(rejected)}",
            hint="Fix what the rejections name, or let training write a valid checkpoint there.",
        )

    def _warm_up(self, service: InferenceService) -> None:
        # One forward at start-up: first-call costs are paid here, and a model that cannot run its
        # declared input shape fails now, with the reason, instead of on the first request.
        assert self.spec is not None
        shape = [1, *(d if d > 0 else 1 for d in self.spec.input.shape)]
        sample = torch.zeros(shape, dtype=self.spec.input.dtype)
        reply = service.infer([({"instances": sample.tolist()}, "application/json")])[0][0]
        if reply.error is not None:
            raise CkptServeError(
                f"The warm-up forward on input shape {shape} failed: {reply.error.message}",
                hint="Check handler.input.shape in model-config.yaml against the architecture.",
            )


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


def _rejections(rejected: Sequence[Rejection]) -> str:
    return "; ".join(f"{Path(r.path).name}: {r.reason}" for r in rejected)


def _gpu_count(gpu_id: Any) -> int:
    # TorchServe's default starts one worker per GPU when it sees any (gpu_id is None on CPU).
    return torch.cuda.device_count() if gpu_id is not None else 0


def _gate(model: torch.nn.Module, sample: torch.Tensor) -> None:
    check_weights_finite(model.state_dict())
    check_forward(model, model, sample, None)


def _checkpoint_label(model: torch.nn.Module | None) -> str:
    if model is None:
        return ""
    return checkpoint_info(model).label


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
            return headers[key].get("content-type")
    return headers.get("Content-Type") or headers.get("content-type")
