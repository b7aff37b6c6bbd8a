"""One retry policy for every client: exponential waits after "not now" answers, never past the deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from serving.errors import CkptServeError


@dataclass(frozen=True)
class Backoff:
    """At most ``retries`` more tries, the first after ``first_s``, each wait twice the one before."""

    retries: int = 3
    first_s: float = 0.2

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        for _ in range(self.retries):
            yield delay
            delay *= 2

    def attempts(self, timeout_s: float) -> Attempts:
        """The tries of one call whose deadline is ``timeout_s`` from now (the retries included)."""
        return Attempts(self, time.monotonic() + timeout_s)


class Attempts:
    """One call's tries: the time left before its deadline, and the wait before the next try."""

    def __init__(self, backoff: Backoff, deadline: float) -> None:
        self.deadline = deadline
        self.tries = 1  # the one under way
        self._delays = backoff.delays()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def next_delay(self) -> float | None:
        """The wait before another try; None once the retries are spent or it would reach the deadline."""
        delay = next(self._delays, None)
        if delay is None or time.monotonic() + delay >= self.deadline:
            return None
        self.tries += 1
        return delay


def retryable(err: CkptServeError) -> bool:
    """Only "not now" is worth another try; a bad request stays bad."""
    return err.grpc_code == "UNAVAILABLE" or getattr(err, "http_status", None) == 503
