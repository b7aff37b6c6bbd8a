"""The state file of a running server, so that another process (`ckptserve stop`) can find and stop it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.errors import ServerError
from serving.torchserve.config import ServerSettings
from serving.torchserve.procgroup import group_members, looks_like_torchserve, terminate_group

log = logging.getLogger(__name__)

STATE_FILE = "server.json"
# TorchServe's wrapper writes the Java pid here (under TMPDIR); Java writes key_file.json into its cwd.
TS_PID_FILE = ".model_server.pid"
KEY_FILE = "key_file.json"


@dataclass(frozen=True)
class ServerUrls:
    """Where one server listens; gRPC targets are "host:port" as grpc.insecure_channel wants them."""

    inference: str
    management: str
    metrics: str
    grpc_inference: str
    grpc_management: str


@dataclass(frozen=True)
class ServerState:
    """What ``runtime_dir/server.json`` records so that another process can find and stop the server."""

    pid: int  # the `torchserve` wrapper, leader of the process group
    pgid: int
    runtime_dir: str
    log_dir: str
    urls: ServerUrls
    started_at: float
    tls_cert: str | None = None  # the served certificate: another process trusts it over loopback

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: Path) -> ServerState:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{**data, "urls": ServerUrls(**data["urls"])})
        except FileNotFoundError:
            raise ServerError(
                f"Expected a server state file at {path}, found none.",
                hint="No server runs from that directory: start one with `ckptserve serve`, or give the "
                "`--runtime-dir` it was started with.",
            ) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ServerError(
                f"The server state file {path} is unreadable ({exc}).",
                hint="If no server runs from that directory any more, delete the file.",
            ) from None


def _connect_host(bind: str) -> str:
    # A server bound to every interface is reached from this machine over loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def urls_for(settings: ServerSettings) -> ServerUrls:
    """Where a client on this machine reaches each endpoint."""
    host, management = _connect_host(settings.host), _connect_host(settings.management_host)

    def bracket(h: str) -> str:  # IPv6 literals in host:port
        return f"[{h}]" if ":" in h else h

    return ServerUrls(
        inference=settings.http_url(settings.http_port, host),
        management=settings.http_url(settings.management_port, management),
        metrics=settings.http_url(settings.metrics_port, host),
        grpc_inference=f"{bracket(host)}:{settings.grpc_inference_port}",
        grpc_management=f"{bracket(management)}:{settings.grpc_management_port}",
    )


def stop_from_state(path: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server that ``path`` (a runtime_dir/server.json) records; False if none was running."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    state = ServerState.read(path)
    if not group_members(state.pgid):
        log.info("no TorchServe process left from %s; removing the stale state file", path)
        path.unlink(missing_ok=True)
        return False
    if not looks_like_torchserve(state.pgid):
        raise ServerError(
            f"Process group {state.pgid} from {path} is no TorchServe any more (the pid was reused).",
            hint=f"Nothing was stopped. Delete {path} if no server runs from {state.runtime_dir}.",
        )
    terminate_group(state.pgid, timeout_s)
    path.unlink(missing_ok=True)
    for leftover in (TS_PID_FILE, KEY_FILE):
        (Path(state.runtime_dir) / leftover).unlink(missing_ok=True)
    log.info("stopped TorchServe (pid %d) from %s", state.pid, path)
    return True
