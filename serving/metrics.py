"""Metric names and definitions, in one place: what the handler exports and what TorchServe must declare.

Runtime-independent: nothing here imports TorchServe. The handler hands ``HandlerMetrics`` an ``Emit``
function that writes TorchServe's metric lines; tests hand it a list's ``extend``.

TorchServe's Prometheus bridge shapes a few choices (see README, "Metrics and observability"):
- every series carries the dimensions ``ModelName`` and ``Level`` (always sent explicitly, so TorchServe
  adds none of its own) plus the ones listed in ``labels``; the frontend appends ``Hostname``;
- a handler metric is exported only if ``serving/torchserve/metrics.yaml`` declares it with exactly
  these dimensions (``model_metrics_config()`` renders that section; a test compares the two);
- histograms have TorchServe's fixed buckets (0.005 ... 10), so values are sent in seconds;
- a label set, once exported, cannot be removed: the checkpoint info metric sets the replaced
  checkpoint's series to 0 instead (query ``ckptserve_checkpoint_info == 1``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from serving import errors

if TYPE_CHECKING:
    from serving.loader import CheckpointInfo
    from serving.service import BatchReport

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
MODEL_DIMENSIONS = ("ModelName", "Level")
LEVEL = "Model"  # TorchServe's own value for model-level metrics
READY_TICK_S = 5.0  # how often each worker adds its ready time to ckptserve_worker_ready_seconds_total
# Observations wait this long in the worker and go out together, written by a background thread: the
# request path only appends to a list, and the frontend reads one write per interval, not one per batch.
FLUSH_INTERVAL_S = 0.1


@dataclass(frozen=True)
class MetricDef:
    """One exported metric. ``unit`` is TorchServe's unit field (shown in HELP); the name carries the
    Prometheus unit suffix."""

    name: str
    kind: Kind
    unit: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def dimensions(self) -> tuple[str, ...]:
        return (*MODEL_DIMENSIONS, *self.labels)


PREPROCESS_SECONDS = MetricDef(
    "ckptserve_preprocess_seconds",
    "histogram",
    "seconds",
    "Decoding and validating the requests of one batch (every batch).",
)
INFERENCE_SECONDS = MetricDef(
    "ckptserve_inference_seconds",
    "histogram",
    "seconds",
    "The batched forward pass of one batch (batches with at least one valid request).",
)
POSTPROCESS_SECONDS = MetricDef(
    "ckptserve_postprocess_seconds",
    "histogram",
    "seconds",
    "Encoding the answers of one batch (batches with at least one valid request).",
)
BATCH_SIZE = MetricDef(
    "ckptserve_batch_size",
    "histogram",
    "instances",
    "Instances in the forward pass of one batch (batches with at least one valid request).",
)
REQUEST_ERRORS = MetricDef(
    "ckptserve_request_errors_total",
    "counter",
    "requests",
    "Requests answered with an error, by reason (the error type the client gets in 'type').",
    ("reason",),
)
RELOADS = MetricDef(
    "ckptserve_reloads_total",
    "counter",
    "reloads",
    "Hot-reload attempts by result: success (now served) or rejected (failed validation, never served).",
    ("result",),
)
RELOAD_SECONDS = MetricDef(
    "ckptserve_reload_seconds",
    "histogram",
    "seconds",
    "Load, validation and swap of a checkpoint that was then served.",
)
CHECKPOINT_INFO = MetricDef(
    "ckptserve_checkpoint_info",
    "gauge",
    "info",
    "1 for the checkpoint a worker of this server made live last, 0 for the ones it replaced.",
    ("epoch", "sha256"),
)
CHECKPOINT_EPOCH = MetricDef(
    "ckptserve_checkpoint_epoch",
    "gauge",
    "epoch",
    "Epoch of the live checkpoint (-1: the checkpoint records none).",
)
CHECKPOINT_WRITTEN = MetricDef(
    "ckptserve_checkpoint_written_timestamp_seconds",
    "gauge",
    "seconds",
    "When the live checkpoint was written (its saved_at metadata, else the file's mtime), Unix time.",
)
MODEL_LOAD_SECONDS = MetricDef(
    "ckptserve_model_load_seconds",
    "gauge",
    "seconds",
    "Time to load the start-up checkpoint in the worker that started last.",
)
WORKER_STARTS = MetricDef(
    "ckptserve_worker_starts_total",
    "counter",
    "starts",
    "Workers that finished initialize (ready to serve); more than minWorkers means restarts.",
)
WORKER_READY_SECONDS = MetricDef(
    "ckptserve_worker_ready_seconds_total",
    "counter",
    "seconds",
    "Seconds workers have been ready, summed over workers: its rate() is the number of ready workers.",
)

ALL: tuple[MetricDef, ...] = (
    PREPROCESS_SECONDS,
    INFERENCE_SECONDS,
    POSTPROCESS_SECONDS,
    BATCH_SIZE,
    REQUEST_ERRORS,
    RELOADS,
    RELOAD_SECONDS,
    CHECKPOINT_INFO,
    CHECKPOINT_EPOCH,
    CHECKPOINT_WRITTEN,
    MODEL_LOAD_SECONDS,
    WORKER_STARTS,
    WORKER_READY_SECONDS,
)

RELOAD_RESULTS = ("success", "rejected")
OTHER_REASON = "other"
# The error types a request can end with: every class of serving.errors. Anything else becomes
# "other", so a stray exception class can never grow the label set.
REASONS: frozenset[str] = frozenset(
    name
    for name, obj in vars(errors).items()
    if isinstance(obj, type) and issubclass(obj, errors.CkptServeError)
)


def error_reason(type_name: str) -> str:
    """The ``reason`` label for an error type name: itself when known, else ``other``."""
    return type_name if type_name in REASONS else OTHER_REASON


def model_metrics_config() -> dict[str, list[dict[str, Any]]]:
    """The ``model_metrics:`` section of TorchServe's metrics config for every metric in ``ALL``."""
    section: dict[str, list[dict[str, Any]]] = {}
    for metric in ALL:
        section.setdefault(metric.kind, []).append(
            {"name": metric.name, "unit": metric.unit, "dimensions": list(metric.dimensions)}
        )
    return section


