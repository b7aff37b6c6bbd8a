"""Process-group plumbing for TorchServe: find its executables, check ports, signal and reap its processes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from serving.errors import ServerError
from serving.torchserve.config import ServerSettings, bind_error

log = logging.getLogger(__name__)


def find_torchserve() -> Path:
    """The `torchserve` script of the running environment (next to sys.executable, not resolved:
    a venv's python is a symlink into the base interpreter)."""
    candidate = Path(sys.executable).parent / "torchserve"
    if candidate.is_file():
        return candidate
    found = shutil.which("torchserve")
    if found:
        return Path(found)
    raise ServerError(
        f"Expected the `torchserve` command next to {sys.executable}, found none.",
        hint="Install it into this environment: pip install -c constraints.txt torchserve==0.12.0",
    )


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []  # the cheap answer; the scan below is only needed to tell zombies apart
    except PermissionError:
        pass
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def looks_like_torchserve(pgid: int) -> bool:
    for pid in group_members(pgid):
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "org.pytorch.serve.ModelServer" in cmdline or "torchserve" in cmdline:
            return True
    return False


# While TorchServe stops, SIGTERM goes to its group again this often (see terminate_group).
RESIGNAL_INTERVAL_S = 1.0


def terminate_group(pgid: int, timeout_s: float, reap: Callable[[], object] | None = None) -> None:
    # Java shuts its workers down on SIGTERM and needs 2-5 s; `torchserve --stop` does not wait for it.
    def wait(seconds: float, resignal: signal.Signals | None = None) -> bool:
        until = time.monotonic() + seconds
        next_signal = time.monotonic() + RESIGNAL_INTERVAL_S
        while True:
            if reap is not None:
                reap()  # our own child would otherwise linger as a zombie
            if not group_members(pgid):
                return True
            if time.monotonic() >= until:
                return False
            if resignal is not None and time.monotonic() >= next_signal:
                # The frontend restarts a worker that the first SIGTERM ended before its own shutdown
                # hook runs; that new worker missed the signal and would wait for its socket forever.
                _signal_group(pgid, resignal)
                next_signal += RESIGNAL_INTERVAL_S
            time.sleep(0.1)

    _signal_group(pgid, signal.SIGTERM)
    if wait(timeout_s, resignal=signal.SIGTERM):
        return
    log.warning("TorchServe (process group %d) outlived SIGTERM by %.0f s; killing it", pgid, timeout_s)
    _signal_group(pgid, signal.SIGKILL)
    if wait(10.0):
        return
    raise ServerError(
        f"TorchServe's process group {pgid} survived SIGKILL: processes {group_members(pgid)} remain.",
        hint=f"Look at them with `ps -o pid,stat,cmd -g {pgid}`; a process stuck in the kernel (D state) "
        "cannot be killed.",
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def check_ports_free(settings: ServerSettings) -> None:
    for name, port in settings.ports.items():
        exc = bind_error(settings.host, port)
        if exc is not None and exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"The {name} port {port} on {settings.host} is already in use.",
                hint="Stop whatever listens there (another TorchServe?) or choose other ports.",
            )
        if exc is not None:
            raise ServerError(f"Cannot bind {settings.host}:{port} ({name}): {exc}.")


def find_java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    if found:
        return Path(found).resolve()
    raise ServerError(
        "TorchServe needs Java (17 works), found no `java` on PATH and no JAVA_HOME.",
        hint="Install a JDK or JRE 17 (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME.",
    )
