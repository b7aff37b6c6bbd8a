"""The OIP gateway as a child process beside TorchServe: start, wait until it listens, record, stop."""

from __future__ import annotations

import atexit
import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import psutil

from serving.errors import ServerError
from serving.files import tail
from serving.torchserve.config import bind_error
from serving.torchserve.gateway.upstream import loopback_tls

log = logging.getLogger(__name__)

STATE_FILE = "oip-grpc.json"  # beside TorchServe's server.json in the runtime directory
GatewayState = Literal["starting", "listening", "exited"]
LOG_FILE = "oip-grpc.log"
MODULE = "serving.torchserve.gateway"  # run with `python -m`; also how its process is recognised


@dataclass(frozen=True)
class GatewaySettings:
    host: str  # interface to listen on
    port: int
    inference: str  # TorchServe's gRPC inference API, host:port
    management: str
    runtime_dir: Path
    log_dir: Path
    http_inference: str  # TorchServe's HTTP inference API (http:// or https:// URL): the data path
    key_file: Path | None = None  # TorchServe's key_file.json when token authorization is on
    tls_cert: Path | None = None  # PEM certificate and key: the gateway serves TLS and reaches TorchServe's
    tls_key: Path | None = None
    watch_pgid: int | None = None  # exit when TorchServe's process group is gone

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class GatewayProcess:
    """The gateway in its own session, so that it outlives a detached CLI like TorchServe."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def state_path(self) -> Path:
        return self.settings.runtime_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.settings.log_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        s = self.settings
        check_port_free(s.host, s.port)
        s.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            MODULE,
            "--listen",
            s.endpoint,
            "--inference",
            s.inference,
            "--management",
            s.management,
            "--http-inference",
            s.http_inference,
            "-v",
        ]
        if s.key_file is not None:
            cmd += ["--key-file", str(s.key_file)]
        if s.tls_cert is not None and s.tls_key is not None:
            cmd += ["--tls-cert", str(s.tls_cert), "--tls-key", str(s.tls_key)]
        if s.watch_pgid is not None:
            cmd += ["--watch-pgid", str(s.watch_pgid)]
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        atexit.register(self.stop)
        record = {
            "pid": self._proc.pid,
            "endpoint": s.endpoint,
            "started_at": time.time(),
            "listening": False,
        }
        self.state_path.write_text(json.dumps(record, indent=2))
        try:
            self._wait_listening(timeout_s)
        except BaseException:
            self.stop()
            raise
        # `ckptserve status --ready` (probes, HEALTHCHECK) waits for this, not for the process to exist.
        self.state_path.write_text(json.dumps({**record, "listening": True}, indent=2))
        log.info("OIP gRPC gateway (pid %d) on %s", self._proc.pid, s.endpoint)
        return self

    def _wait_listening(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        if self.settings.tls_cert is None:
            channel = grpc.insecure_channel(self.settings.endpoint)
        else:
            credentials, options = loopback_tls(self.settings.tls_cert)
            channel = grpc.secure_channel(self.settings.endpoint, credentials, options=options)
        with channel:
            ready = grpc.channel_ready_future(channel)
            while True:
                if self._proc.poll() is not None:
                    raise ServerError(
                        f"The OIP gRPC gateway exited with code {self._proc.returncode} before it listened: "
                        f"{_last_lines(self.log_path)}",
                        hint=f"Its log is {self.log_path}.",
                    )
                try:
                    ready.result(timeout=0.2)
                    return
                except grpc.FutureTimeoutError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"The OIP gRPC gateway did not listen on {self.settings.endpoint} "
                        f"within {timeout_s:.0f} s.",
                        hint=f"Its log is {self.log_path}.",
                    )

    def detach(self) -> None:
        """Let the gateway outlive this Python process (``stop_from_state`` stops it later)."""
        atexit.unregister(self.stop)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait for the in-flight calls to finish, SIGKILL if it does not go. Idempotent."""
        atexit.unregister(self.stop)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5.0)
        self.state_path.unlink(missing_ok=True)


def stop_from_state(runtime_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the gateway that ``runtime_dir`` records (another process started it); False if none ran."""
    path = Path(runtime_dir) / STATE_FILE
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    path.unlink(missing_ok=True)
    try:
        proc = psutil.Process(pid)
        if MODULE not in " ".join(proc.cmdline()):
            return False  # the pid was reused by something else: leave it alone
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    except psutil.NoSuchProcess:
        return False
    return True


def announce_gateway(runtime_dir: Path, endpoint: str) -> None:
    """Record that a gateway will start on ``endpoint``: until it listens, the server is not ready."""
    (Path(runtime_dir) / STATE_FILE).write_text(json.dumps({"endpoint": endpoint, "pid": None}, indent=2))


def forget_gateway(runtime_dir: Path) -> None:
    """Drop the record of a gateway that was announced but never started (a start-up that failed)."""
    (Path(runtime_dir) / STATE_FILE).unlink(missing_ok=True)


def gateway_from_state(runtime_dir: Path) -> tuple[str, GatewayState] | None:
    """The endpoint of the gateway that ``runtime_dir`` records and its state; None if none."""
    try:
        record = json.loads((Path(runtime_dir) / STATE_FILE).read_text())
        endpoint, pid = str(record["endpoint"]), record["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid is None:
        return endpoint, "starting"  # announced: TorchServe is starting, the gateway comes after it
    try:
        alive = MODULE in " ".join(psutil.Process(int(pid)).cmdline())
    except (psutil.Error, ValueError, TypeError):  # gone (killed, crashed) or not ours to read
        alive = False
    if not alive:
        return endpoint, "exited"
    # A record without the key comes from a version that wrote it only once listening.
    return endpoint, "listening" if record.get("listening", True) else "starting"


def check_port_free(host: str, port: int) -> None:
    exc = bind_error(host, port)
    if exc is not None:
        raise ServerError(
            f"The OIP gRPC port {port} on {host} is not free: {exc.strerror}.",
            hint="Choose another with --oip-grpc-port, or turn the gateway off with --no-oip-grpc.",
        )


def _last_lines(path: Path) -> str:
    lines = tail(path, 5)
    return " | ".join(lines) if lines is not None else "(no output)"
