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

from serving.errors import CheckpointError, CkptServeError
from serving.loader import checkpoint_info, load_model
from serving.logs import JsonFormatter, install_json_logs, log_failed_requests, request_scope
from serving.metrics import ALL, Emit, HandlerMetrics, Observation
from serving.reload import ModelSlot, Reloader, check_forward, check_weights_finite, sample_input
from serving.service import InferenceService
from serving.spec import ModelSpec, parse_spec

log = logging.getLogger("ckptserve.handler")
# The load-error line goes through the root logger: it stays plain text with json_logs too, because
# `ckptserve serve` finds the reason after the marker in the worker log.
startup_log = logging.getLogger()
# Metric lines for TorchServe's frontend: outside "ckptserve", so json_logs never reformats them.
_metric_lines = logging.getLogger("ts.metrics.ckptserve")
LOAD_ERROR_MARKER = "ckptserve-load-error:"
CHECKPOINT_HEADER = "x-ckptserve-checkpoint"  # on every answer: which checkpoint produced it
BATCH_HEADER = "x-ckptserve-batch-size"  # how many requests shared the forward pass


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
        # The management API's describe job may share a batch with predictions; only it (a request
        # without any body) is answered with describe, so a client header cannot trigger it.
        describe = {idx for idx, row in enumerate(data) if _is_describe(context, idx, row)}
        if describe:
            answers = self._infer([row for i, row in enumerate(data) if i not in describe], context, describe)
            return [self.describe() if i in describe else answers.pop(0) for i in range(len(data))]
        return self._infer(data, context, set())

    def _infer(self, data: list[dict[str, Any]], context: Any, skipped: set[int]) -> list[Any]:
        if not data:
            return []
        assert self.service is not None, "handle() before initialize()"
        # Positions in TorchServe's batch (its per-request status slots) of the rows we serve.
        slots = [i for i in range(len(data) + len(skipped)) if i not in skipped]
        requests = [
            (_body(row), _content_type(context, slot, row)) for slot, row in zip(slots, data, strict=True)
        ]
        with self._log_scope(context):
            replies, report = self.service.infer(requests)
        self.metrics.batch(report)
        if self.json_logs:  # structured logs go to a log store: there, one line per failed request pays off
            log_failed_requests(log, [context.get_request_id(i) for i in slots], replies)
        served_by, batch = _checkpoint_label(report.model), str(len(replies))
        for idx, reply in zip(slots, replies, strict=True):
            context.set_response_status(reply.status, reply.phrase, idx)
            context.set_response_content_type(idx, reply.content_type)
            context.set_response_header(idx, BATCH_HEADER, batch)
            if served_by:
                context.set_response_header(idx, CHECKPOINT_HEADER, served_by)
        return [reply.body for reply in replies]

    # --- describe -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Shown as ``customizedMetadata`` by ``GET /models/NAME?customized=true``."""
        assert self.spec is not None and self.slot is not None
        info = self.slot.info
        return {
            "checkpoint": {k: v for k, v in info.to_dict().items() if k != "metadata"},
            "checkpoint_metadata": info.metadata,
            "reload": self.reloader.status.to_dict() if self.reloader else None,
            "input": {
                "name": self.spec.input.name,
                "shape": list(self.spec.input.shape),
                "dtype": str(self.spec.input.dtype).removeprefix("torch."),
            },
            "outputs": self._outputs(),
            "postprocess": self.spec.postprocess.kind,
            "threads": self.threads,
            "pid": os.getpid(),
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
        self.threads = spec.threads or max(
            1, (os.cpu_count() or 1) // int(yaml_config.get("minWorkers", 1) or 1)
        )
        # Each worker is its own process: torch's default (all cores each) makes workers fight.
        torch.set_num_threads(self.threads)
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
            # Training may not have written anything yet: wait for the first checkpoint (an empty
            # directory is not an error) within TorchServe's start-up budget, keeping a margin.
            patience = max(0.0, float(yaml_config.get("startupTimeout", 120)) - 15.0)
            deadline = time.monotonic() + (0.0 if spec.checkpoint is not None else patience)
            waiting = False
            while (model := self.reloader.initial_model(lambda m: _gate(m, sample))) is None:
                if self.reloader.status.rejected or time.monotonic() >= deadline:
                    break
                if not waiting:
                    log.info(
                        "waiting up to %.0fs for a first checkpoint in %s", patience, spec.reload.watch_dir
                    )
                waiting = True
                time.sleep(spec.reload.poll_interval_s)
        if model is None:
            model = self._fallback(load)
        self.slot = ModelSlot(model, sample)
        self.service = InferenceService(
            self.slot.use,
            input_spec=spec.input,
            postprocess=spec.postprocess,
            model_name=model_name,
            model_version=manifest.get("model", {}).get("modelVersion"),
        )
        self._warm_up()
        if self.reloader is not None:
            self.reloader.start(self.slot)
        info = self.slot.info
        log.info(
            "ready: %r (epoch %s, sha256 %s) on %s, %d thread(s), %.2fs%s",
            info.path,
            info.epoch,
            info.sha256[:12],
            info.device,
            self.threads,
            time.perf_counter() - started,
            f", watching {spec.reload.watch_dir}" if self.reloader else "",
        )
        self.metrics.started(info, reloads=self.reloader is not None)
        self.initialized = True

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
            return load(self.spec.checkpoint)
        rejected = self.reloader.status.recent_rejections if self.reloader else []
        raise CheckpointError(
            f"No valid checkpoint in {str(self.spec.reload.watch_dir)!r} yet"
            + (
                f"; rejected: {'; '.join(f'{Path(r.path).name}: {r.reason}' for r in rejected)}"
                if rejected
                else "."
            ),
            hint="Let training write one there (save_checkpoint writes atomically); the worker retries.",
        )

    def _warm_up(self) -> None:
        # One forward at start-up: first-call costs are paid here, and a model that cannot run its
        # declared input shape fails now, with the reason, instead of on the first request.
        assert self.spec is not None and self.service is not None
        shape = [1, *(d if d > 0 else 1 for d in self.spec.input.shape)]
        sample = torch.zeros(shape, dtype=self.spec.input.dtype)
        reply = self.service.infer([({"instances": sample.tolist()}, "application/json")])[0][0]
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


def _gate(model: torch.nn.Module, sample: torch.Tensor) -> None:
    check_weights_finite(model.state_dict())
    check_forward(model, model, sample, None)


def _checkpoint_label(model: torch.nn.Module | None) -> str:
    if model is None:
        return ""
    info = checkpoint_info(model)
    return f"epoch={info.epoch if info.epoch is not None else '-'}@{info.sha256[:12]}"


def _is_describe(context: Any, idx: int, row: dict[str, Any]) -> bool:
    return context.get_request_header(idx, "describe") == "True" and _body(row) is None


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
