"""Prototype: ckptserve's handler in TorchServe's asynchronous worker mode, batching inside the worker.

With ``asyncCommunication: true`` TorchServe streams every job to a worker without waiting for
answers and calls an async ``handle`` per job (batchSize 1). Each call queues its request; one
batcher runs a forward on everything queued at that moment (at most ``max_batch``), never waiting
for more, in one executor thread, while new requests queue for the next forward. A lone client
gets one forward of latency; under load the batches fill by themselves.

Benchmark only (benchmarks/async_batching.py packages it in place of handlers/checkpoint_handler.py).
"""

from __future__ import annotations

import asyncio
import copy
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import create_predict_response, retrieve_msg
from ts.service import Service

from handlers.checkpoint_handler import (
    BATCH_HEADER,
    BATCH_REQUESTS_HEADER,
    CHECKPOINT_HEADER,
    CheckpointHandler,
    _body,
    _content_type,
    _is_describe,
)
from serving.loader import checkpoint_info


class AsyncBatchingHandler(CheckpointHandler):
    """One per worker: ``handle`` is a coroutine per job; ``_drain`` batches what is queued."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        section = (getattr(context, "model_yaml_config", None) or {}).get("async_batching") or {}
        self.max_batch = int(section.get("max_batch", 8))
        self.inline = bool(section.get("inline", False))
        # "pair": the answer as a first stream frame ("true"), then an empty last one ("false"): the
        # frontend answers HTTP only from a first frame and forgets a job only on "false".
        # "none": one frame without ts_stream_next (the frontend never forgets the job: a leak).
        self.frames = str(section.get("frames", "pair"))
        if "switch_interval_s" in section:  # the worker is a pipeline of threads: hand the GIL over sooner
            sys.setswitchinterval(float(section["switch_interval_s"]))
        self.queue: list[tuple[Any, Any, asyncio.Future[Any]]] = []
        self.drainer: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ckptserve-forward")
        if section.get("lean"):  # replace TorchServe's AsyncService (built after initialize) with _LeanLoop
            # the worker runs ts/model_service_worker.py as __main__
            worker = sys.modules["__main__"]
            assert hasattr(worker, "AsyncService"), "not in TorchServe's worker"
            worker.AsyncService = lambda service: SimpleNamespace(run=lambda: _lean_run(service, self))

    async def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:  # type: ignore[override]
        # batchSize 1: one job, with its own deep-copied context (AsyncService.predict)
        row = data[0]
        if _is_describe(context, 0, row):
            return [self.describe()]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.queue.append((row, context, future))
        if self.drainer is None or self.drainer.done():
            self.drainer = loop.create_task(self._drain())
        body = await future
        if self.frames == "none":
            return [body]
        send_intermediate_predict_response([body], context.request_ids, "Intermediate", 200, context)
        return [b""]  # predict() turns the "true" left on the context into "false": the job is done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            try:
                if self.inline:
                    bodies = self._forward(batch)
                else:
                    bodies = await loop.run_in_executor(self.executor, self._forward, batch)
            except Exception as exc:  # never leave a job unanswered
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), body in zip(batch, bodies, strict=True):
                future.set_result(body)
            if self.inline:
                await asyncio.sleep(0)  # let the answered coroutines send before the next forward

    def _forward(self, batch: list[tuple[Any, Any, asyncio.Future[Any]]]) -> list[bytes]:
        assert self.session is not None
        requests = [(_body(row), _content_type(ctx, 0, row)) for row, ctx, _ in batch]
        replies, report = self.session.infer(requests, [ctx.get_request_id(0) for _, ctx, _ in batch])
        served_by = checkpoint_info(report.model).label if report.model is not None else ""
        instances, grouped = str(report.batch_size), str(len(batch))
        for (_, ctx, _), reply in zip(batch, replies, strict=True):
            ctx.set_response_status(reply.status, reply.phrase, 0)
            ctx.set_response_content_type(0, reply.content_type)
            if report.model is not None:
                ctx.set_response_header(0, BATCH_HEADER, instances)
                ctx.set_response_header(0, BATCH_REQUESTS_HEADER, grouped)
            if served_by:
                ctx.set_response_header(0, CHECKPOINT_HEADER, served_by)
        return [reply.body for reply in replies]


def _lean_run(service: Any, handler: AsyncBatchingHandler) -> str | None:
    """TorchServe's AsyncService.run, lean: one thread reads jobs, the main thread runs a batch of what
    is queued (no wait) through the synchronous handler and writes its answer frames in one write.
    (A function, not a class: TorchServe wants exactly one class in a handler module.)"""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sock, base = service.cl_socket, service.context

    def receive() -> None:
        while True:
            cmd, msg = retrieve_msg(sock)
            if cmd == b"I":
                for job in msg:
                    jobs.put(job)

    threading.Thread(target=receive, daemon=True, name="ckptserve-receive").start()
    while True:
        batch = [jobs.get()]
        while len(batch) < handler.max_batch:
            try:
                batch.append(jobs.get_nowait())
            except queue.Empty:
                break
        headers, rows, ids = Service.retrieve_data_for_inference(batch)
        context = copy.copy(base)
        context.request_ids, context.request_processor = ids, headers
        bodies = CheckpointHandler.handle(handler, rows, context)
        if handler.frames == "none":  # measures the cost of the pair; leaks every job in the frontend
            sock.sendall(create_predict_response(bodies, ids, "Prediction success", 200, context))
            continue
        # "full": a complete HTTP answer, then "false" (whose stray end-of-stream write the frontend's
        # encoder refuses): what one frame would cost if the frontend took "false" on a first answer
        first = create_predict_response(
            bodies, ids, "Prediction success", 200, context, handler.frames != "full"
        )
        if handler.frames == "full":
            for idx in ids:
                context.set_response_header(idx, "ts_stream_next", "true")
        last = create_predict_response([b""] * len(bodies), ids, "Prediction success", 200, context)
        sock.sendall(first + last)
