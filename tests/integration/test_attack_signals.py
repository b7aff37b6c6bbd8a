"""Attack on the lifecycle: a background server's gateway killed with -9 shows in `ckptserve status` and
fails the readiness probe. (A hang-up at any moment is a case of test_lifecycle's stop test.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_lifecycle import (  # noqa: F401  (fixtures: start_serve, store)
    _FLAGS,
    GONE_WITHIN_S,
    Serve,
    ckptserve,
    start_serve,
    store,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_a_killed_gateway_of_a_background_server_shows_in_status_and_fails_readiness(
    start_serve: Callable[..., Serve],  # noqa: F811
    store: Path,  # noqa: F811
) -> None:
    serve = start_serve(store, foreground=False)
    wait_for("serve to return", lambda: serve.proc.poll() is not None)
    assert serve.proc.returncode == 0, serve.output()
    runtime = ("--runtime-dir", str(serve.runtime_dir))
    gateway = [p for p in serve.processes() if "serving.torchserve.gateway" in " ".join(p.cmdline())]
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
