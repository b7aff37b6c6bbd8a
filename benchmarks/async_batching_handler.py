"""Prototype: ckptserve's handler in TorchServe's asynchronous worker mode, batching inside the worker.

With ``asyncCommunication: true`` TorchServe streams every job to a worker without waiting for
answers and calls an async ``handle`` per job (batchSize 1). Each call queues its request; one
batcher runs a forward on everything queued at that moment (at most ``max_batch``), never waiting
for more, in one executor thread, while new requests queue for the next forward. A lone client
gets one forward of latency; under load the batches fill by themselves.

``lean: true`` replaces TorchServe's AsyncService with ``_lean_run`` (a reader thread, and the main
thread batching what is queued through the synchronous handler). Neither answers gRPC or describe
jobs correctly (they need one frame, see docs/performance.md). Benchmark only: benchmarks/async_batching.py
packages it in place of handlers/checkpoint_handler.py.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import select
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import create_predict_response, retrieve_msg
from ts.service import Service

from handlers.checkpoint_handler import (
    CheckpointHandler,
    _body,
    _content_type,
    _is_describe,
)
from serving.loader import checkpoint_info
from serving.wire import BATCH_HEADER, BATCH_REQUESTS_HEADER, CHECKPOINT_HEADER


class AsyncBatchingHandler(CheckpointHandler):
    """One per worker: ``handle`` is a coroutine per job; ``_drain`` batches what is queued."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        section = (getattr(context, "model_yaml_config", None) or {}).get("async_batching") or {}
        self.max_batch = int(section.get("max_batch", 8))
        # "pair": the answer as a first stream frame ("true"), then an empty last one ("false"): the
        # frontend answers HTTP only from a first frame and forgets a job only on "false".
        self.frames = str(section.get("frames", "pair"))
        self.linger_s = float(section.get("linger_ms", 0)) / 1000
        self.lean = section.get("lean")
        self.queue: list[tuple[Any, Any, asyncio.Future[Any]]] = []
        self.drainer: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ckptserve-forward")
        if section.get("lean"):  # replace TorchServe's AsyncService (built after initialize) with _lean_run
            # the worker runs ts/model_service_worker.py as __main__
            worker = sys.modules["__main__"]
            assert hasattr(worker, "AsyncService"), "not in TorchServe's worker"
            worker.AsyncService = lambda service: SimpleNamespace(run=lambda: _lean_run(service, self))  # type: ignore[attr-defined]

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
        send_intermediate_predict_response([body], context.request_ids, "Intermediate", 200, context)
        return [b""]  # predict() turns the "true" left on the context into "false": the job is done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            try:
                bodies = await loop.run_in_executor(self.executor, self._forward, batch)
            except Exception as exc:  # never leave a job unanswered
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), body in zip(batch, bodies, strict=True):
                future.set_result(body)

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
    inbox = _inbox(sock, jobs)

    def receive() -> None:
        while True:
            cmd, msg = retrieve_msg(sock)
            if cmd == b"I":
                for job in msg:
                    jobs.put(job)

    if handler.lean != "single":
        threading.Thread(target=receive, daemon=True, name="ckptserve-receive").start()
    loaded = False
    while True:
        if handler.lean == "single":  # one thread: read what has arrived, then batch it
            inbox.read(block=True)
        batch = [jobs.get()]
        # Under load (the last batch held more than one job), wait up to linger_s for a fuller batch;
        # a lone client's batches hold one job, so it never waits.
        until = time.monotonic() + (handler.linger_s if loaded else 0.0)
        while len(batch) < handler.max_batch:
            try:
                left = until - time.monotonic()
                batch.append(jobs.get(timeout=left) if left > 0 else jobs.get_nowait())
            except queue.Empty:
                break
        loaded = len(batch) > 1
        headers, rows, ids = Service.retrieve_data_for_inference(batch)
        context = copy.copy(base)
        context.request_ids, context.request_processor = ids, headers
        bodies = CheckpointHandler.handle(handler, rows, context)
        # "full" (measurement only): a complete HTTP answer, then "false" to free the job, whose
        # end-of-stream writes land after a complete answer (wrk and curl saw no error): what one
        # frame would cost if the frontend took "false" on a first answer as a whole answer
        first = create_predict_response(
            bodies, ids, "Prediction success", 200, context, handler.frames != "full"
        )
        if handler.frames == "full":
            for idx in ids:
                context.set_response_header(idx, "ts_stream_next", "true")
        last = create_predict_response([b""] * len(bodies), ids, "Prediction success", 200, context)
        sock.sendall(first + last)


def _inbox(sock: Any, jobs: queue.SimpleQueue[Any]) -> Any:
    """The single-threaded lean loop's reader: ``read`` parses every whole message that has arrived
    (blocking for the first when ``block``) from one large recv, into ``jobs``."""
    buffer = bytearray()

    class _View:  # what retrieve_msg reads from: the buffer, topped up from the socket
        @staticmethod
        def recv(n: int) -> bytes:
            if not buffer:
                buffer.extend(sock.recv(1 << 20))
            out = bytes(buffer[:n])
            del buffer[:n]
            return out

    def read(block: bool) -> None:
        while True:
            ready = bool(buffer) or select.select([sock], [], [], None if block and jobs.empty() else 0)[0]
            if not ready:
                return
            cmd, msg = retrieve_msg(_View)
            if cmd == b"I":
                for job in msg:
                    jobs.put(job)
            if not buffer and not select.select([sock], [], [], 0)[0]:
                return

    return SimpleNamespace(read=read)
