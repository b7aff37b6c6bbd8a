"""The gateway's state record: a server is ready only once its announced OIP gateway listens."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.torchserve.gateway.process import (
    MODULE,
    STATE_FILE,
    announce_gateway,
    forget_gateway,
    gateway_from_state,
)
from serving.torchserve.status import ModelStatus, ServerStatus

ENDPOINT = "127.0.0.1:8001"


@pytest.fixture
def gateway_like() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line names the gateway's module, as the real one does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", MODULE])
    yield proc
    proc.kill()
    proc.wait()


def _record(runtime: Path, **fields: object) -> None:
    (runtime / STATE_FILE).write_text(json.dumps({"endpoint": ENDPOINT, **fields}))


def test_an_announced_gateway_is_starting_until_it_listens(
    tmp_path: Path, gateway_like: subprocess.Popen[bytes]
) -> None:
    announce_gateway(tmp_path, ENDPOINT)  # TorchServe is starting; the gateway is not spawned yet
    assert gateway_from_state(tmp_path) == (ENDPOINT, "starting")
    _record(tmp_path, pid=gateway_like.pid, listening=False)  # spawned, not listening yet
    assert gateway_from_state(tmp_path) == (ENDPOINT, "starting")
    _record(tmp_path, pid=gateway_like.pid, listening=True)
    assert gateway_from_state(tmp_path) == (ENDPOINT, "listening")


def test_a_record_of_an_older_version_without_the_flag_counts_as_listening(
    tmp_path: Path, gateway_like: subprocess.Popen[bytes]
) -> None:
    _record(tmp_path, pid=gateway_like.pid)
    assert gateway_from_state(tmp_path) == (ENDPOINT, "listening")


def test_a_gateway_whose_process_is_gone_has_exited(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass", MODULE])
    proc.wait()
    _record(tmp_path, pid=proc.pid, listening=True)
    assert gateway_from_state(tmp_path) == (ENDPOINT, "exited")


def test_forgetting_an_announced_gateway_leaves_no_record(tmp_path: Path) -> None:
    announce_gateway(tmp_path, ENDPOINT)
    forget_gateway(tmp_path)
    assert gateway_from_state(tmp_path) is None


def _status(**gateway: str) -> ServerStatus:
    model = ModelStatus("digits", "1.0", [{"id": "9000", "status": "READY"}], "serving")
    return ServerStatus("/run", 1, True, 0.0, {}, models=[model], **gateway)


def test_ready_waits_for_the_gateway_to_listen() -> None:
    assert _status().ready  # no gateway configured
    assert _status(oip_grpc=ENDPOINT).ready
    assert not _status(oip_grpc_starting=ENDPOINT).ready  # a probe must not pass before the port listens
    assert not _status(oip_grpc_exited=ENDPOINT).ready
