"""Reading TorchServe's worker log as it grows, to tell why a model's worker failed to load."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.wire import LOAD_ERROR_MARKER

# TorchServe's log4j pattern "%d{ISO8601} [%-5p] %t %c - %m%n"; worker threads are "W-9000-name_1.0-stdout".
_LINE = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<thread>\S+) (?P<logger>\S+) - (?P<msg>.*)$")
_WORKER_THREAD = re.compile(r"^(?P<worker>W-\d+-(?P<model>.+)_[^_]+)-std(?:out|err)$")
# ts/model_service_worker.py re-raises a failed load as "RuntimeError: 500 - Unknown exception".
_TS_RERAISE = re.compile(r"^\w+: \d{3} - ")
# "ValueError: msg", "pkg.mod.Error: msg", "KeyboardInterrupt"; not "s_name_part0=..." from a new worker.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(:\s|:?$)")
_CHAIN_SEPARATORS = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_WORKER_DIED = "Backend worker process died."
_WORKER_STARTED = "Torch worker started."
# A traceback arrives as a burst of lines; wait this long after its last line before reading it.
_SETTLE_S = 0.3
# A worker that restarts this often without a readable Python error is reported anyway.
MAX_SILENT_RESTARTS = 3


@dataclass(frozen=True)
class LoadFailure:
    """Why one model's worker could not load: the handler's own words where it left them."""

    model: str | None  # None when the line carried no worker thread name (a custom log layout)
    message: str
    source: str  # "marker", "traceback" or "restarts"


@dataclass
class _Worker:
    model: str
    lines: list[str] = field(default_factory=list)
    died_at: float | None = None
    last_line_at: float = 0.0
    starts: int = 0
    silent_deaths: int = 0


class _Follower:
    """Yields the complete lines appended to one file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Skip what an earlier server wrote into the same log directory.
        self.offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def read(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # rolled over: the new file starts from scratch
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in complete]


def last_exception_lines(lines: list[str]) -> list[str]:
    """The final "Type: message" line of each traceback in ``lines``, in order.

    Chained tracebacks count as one; their last section is the exception that was raised.
    """
    found: list[str] = []
    current: str | None = None
    in_traceback = in_frames = chained = False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            if in_traceback and not chained and current:
                found.append(current)
                current = None
            in_traceback, in_frames, chained = True, True, False
            continue
        if not in_traceback:
            continue
        if line.startswith('  File "'):
            in_frames = True
        elif line.startswith((" ", "\t")):
            continue  # source lines of a frame, or the indented rest of a message
        elif line.strip() in _CHAIN_SEPARATORS:
            chained = True
        elif not line.strip():
            continue
        elif in_frames and _EXCEPTION_LINE.match(line):
            current, in_frames, chained = line.strip(), False, False
        elif in_frames:  # cut off (the frontend stopped reading a dying worker): no exception line
            current, in_traceback = None, False
        else:  # a new, unrelated line ends the traceback (a multi-line message keeps its first line)
            if current:
                found.append(current)
            current, in_traceback = None, False
    if in_traceback and current:
        found.append(current)
    return found


class WorkerLogScanner:
    """Follows TorchServe's worker output and reports load failures as soon as they are readable."""

    def __init__(self, paths: list[Path]) -> None:
        # Give it each line once: the same lines read from two files would interleave two tracebacks.
        self._followers = [_Follower(p) for p in paths]
        self._workers: dict[str, _Worker] = {}

    def poll(self) -> list[LoadFailure]:
        """Read what was appended since the last call; return the load failures it shows."""
        failures: list[LoadFailure] = []
        now = time.monotonic()
        for follower in self._followers:
            for raw in follower.read():
                failures.extend(self._feed(raw, now))
        for key, worker in self._workers.items():
            if worker.died_at is not None and now - worker.last_line_at >= _SETTLE_S:
                failures.extend(self._finish(key, worker))
        return failures

    def _feed(self, raw: str, now: float) -> list[LoadFailure]:
        match = _LINE.match(raw)
        msg = match["msg"] if match else raw
        thread = _WORKER_THREAD.match(match["thread"]) if match else None
        if LOAD_ERROR_MARKER in msg:
            message = msg.split(LOAD_ERROR_MARKER, 1)[1].strip()
            return [LoadFailure(thread["model"] if thread else None, message, "marker")]
        if thread is None:
            return []
        key = thread["worker"]
        worker = self._workers.setdefault(key, _Worker(thread["model"]))
        if msg.strip() == _WORKER_STARTED:
            if worker.died_at is not None:
                failures = self._finish(key, worker)
            elif worker.starts:  # the previous process ended without a word (killed, segfault)
                failures = self._silent_death(key, worker)
            else:
                failures = []
            worker.starts += 1
            worker.lines = []
            return failures
        if msg.startswith(_WORKER_DIED):
            worker.died_at = now
        worker.lines.append(msg)
        del worker.lines[:-400]  # a worker that logs a lot must not grow this without bound
        worker.last_line_at = now
        return []

    def _finish(self, key: str, worker: _Worker) -> list[LoadFailure]:
        worker.died_at = None
        causes = [line for line in last_exception_lines(worker.lines) if not _TS_RERAISE.match(line)]
        worker.lines = []
        if causes:
            return [LoadFailure(worker.model, causes[0], "traceback")]
        return self._silent_death(key, worker)

    @staticmethod
    def _silent_death(key: str, worker: _Worker) -> list[LoadFailure]:
        worker.silent_deaths += 1
        if worker.silent_deaths < MAX_SILENT_RESTARTS:
            return []
        message = f"its worker ({key}) died {worker.silent_deaths} times without a Python error"
        return [LoadFailure(worker.model, message, "restarts")]
