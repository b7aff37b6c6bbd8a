"""Attack on the lifecycle: a hang-up (SIGHUP, a closed terminal or SSH session) at any moment stops a
foreground server like SIGTERM does, instead of killing the CLI and orphaning TorchServe and the gateway;
a background server's gateway killed with -9 shows in `ckptserve status` and fails the readiness probe."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_lifecycle import (  # noqa: F401  (fixtures: start_serve, store)
    _FLAGS,
    GONE_WITHIN_S,
    Serve,
    _first_worker,
    ckptserve,
    start_serve,
    store,
    up,
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


def test_a_killed_gateway_of_a_background_server_shows_in_status_and_fails_readiness(
    start_serve: Callable[..., Serve],  # noqa: F811
    store: Path,  # noqa: F811
) -> None:
    serve = start_serve(store, foreground=False)
    wait_for("serve to return", lambda: serve.proc.poll() is not None)
    assert serve.proc.returncode == 0, serve.output()
    runtime = ("--runtime-dir", str(serve.runtime_dir))
    gateway = [p for p in serve.processes() if "serving.grpc" in " ".join(p.cmdline())]
    assert len(gateway) == 1, [p.cmdline()[:4] for p in serve.processes()]
    assert ckptserve("status", *runtime, "--ready", "--quiet").returncode == 0
    # a second serve on the same runtime directory (and so the same gateway port) names the live server
    flags = [arg for name, port in serve.ports.items() for arg in (_FLAGS[name], str(port))]
    again = ckptserve(
        "serve", "--model-store", str(store), *runtime, "--oip-grpc-port", str(serve.oip_port), *flags
    )
    assert again.returncode == 2 and "already runs from" in again.stderr, again.stdout + again.stderr
    gateway[0].kill()
    gateway[0].wait(30)

    shown = ckptserve("status", *runtime)
    assert f"127.0.0.1:{serve.oip_port} EXITED" in shown.stdout, shown.stdout + shown.stderr
    found = json.loads(ckptserve("status", *runtime, "--json").stdout)
    assert found["oip_grpc_exited"] == f"127.0.0.1:{serve.oip_port}" and found["ready"] is False
    assert ckptserve("status", *runtime, "--ready", "--quiet").returncode == 3

    stopped = ckptserve("stop", *runtime)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert wait_for("every process to exit", lambda: not serve.processes(), GONE_WITHIN_S)
