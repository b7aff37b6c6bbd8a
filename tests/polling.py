"""Wait for a condition with a deadline: what tests use instead of a sleep (this machine may be loaded)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], what: str | Callable[[], str], timeout_s: float = 60.0, poll_s: float = 0.05
) -> T:
    """Return ``condition()``'s first truthy value; fail the test naming ``what`` after ``timeout_s``.

    ``what`` may be a function, to name what was last seen when the wait fails.
    The deadline only bounds a hang: a slow machine makes the wait longer, never the test pass vacuously.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            named = what() if callable(what) else what
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {named}")
        time.sleep(poll_s)
