"""terminate_group stops a process group whose leader starts a new member while it shuts down."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from serving.torchserve.procgroup import group_members, terminate_group

# Like TorchServe's frontend in a container: on SIGTERM it restarts a worker that the same SIGTERM
# ended, then exits; the new worker (default SIGTERM action) never saw the signal.
RESPAWNING_LEADER = """
import signal, subprocess, sys, time

def on_term(*_):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_member_born_after_sigterm_is_stopped_without_sigkill(caplog: pytest.LogCaptureFixture) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", RESPAWNING_LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "ready"
        with caplog.at_level(logging.WARNING, logger="serving.torchserve.procgroup"):
            terminate_group(leader.pid, timeout_s=60.0, reap=leader.poll)
        assert group_members(leader.pid) == []
        assert leader.returncode == 0  # the leader's own clean exit, not a SIGKILL
        assert "outlived SIGTERM" not in caplog.text  # the late member got SIGTERM, not SIGKILL
    finally:
        if group_members(leader.pid):
            terminate_group(leader.pid, timeout_s=1.0)
        leader.wait()
