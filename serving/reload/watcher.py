"""The reloader: poll a directory, pick a checkpoint by policy, gate it, swap it in; report every decision."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from serving.checkpoints.layout import detect_layout
from serving.errors import CkptServeError
from serving.files import sha256_of
from serving.reload.candidates import OUTSIDE, PIN_FILE, Candidate, Scanner, resolves_inside
from serving.reload.policy import Ranking, rank_with_reasons
from serving.reload.slot import ModelSlot
from serving.reload.strategy import STRATEGIES, LoadFn, Replacement
from serving.spec import ModelSpec

log = logging.getLogger(__name__)

EventFn = Callable[[str, float], None]  # (result: "success" | "rejected", seconds)
_SHOWN_SKIPPED = 50  # describe lists this many skipped candidates; skipped_total counts them all


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
    candidates: int = 0  # complete checkpoints at the last poll
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not served (the first 50)
    skipped_total: int = 0

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
        self._scanner = Scanner(self.watch_dir, follow_symlinks=spec.reload.follow_symlinks)
        self._rejected: dict[tuple[str, Any], Rejection] = {}  # (name, signature) -> why
        self._hashes: dict[tuple[str, Any], str] = {}
        self._pin_reported: tuple[Any, str] | None = None  # (pin signature, problem) already reported
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

    def initial_model(
        self, sample_check: Callable[[nn.Module], None], *, settle_s: float | None = None
    ) -> nn.Module | None:
        """The best valid checkpoint in the directory now (by policy), or None if there is none yet.

        Files still being written get ``settle_s`` (default one poll interval) to settle; invalid ones
        are rejected and the next best is tried, so a server never starts on a broken checkpoint when
        a good one exists.
        """
        candidates = self._scanner.scan()
        if self._unsettled(candidates):
            time.sleep(self.spec.reload.poll_interval_s if settle_s is None else settle_s)
            candidates = self._scanner.scan()
        ranking = self._rank(candidates)
        for candidate in ranking.ordered:
            if not self._contained(candidate):
                continue
            if (candidate.name, candidate.signature) in self._rejected:
                continue  # while waiting for a first checkpoint, each poll comes back here
            sha = self._sha(candidate)
            if sha is None:
                continue
            try:
                model = self._load(candidate.path, sha)
                sample_check(model)
            except Exception as exc:  # any failure rejects the file; start-up never fails on one
                self._reject(candidate, sha, rejection_reason(exc))
                continue
            self._report_skipped(candidates, ranking, candidate)
            return model
        self._report_skipped(candidates, ranking, None)
        return None

    def _unsettled(self, candidates: list[Candidate]) -> bool:
        outside = {name for name, why in self._scanner.skipped.items() if why == OUTSIDE}
        seen = {c.name for c in candidates} | outside
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
        candidates = self._scanner.scan()
        # Only files still there are remembered: a writer rewriting a file forever must not grow these.
        present = {(c.name, c.signature) for c in candidates}
        self._hashes = {k: v for k, v in self._hashes.items() if k in present}
        self._rejected = {k: v for k, v in self._rejected.items() if k in present}
        ranking = self._rank(candidates)
        reloaded = False
        # Best first; a rejected one gives way to the next, down to the one already served.
        for candidate in ranking.ordered:
            if (candidate.name, candidate.signature) in self._rejected or not self._contained(candidate):
                continue
            sha = self._sha(candidate)
            if sha is None:
                continue
            if sha == self.slot.info.sha256:
                break  # the policy's choice is already served
            if self._reload(candidate, sha):
                reloaded = True
                break
        info = self.slot.info
        # The served one: by path, or by content (the configured checkpoint may equal a watched file).
        now = next(
            (
                c
                for c in candidates
                if str(c.path) == info.path or self._hashes.get((c.name, c.signature)) == info.sha256
            ),
            None,
        )
        self._report_skipped(candidates, ranking, now)
        return reloaded

    def _reload(self, candidate: Candidate, sha: str) -> bool:
        assert self.slot is not None
        started = time.perf_counter()
        try:
            strategy = STRATEGIES[self.spec.reload.strategy]
            strategy.apply(Replacement(candidate.path, sha, self.slot, self.spec, self._load))
        except Exception as exc:  # a surprise must reject this file, not stall the watcher on it forever
            self._reject(candidate, sha, rejection_reason(exc))
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
            "reload: now serving %r (epoch %s, sha256 %s) after %.2fs",
            info.path,
            info.epoch,
            sha[:12],
            seconds,
        )
        return True

    # --- bookkeeping ----------------------------------------------------------------------------

    def _rank(self, candidates: list[Candidate]) -> Ranking:
        ranking = rank_with_reasons(candidates, self.spec.reload)
        pin = ranking.pin
        if pin is None:
            return ranking
        problems = [pin.problem] if pin.problem else []
        for name in ranking.unmatched_pins:
            why = self._scanner.skipped.get(name, "no complete checkpoint of that name is in the watch dir")
            where = ".pin" if name == pin.name else "pinned:"
            problems.append(f"{where} names {name!r}, which cannot be served: {why}.")
        if problems:
            self._report_pin(pin.signature, " ".join(problems))
        return ranking

    def _report_pin(self, signature: Any, problem: str) -> None:
        # One report per pin content: a bad pin is not re-reported at every poll.
        if self._pin_reported == (signature, problem):
            return
        self._pin_reported = (signature, problem)
        self._record(Rejection(str(self.watch_dir / PIN_FILE), "", problem, time.time()))
        self._on_event("rejected", 0.0)

    def _report_skipped(
        self, candidates: list[Candidate], ranking: Ranking, served: Candidate | None
    ) -> None:
        """Why every complete checkpoint but the served one is not served, for describe."""
        skipped = dict(self._scanner.skipped)
        skipped.update(ranking.skipped)
        served_name = served.name if served is not None else None
        above = True  # ranked before the served one: the policy prefers it
        for candidate in ranking.ordered:
            if candidate.name == served_name:
                above = False
                continue
            if skipped.get(candidate.name) == OUTSIDE:  # swapped for a link since the scan
                continue
            rejection = self._rejected.get((candidate.name, candidate.signature))
            if rejection is not None:
                skipped[candidate.name] = f"rejected: {rejection.reason}"
            elif served is None or above:
                skipped[candidate.name] = "not validated yet: tried at the next poll"
            else:
                skipped[candidate.name] = (
                    f"policy {self.spec.reload.policy!r} prefers {served.name} ({ranking.explain(served)}) "
                    f"to it ({ranking.explain(candidate)})"
                )
        self.status.candidates = len(candidates)
        self.status.skipped_total = len(skipped)
        self.status.skipped = dict(list(skipped.items())[:_SHOWN_SKIPPED])

    def _contained(self, candidate: Candidate) -> bool:
        # Checked again just before the file is read: it may have been swapped for a link since the scan.
        if self.spec.reload.follow_symlinks or resolves_inside(candidate.path, self.watch_dir.resolve()):
            return True
        self._scanner.skipped[candidate.name] = OUTSIDE
        return False

    def _sha(self, candidate: Candidate) -> str | None:
        """The candidate's sha256, or None once it is rejected as unreadable (a FIFO swapped in, EACCES)."""
        key = (candidate.name, candidate.signature)
        if key not in self._hashes:
            try:
                detect_layout(candidate.path)  # cheap: a 1 TB file of zeros is refused before it is hashed
                self._hashes[key] = sha256_of(candidate.path)
            except Exception as exc:
                self._reject(candidate, "", rejection_reason(exc))
                return None
        return self._hashes[key]

    def _reject(self, candidate: Candidate, sha: str, reason: str) -> None:
        rejection = Rejection(str(candidate.path), sha, reason, time.time())
        self._rejected[(candidate.name, candidate.signature)] = rejection
        self._record(rejection)

    def _record(self, rejection: Rejection) -> None:
        self.status.rejected += 1
        self.status.last_rejected = rejection
        self.status.recent_rejections = [*self.status.recent_rejections[-9:], rejection]
        sha = rejection.sha256[:12] or "-"
        # %r: a file name may hold a newline, which would forge a log line (TorchServe parses them).
        log.warning("reload: rejected %r (sha256 %s): %s", rejection.path, sha, rejection.reason)


def rejection_reason(exc: Exception) -> str:
    """Why a candidate is rejected: a typed error's message; for anything else its type only.

    Other exceptions' messages may quote bytes of the file (decoders do), so they are not shown.
    """
    if isinstance(exc, CkptServeError):
        return exc.message
    return (
        f"reading or checking it failed ({type(exc).__name__}): it is damaged, or not a checkpoint "
        "of this model."
    )