# (metric, value, dimension values in ``metric.dimensions`` order)
Observation = tuple[MetricDef, float, tuple[str, ...]]
# Called with everything observed since the last call (in TorchServe: one write to the frontend).
Emit = Callable[[Sequence[Observation]], None]


class HandlerMetrics:
    """What one worker reports: after each batch, each reload, at start-up, and every few seconds.

    Events only record observations; a daemon thread, started with the worker (``started``), emits them
    every ``flush_interval_s`` and adds the worker's ready time every ``READY_TICK_S``. ``flush()``
    emits what is pending at once. ``emit=None`` switches everything off (handler config
    ``metrics: false``). Emitting never raises: metrics must not fail a request or a reload.
    """

    def __init__(
        self,
        emit: Emit | None,
        model_name: str,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        ready_tick_s: float = READY_TICK_S,
    ) -> None:
        self._emit = emit
        self._model = model_name
        self._flush_interval_s = flush_interval_s
        self._ready_tick_s = ready_tick_s
        self._live: tuple[str, str] | None = None  # (epoch, sha256) labels of the live checkpoint
        self._pending: list[Observation] = []
        self._lock = threading.Lock()  # batches, the reload thread and the reporter all record
        self._emitting = threading.Lock()  # one emit at a time, in order
        self._reporter: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def enabled(self) -> bool:
        return self._emit is not None

    # --- events ---------------------------------------------------------------------------------

    def batch(self, report: BatchReport) -> None:
        """One batch of requests: stage times, batch size, errors by reason."""
        if self._emit is None:
            return
        sent = [self._observe(PREPROCESS_SECONDS, report.preprocess)]
        if report.batch_size > 0:  # a batch of rejected requests ran no forward: no stage times
            sent += [
                self._observe(INFERENCE_SECONDS, report.inference),
                self._observe(POSTPROCESS_SECONDS, report.postprocess),
                self._observe(BATCH_SIZE, report.batch_size),
            ]
        if report.errors:
            reasons = Counter(error_reason(name) for name in report.errors)
            sent += [self._observe(REQUEST_ERRORS, n, reason) for reason, n in reasons.items()]
        self._send(sent)

    def reloaded(self, result: str, seconds: float, live: CheckpointInfo | None = None) -> None:
        """A hot-reload attempt; ``live`` is the checkpoint served after a success."""
        if self._emit is None:
            return
        if result not in RELOAD_RESULTS:
            log.warning("unknown reload result %r, not counted", result)
            return
        sent = [self._observe(RELOADS, 1, result)]
        if result == "success":
            sent.append(self._observe(RELOAD_SECONDS, seconds))
            if live is not None:
                sent += self._checkpoint(live)
        self._send(sent)

    def started(self, live: CheckpointInfo, *, reloads: bool = False) -> None:
        """The worker is ready: its start, its load time, its checkpoint; the reporter starts.

        Counters that alerts watch are created at 0 here: a series born at its first increment hides
        that increment from increase() and rate(). ``reloads``: the worker watches for checkpoints.
        """
        if self._emit is None:
            return
        sent = [
            self._observe(WORKER_STARTS, 1),
            self._observe(WORKER_READY_SECONDS, 0),
            self._observe(MODEL_LOAD_SECONDS, live.load_seconds),
            *self._checkpoint(live),
        ]
        if reloads:
            sent += [self._observe(RELOADS, 0, result) for result in RELOAD_RESULTS]
        self._send(sent)
        self.start()

    def _checkpoint(self, live: CheckpointInfo) -> list[Observation]:
        # The replaced checkpoint's info series drops to 0: TorchServe's bridge cannot delete a label
        # set, and a stale 1 would show two live checkpoints.
        labels = (live.epoch_label, live.sha256[:12])
        with self._lock:
            previous, self._live = self._live, labels
        sent = []
        if previous is not None and previous != labels:
            sent.append(self._observe(CHECKPOINT_INFO, 0, *previous))
        sent.append(self._observe(CHECKPOINT_INFO, 1, *labels))
        sent.append(self._observe(CHECKPOINT_EPOCH, live.epoch if live.epoch is not None else -1))
        written = written_at(live)
        if written is not None:
            sent.append(self._observe(CHECKPOINT_WRITTEN, written))
        return sent

    # --- the reporter thread -------------------------------------------------------------------

    def start(self) -> None:
        """Start the reporter thread (``started`` does): it flushes and keeps the ready clock."""
        if self._emit is None or self._reporter is not None:
            return
        self._reporter = threading.Thread(target=self._report, name="ckptserve-metrics", daemon=True)
        self._reporter.start()

    def stop(self) -> None:
        """Stop the reporter after a last flush."""
        self._stop.set()
        if self._reporter is not None:
            self._reporter.join(timeout=5)

    def flush(self) -> None:
        """Emit everything recorded so far (in the order it was recorded)."""
        with self._emitting:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending or self._emit is None:
                return
            try:
                self._emit(pending)
            except Exception:  # a metric must never fail the request or reload that reports it
                names = ", ".join(sorted({m.name for m, _, _ in pending}))
                log.exception("could not emit metrics %s", names)

    def _report(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self._flush_interval_s):
            now = time.monotonic()
            if now - last >= self._ready_tick_s:
                # Measured, not assumed: a worker starved of CPU reports the time it really had.
                self._send([self._observe(WORKER_READY_SECONDS, now - last)])
                last = now
            self.flush()
        self.flush()

    # --- recording ------------------------------------------------------------------------------

    def _observe(self, metric: MetricDef, value: float, *labels: str) -> Observation:
        return metric, float(value), (self._model, LEVEL, *labels)

    def _send(self, observations: list[Observation]) -> None:
        # TorchServe's frontend parses values with [0-9\-,.e]+: "nan" or "inf" would be a parse error.
        finite = [o for o in observations if math.isfinite(o[1])]
        with self._lock:
            self._pending.extend(finite)


def written_at(info: CheckpointInfo) -> float | None:
    """When the checkpoint was written: ``saved_at`` from save_checkpoint's metadata, else the mtime."""
    from serving.checkpoints.saver import METADATA_KEY  # here: importing this module needs no torch

    ours = info.metadata.get(METADATA_KEY) if isinstance(info.metadata, Mapping) else None
    saved = ours.get("saved_at") if isinstance(ours, Mapping) else None
    if isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved):
        return float(saved)
    try:
        return os.stat(info.path).st_mtime
    except OSError:
        return None
