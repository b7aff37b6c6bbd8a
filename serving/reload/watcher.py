"""The reloader: poll a directory, pick a checkpoint by policy, gate it, swap it in; report every decision."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.checkpoints.keys import shape_map
from serving.checkpoints.layout import Layout, detect_layout
from serving.checkpoints.reader import read_checkpoint
from serving.errors import CkptServeError
from serving.loader import checkpoint_info, make_info, sha256_of
from serving.reload.candidates import Candidate, Scanner
from serving.reload.policy import rank
from serving.reload.slot import ModelSlot
from serving.spec import ModelSpec

log = logging.getLogger(__name__)

LoadFn = Callable[[Path, str], nn.Module]  # (checkpoint path, its sha256) -> validated-ready model
EventFn = Callable[[str, float], None]  # (result: "success" | "rejected", seconds)


@dataclass
class Rejection:
    path: str
    sha256: str
    reason: str
    at: float


@dataclass
class ReloadStatus:
    """What describe shows about hot reload."""

    watch_dir: str
    policy: str
    strategy: str
    poll_interval_s: float
    reloads: int = 0
    rejected: int = 0
    last_reload: dict[str, Any] | None = None
    last_rejected: Rejection | None = None
    recent_rejections: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reloader:
    """One per worker: picks the start-up checkpoint, then watches for better ones in a daemon thread."""

    def __init__(self, spec: ModelSpec, load: LoadFn, on_event: EventFn | None = None) -> None:
        assert spec.reload.watch_dir is not None, "Reloader needs handler.watch_dir"
        self.spec = spec
        self.watch_dir = spec.reload.watch_dir
        self._load = load
        self._on_event = on_event or (lambda result, seconds: None)
        self._scanner = Scanner(self.watch_dir)
        self._rejected: dict[tuple[str, Any], Rejection] = {}  # (name, signature) -> why
        self._hashes: dict[tuple[str, Any], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.slot: ModelSlot | None = None
        self.status = ReloadStatus(
            watch_dir=str(self.watch_dir),
            policy=spec.reload.policy,
            strategy=spec.reload.strategy,
            poll_interval_s=spec.reload.poll_interval_s,
        )

    # --- start-up -------------------------------------------------------------------------------

    def initial_model(self, sample_check: Callable[[nn.Module], None]) -> nn.Module | None:
        """The best valid checkpoint in the directory now (by policy), or None if there is none yet.

        Files still being written get one poll interval to settle; invalid ones are rejected and the
        next best is tried, so a server never starts on a broken checkpoint when a good one exists.
        """
        candidates = self._scanner.scan()
        if self._unsettled(candidates):
            time.sleep(self.spec.reload.poll_interval_s)
            candidates = self._scanner.scan()
        for candidate in rank(candidates, self.spec.reload):
            if (candidate.name, candidate.signature) in self._rejected:
                continue  # while waiting for a first checkpoint, each poll comes back here
            sha = self._sha(candidate)
            try:
                model = self._load(candidate.path, sha)
                sample_check(model)
                return model
            except CkptServeError as err:
                self._reject(candidate, sha, err.message)
        return None

    def _unsettled(self, candidates: list[Candidate]) -> bool:
        seen = {c.name for c in candidates}
        try:
            names = {p.name for p in self.watch_dir.iterdir()}
        except OSError:
            return False
        return any(n not in seen and not n.startswith(".") for n in names)

    # --- watching -------------------------------------------------------------------------------

    def start(self, slot: ModelSlot) -> None:
        self.slot = slot
        self._thread = threading.Thread(target=self._run, name="ckptserve-reloader", daemon=True)
        self._thread.start()

    def start_waiting(
        self, sample_check: Callable[[nn.Module], None], serve_first: Callable[[nn.Module], ModelSlot]
    ) -> None:
        """Watch with nothing served yet: each poll looks for a first valid checkpoint and hands it to
        ``serve_first`` (which returns the slot now serving it); then watching goes on as usual."""
        self._thread = threading.Thread(
            target=self._wait_then_run,
            args=(sample_check, serve_first),
            name="ckptserve-reloader",
            daemon=True,
        )
        self._thread.start()

    def _wait_then_run(
        self, sample_check: Callable[[nn.Module], None], serve_first: Callable[[nn.Module], ModelSlot]
    ) -> None:
        while self.slot is None and not self._stop.wait(self.spec.reload.poll_interval_s):
            if not self.watch_dir.is_dir():
                continue  # training has not created it yet
            try:
                model = self.initial_model(sample_check)
                if model is not None:
                    self.slot = serve_first(model)
            except Exception:  # keep waiting: the next checkpoint may do
                log.exception("loading the first checkpoint from %s failed; still waiting", self.watch_dir)
        self._run()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.spec.reload.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any surprise; the served model stays
                log.exception(
                    "reload poll failed; still serving %s", self.slot.info.path if self.slot else "-"
                )

    def poll_once(self) -> bool:
        """One poll: returns True if a new checkpoint is now served."""
        assert self.slot is not None
        for candidate in rank(self._scanner.scan(), self.spec.reload):
            if (candidate.name, candidate.signature) in self._rejected:
                continue
            sha = self._sha(candidate)
            if sha == self.slot.info.sha256:
                return False  # the policy's choice is already served
            return self._reload(candidate, sha)
        return False

    def _reload(self, candidate: Candidate, sha: str) -> bool:
        assert self.slot is not None
        started = time.perf_counter()
        try:
            if self.spec.reload.strategy == "inplace" and detect_layout(candidate.path) in _COPYABLE:
                self._copy_in(candidate, sha, started)
            else:
                model = self._load(candidate.path, sha)
                self.slot.validate(model)
                self.slot.swap(model)
        except CkptServeError as err:
            self._reject(candidate, sha, err.message)
            self._on_event("rejected", time.perf_counter() - started)
            return False
        seconds = time.perf_counter() - started
        info = self.slot.info
        landed = max(p[2] for p in candidate.signature.parts) / 1e9
        self.status.reloads += 1
        self.status.last_reload = {
            "path": info.path,
            "sha256": info.sha256,
            "epoch": info.epoch,
            "loss": info.loss,
            "seconds": round(seconds, 4),
            "landed_to_serving_s": round(time.time() - landed, 4),
            "at": time.time(),
        }
        self._on_event("success", seconds)
        log.info(
            "reload: now serving %s (epoch %s, sha256 %s) after %.2fs",
            info.path,
            info.epoch,
            sha[:12],
            seconds,
        )
        return True

    def _copy_in(self, candidate: Candidate, sha: str, started: float) -> None:
        assert self.slot is not None
        live = self.slot.model
        contents = read_checkpoint(
            candidate.path,
            expected=shape_map(live.state_dict()),
            state_dict_key=self.spec.state_dict_key,
            safe_globals=self.spec.safe_globals,
        )
        old = checkpoint_info(live)
        info = make_info(contents, live, None, torch.device(old.device), None, sha, 0.0)
        self.slot.copy_in(contents, info)
        log.debug("in-place copy of %s took %.2fs", candidate.path, time.perf_counter() - started)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _sha(self, candidate: Candidate) -> str:
        key = (candidate.name, candidate.signature)
        if key not in self._hashes:
            self._hashes[key] = sha256_of(candidate.path)
        return self._hashes[key]

    def _reject(self, candidate: Candidate, sha: str, reason: str) -> None:
        rejection = Rejection(str(candidate.path), sha, reason, time.time())
        self._rejected[(candidate.name, candidate.signature)] = rejection
        self.status.rejected += 1
        self.status.last_rejected = rejection
        self.status.recent_rejections = [*self.status.recent_rejections[-9:], rejection]
        log.warning("reload: rejected %s (sha256 %s): %s", candidate.path, sha[:12], reason)


_COPYABLE = (
    Layout.TORCH_SAVE,
    Layout.TORCH_SAVE_LEGACY,
    Layout.SAFETENSORS,
    Layout.SHARDED_SAFETENSORS,
    Layout.DCP,
)
