"""One served model per worker, runtime neutral: spec -> load -> gate -> slot -> service -> reloader.

A runtime adapter (the TorchServe handler, or any other server) opens a ``ModelSession`` with what its
context knows, passes each batch to ``infer`` and shows ``describe``; everything between lives here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.codecs import encode_error
from serving.errors import CheckpointError, CkptServeError, ModelNotReadyError
from serving.loader import CheckpointInfo, load_model
from serving.logs import (
    JsonFormatter,
    install_json_logs,
    log_failed_requests,
    request_scope,
    uninstall_json_logs,
)
from serving.metrics import Emit, HandlerMetrics
from serving.reload import ModelSlot, Reloader, check_forward, check_weights_finite, sample_input
from serving.reload.watcher import Rejection
from serving.service import BatchReport, InferenceService, Reply
from serving.spec import ModelSpec, missing_checkpoint_error
from serving.threads import ThreadPlan, apply_threads, plan_threads
from serving.wire import JSON_TYPE

# The worker's own lines ("ready: ...", "request failed: ...") keep the logger name that log queries
# (and the JSON-log test) select them by, whichever runtime hosts the session.
log = logging.getLogger("ckptserve.handler")

Request = tuple[Any, str | None]  # (body, content type), as InferenceService takes them


class ModelSession:
    """The served model of one worker: ``open`` it, then ``infer``, ``describe``, and ``close``.

    With a watched directory that holds nothing yet, ``open`` returns at once and the session waits:
    ``infer`` answers ``ModelNotReadyError`` (503) until the reloader's thread serves the first
    checkpoint that lands.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        model_dir: str | Path,
        gpu_id: int | None,
        model_name: str,
        model_version: str | None,
        metrics: HandlerMetrics,
        threads: ThreadPlan,
    ) -> None:
        """Use ``open``: this only stores the parts; nothing is loaded or started."""
        self.spec = spec
        self.model_dir = str(model_dir)
        self.gpu_id = gpu_id
        self.model_name = model_name
        self.model_version = model_version
        self.metrics = metrics
        self.threads = threads
        self.reloader: Reloader | None = None
        self.slot: ModelSlot | None = None
        self.service: InferenceService | None = None
        self._sample = sample_input(spec.input.shape, spec.input.dtype)
        self._gated: tuple[nn.Module, tuple[int, ...]] | None = None  # the model the gate passed last
        self._json_logs = False

    @classmethod
    def open(
        cls,
        spec: ModelSpec,
        *,
        model_dir: str | Path = ".",
        gpu_id: int | None = None,
        model_name: str = "model",
        model_version: str | None = None,
        metrics_name: str | None = None,
        emit: Emit | None = None,
        threads: ThreadPlan | None = None,
        startup_budget_s: float | None = None,
    ) -> ModelSession:
        """Load, gate and warm up the start-up model (or start waiting for one) and start the reloader.

        ``model_dir``: where relative paths and architecture modules are found. ``gpu_id``: the
        runtime's device for this worker (None on CPU). ``model_name``/``model_version``: what replies
        carry; ``metrics_name``: the name metrics and JSON logs are labelled with (default
        ``model_name``). ``emit``: where metric observations go (None, or ``spec.metrics`` false: off).
        ``threads``: the torch thread plan (default: planned for this process, see serving.threads).
        ``startup_budget_s``: how long the runtime lets start-up take before it kills the worker (None:
        no limit). Raises the project's typed errors when no model can be served.
        """
        label = metrics_name or model_name
        session = cls(
            spec,
            model_dir=model_dir,
            gpu_id=gpu_id,
            model_name=model_name,
            model_version=model_version,
            metrics=HandlerMetrics(emit if spec.metrics else None, label),
            threads=threads or plan_threads(None, threads=spec.threads, gpus=gpu_count(gpu_id)),
        )
        if spec.json_logs:
            session._json_logs = True
            install_json_logs(JsonFormatter(label, session.served_label))
        try:
            session._start(startup_budget_s)
        except BaseException:
            session.close()  # no reloader or metrics thread outlives a start-up that failed
            raise
        return session

    # --- serving --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a model is served (False while waiting for the first checkpoint)."""
        return self.service is not None

    @property
    def served(self) -> CheckpointInfo | None:
        return self.slot.info if self.slot is not None else None

    def served_label(self) -> str | None:
        """``epoch=N@sha`` of the served checkpoint, for log lines (None while waiting)."""
        return self.slot.info.label if self.slot is not None else None

    def infer(
        self, requests: Sequence[Request], request_ids: Sequence[str | None] = ()
    ) -> tuple[list[Reply], BatchReport]:
        """One Reply per request, in order, and what the batch cost. ``report.model`` is the model that
        ran the batch: None when nothing is served yet (every reply is then a 503)."""
        service = self.service
        if service is None:
            return self._not_ready(len(requests)), BatchReport()
        ids = [i for i in request_ids if i is not None]
        with request_scope(ids) if self._json_logs else contextlib.nullcontext():
            replies, report = service.infer(requests)
        self.metrics.batch(report)
        if self._json_logs:  # structured logs go to a log store: there, one line per failed request pays off
            log_failed_requests(log, request_ids, replies)
        return replies, report

    def _not_ready(self, count: int) -> list[Reply]:
        assert self.reloader is not None, "no service without a reloader: open() raised"
        rejected = self.reloader.status.recent_rejections
        error = ModelNotReadyError(
            f"No checkpoint is served yet: waiting for the first one in {str(self.reloader.watch_dir)!r}"
            + (f"; rejected: {_rejections(rejected)}" if rejected else "."),
            hint="Let training write a checkpoint there; it is served within one poll interval.",
        )
        body = encode_error(error)
        return [Reply(body, JSON_TYPE, error.http_status, error) for _ in range(count)]

    def close(self) -> None:
        """Stop the reloader and the metrics reporter (after a last flush); undo JSON logs."""
        if self.reloader is not None:
            self.reloader.stop()
        self.metrics.stop()
        if self._json_logs:
            uninstall_json_logs()
            self._json_logs = False

    # --- describe -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The model's state, checkpoint, reload status, input and (OIP) outputs, as runtimes show it."""
        slot, reloader = self.slot, self.reloader
        if slot is None:
            assert reloader is not None, "no slot without a reloader: open() raised"
            return {
                "state": "waiting",
                "waiting_for": str(reloader.watch_dir),
                "checkpoint": None,
                "reload": reloader.status.to_dict(),
                "input": self._input(),
                "pid": os.getpid(),
            }
        info = slot.info
        return {
            "state": "serving",
            "checkpoint": {k: v for k, v in info.to_dict().items() if k != "metadata"},
            "checkpoint_metadata": info.metadata,
            "reload": reloader.status.to_dict() if reloader else None,
            "input": self._input(),
            "outputs": self._outputs(slot),
            "postprocess": self.spec.postprocess.kind,
            "threads": self.threads.intra_op,
            "pid": os.getpid(),
        }

    def _input(self) -> dict[str, Any]:
        shape = self.spec.input
        return {
            "name": shape.name,
            "shape": list(shape.shape),
            "dtype": str(shape.dtype).removeprefix("torch."),
        }

    def _outputs(self, slot: ModelSlot) -> list[dict[str, Any]]:
        """OIP outputs of one request (batch axis -1), for the gRPC gateway's ModelMetadata."""
        post, per_instance = self.spec.postprocess, list(slot.output_shape[1:])
        if post.kind == "topk":
            k = min(post.k, per_instance[-1])
            kinds = {"topk_indices": "INT64", "topk_scores": "FP32", "topk_labels": "BYTES"}
            names = list(kinds) if post.labels else list(kinds)[:2]
            return [{"name": n, "datatype": kinds[n], "shape": [-1, k]} for n in names]
        if -1 in self.spec.input.shape:  # the gate's sample fixed -1 axes to 1: sizes may vary
            per_instance = [-1] * len(per_instance)
        # Floating outputs are served as float32 (serving.service casts them).
        return [{"name": post.output_name, "datatype": "FP32", "shape": [-1, *per_instance]}]

    # --- start-up -------------------------------------------------------------------------------

    def _start(self, budget_s: float | None) -> None:
        # Each worker is its own process: torch's default (all cores each) makes workers fight.
        apply_threads(self.threads)
        log.info("threads: %s", self.threads.to_dict())
        started = time.perf_counter()
        spec, model = self.spec, None
        if spec.reload.watch_dir is not None:
            self.reloader = Reloader(spec, self._load, self._on_reload)
            # Files still being written get time to settle, but never most of the start-up budget:
            # the runtime would kill the worker mid-wait (a poll interval of minutes is common).
            settle = None if budget_s is None else min(spec.reload.poll_interval_s, budget_s / 2)
            model = self.reloader.initial_model(self._check_candidate, settle_s=settle)
            configured = spec.checkpoint is not None and spec.checkpoint.exists()
            if model is None and not configured and not self.reloader.status.rejected:
                # Training has written nothing yet, and may not for hours: waiting here would outlast
                # any start-up budget. Return now, answer 503, and let the reloader's thread serve
                # the first checkpoint that lands.
                log.info("waiting for the first checkpoint in %s", spec.reload.watch_dir)
                self.reloader.start_waiting(self._check_candidate, lambda first: self._serve(first, started))
                return
        slot = self._serve(model if model is not None else self._fallback(), started)
        if self.reloader is not None:
            self.reloader.start(slot)

    def _load(self, path: Path, sha256: str | None = None) -> nn.Module:
        spec = self.spec
        return load_model(
            spec.architecture,
            path,
            architecture_kwargs=spec.architecture_kwargs,
            device=spec.device,
            gpu_id=self.gpu_id,
            dtype=spec.dtype,
            strict=spec.strict,
            trust_pickle=spec.trust_pickle,
            state_dict_key=spec.state_dict_key,
            safe_globals=spec.safe_globals,
            search_paths=[self.model_dir],
            sha256=sha256,
        )

    def _check_candidate(self, model: nn.Module) -> None:
        """A watched checkpoint at start-up: finite weights (as a reload checks), then the gate."""
        check_weights_finite(model.state_dict())
        self._gate(model)

    def _gate(self, model: nn.Module) -> tuple[int, ...]:
        """The one start-up forward check, whichever way the model came: a seeded sample of the declared
        input must give finite outputs. Its output shape is what every reload must match."""
        shape = check_forward(model, model, self._sample, None)
        self._gated = (model, shape)
        return shape

    def _serve(self, model: nn.Module, started: float) -> ModelSlot:
        """Gate (unless done), warm up and serve ``model``: at start-up, or when a first checkpoint lands."""
        gated = self._gated
        shape = gated[1] if gated is not None and gated[0] is model else self._gate(model)
        self._gated = None  # the session must not keep a model alive that a reload swaps out
        slot = ModelSlot(model, self._sample, output_shape=shape)
        service = InferenceService(
            slot.use,
            input_spec=self.spec.input,
            postprocess=self.spec.postprocess,
            model_name=self.model_name,
            model_version=self.model_version,
        )
        self._warm_up(service)
        self.slot, self.service = slot, service  # the service last: infer() serves once it is set
        info = slot.info
        log.info(
            "ready: %r (epoch %s, sha256 %s) on %s, %d thread(s), %.2fs%s",
            info.path,
            info.epoch,
            info.sha256[:12],
            info.device,
            self.threads.intra_op,
            time.perf_counter() - started,
            f", watching {self.spec.reload.watch_dir}" if self.reloader else "",
        )
        self.metrics.started(info, reloads=self.reloader is not None)
        return slot

    def _warm_up(self, service: InferenceService) -> None:
        # Not a second gate: the gate checks the model alone; this sends one request of the declared
        # shape through the whole served path (decode, batched forward, post-processing, encode), so a
        # configuration the model cannot serve (top-k over non-2-D outputs, an input the codec refuses)
        # fails start-up with the reason, and first-request costs are paid before the first client.
        shape = [1, *(d if d > 0 else 1 for d in self.spec.input.shape)]
        sample = torch.zeros(shape, dtype=self.spec.input.dtype)
        reply = service.infer([({"instances": sample.tolist()}, JSON_TYPE)])[0][0]
        if reply.error is not None:
            raise CkptServeError(
                f"The warm-up forward on input shape {shape} failed: {reply.error.message}",
                hint="Check handler.input.shape in model-config.yaml against the architecture.",
            )

    def _fallback(self) -> nn.Module:
        """The configured checkpoint, when no watched one is usable (or nothing is watched)."""
        spec, reloader = self.spec, self.reloader
        if spec.checkpoint is not None and (reloader is None or spec.checkpoint.exists()):
            if not spec.checkpoint.exists():
                raise missing_checkpoint_error(spec)
            return self._load(spec.checkpoint)
        rejected = reloader.status.recent_rejections if reloader else []
        raise CheckpointError(
            f"No valid checkpoint in {str(spec.reload.watch_dir)!r}: rejected: {_rejections(rejected)}",
            hint="Fix what the rejections name, or let training write a valid checkpoint there.",
        )

    def _on_reload(self, result: str, seconds: float) -> None:
        # Called by the reloader's thread after each attempt; after a success the slot holds the new model.
        self.metrics.reloaded(result, seconds, self.slot.info if self.slot and result == "success" else None)


def gpu_count(gpu_id: int | None) -> int:
    """GPUs the runtime starts workers for: none on CPU (``gpu_id`` None), else every visible one."""
    return torch.cuda.device_count() if gpu_id is not None else 0


def _rejections(rejected: Sequence[Rejection]) -> str:
    return "; ".join(f"{Path(r.path).name}: {r.reason}" for r in rejected)
