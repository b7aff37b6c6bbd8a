"""Attack on the lifecycle: a hang-up (SIGHUP, a closed terminal or SSH session) at any moment stops a
foreground server like SIGTERM does, instead of killing the CLI and orphaning TorchServe and the gateway."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_lifecycle import (  # noqa: F401  (fixtures: start_serve, store)
    GONE_WITHIN_S,
    Serve,
    _first_worker,
    start_serve,
    store,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("moment", ["launched", "worker", "steady"])
def test_a_hangup_at_any_moment_stops_every_process_cleanly(
    start_serve: Callable[..., Serve],  # noqa: F811
    store: Path,  # noqa: F811
    moment: str,
) -> None:
    serve = start_serve(store)
    reached: dict[str, Callable[[], bool]] = {
        "launched": lambda: (serve.runtime_dir / "server.json").exists(),
        "worker": lambda: _first_worker(serve),
        "steady": lambda: serve.printed("inference (HTTP)"),
    }
    wait_for(moment, lambda: reached[moment]() or serve.proc.poll() is not None)
    assert serve.proc.poll() is None, serve.output()
    assert serve.processes(), "nothing was started"
    serve.proc.send_signal(signal.SIGHUP)
    gone = lambda: serve.proc.poll() is not None and not serve.processes()  # noqa: E731
    assert wait_for("every process to exit", gone, GONE_WITHIN_S)
    assert serve.proc.returncode == 0, serve.output()
    assert "Traceback" not in serve.output() and "ERROR" not in serve.output(), serve.output()
