"""What a running server does, read from another process: its ports, models, workers and checkpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ServerError
from serving.tls import loopback_context
from serving.torchserve.procgroup import group_members
from serving.torchserve.state import KEY_FILE, STATE_FILE, ServerState


def management_get(
    base_url: str,
    path: str,
    key_file: Path | None = None,
    timeout_s: float = 5.0,
    *,
    tls_cert: Path | None = None,
) -> Any:
    """GET JSON from TorchServe's management API; None on 404. ``key_file``: token authorization's keys;
    ``tls_cert``: the served certificate, trusted over loopback."""
    request = urllib.request.Request(base_url + path)
    if key_file is not None:
        try:
            key = str(json.loads(key_file.read_text())["management"]["key"])
        except (OSError, ValueError, KeyError) as exc:
            raise OSError(f"no management key yet in {key_file}") from exc
        request.add_header("Authorization", f"Bearer {key}")
    context = loopback_context(tls_cert) if tls_cert is not None else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def registered_models(
    base_url: str, key_file: Path | None = None, *, tls_cert: Path | None = None
) -> list[str]:
    """Every registered model name (the management API pages them)."""
    names: list[str] = []
    token = ""
    while True:
        page = management_get(
            base_url,
            f"/models?limit=100{'&next_page_token=' + token if token else ''}",
            key_file,
            tls_cert=tls_cert,
        )
        if page is None:
            return names
        names += [m["modelName"] for m in page.get("models", [])]
        token = page.get("nextPageToken") or ""
        if not token:
            return names


@dataclass
class ModelStatus:
    """One model version as TorchServe and ckptserve's handler describe it."""

    name: str
    version: str
    workers: list[dict[str, Any]]  # id, status (READY, UNLOADING, ...), pid
    state: str  # "serving", "waiting" (no checkpoint yet) or "unknown" (no handler description)
    checkpoint: str | None = None  # the live checkpoint's path, when serving
    epoch: int | None = None
    sha256: str | None = None
    waiting_for: str | None = None  # the watch directory, when waiting

    @property
    def ready(self) -> bool:
        """Serving a checkpoint with at least one READY worker: what clients and probes wait for."""
        return self.state == "serving" and any(w.get("status") == "READY" for w in self.workers)


@dataclass
class ServerStatus:
    runtime_dir: str
    pid: int
    running: bool
    started_at: float
    urls: dict[str, str]
    oip_grpc: str | None = None  # the OIP v2 gateway's endpoint, when one runs (server.py fills it)
    oip_grpc_exited: str | None = None  # the endpoint of a gateway that was started and has exited
    oip_grpc_starting: str | None = None  # the endpoint of a gateway that does not listen yet
    models: list[ModelStatus] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        gateway_ok = self.oip_grpc_exited is None and self.oip_grpc_starting is None
        return self.running and gateway_ok and bool(self.models) and all(m.ready for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, model in zip(data["models"], self.models, strict=True):
            entry["ready"] = model.ready
        data["ready"] = self.ready
        return data


def describe_model(
    base_url: str, name: str, key_file: Path | None = None, *, tls_cert: Path | None = None
) -> list[ModelStatus]:
    """Each version of ``name``: its workers and, from the handler's describe, what it serves."""
    path = f"/models/{urllib.parse.quote(name, safe='')}?customized=true"
    # A customized describe is queued on a worker like a request: allow it the time one takes.
    described = management_get(base_url, path, key_file, timeout_s=30.0, tls_cert=tls_cert)
    return [_model_status(name, entry) for entry in described or []]


def _model_status(name: str, entry: dict[str, Any]) -> ModelStatus:
    custom = entry.get("customizedMetadata")
    if isinstance(custom, str):  # some TorchServe paths hand it over as a JSON string
        try:
            custom = json.loads(custom)
        except ValueError:
            custom = None
    workers = [
        {"id": w.get("id"), "status": w.get("status"), "pid": w.get("pid")} for w in entry.get("workers", [])
    ]
    status = ModelStatus(name, str(entry.get("modelVersion") or ""), workers, "unknown")
    if isinstance(custom, dict):
        checkpoint = custom.get("checkpoint") or {}
        status.state = str(custom.get("state") or ("serving" if checkpoint else "unknown"))
        status.checkpoint = checkpoint.get("path")
        status.epoch = checkpoint.get("epoch")
        status.sha256 = checkpoint.get("sha256")
        status.waiting_for = custom.get("waiting_for")
    return status


def server_status(runtime_dir: Path) -> ServerStatus:
    """The server recorded in ``runtime_dir``; raises ServerError when none was started from there."""
    state = ServerState.read(Path(runtime_dir) / STATE_FILE)
    running = bool(group_members(state.pgid))
    key_file = Path(state.runtime_dir) / KEY_FILE
    status = ServerStatus(
        runtime_dir=state.runtime_dir,
        pid=state.pid,
        running=running,
        started_at=state.started_at,
        urls=asdict(state.urls),
    )
    if not running:
        return status
    management, keys = state.urls.management, key_file if key_file.exists() else None
    try:
        cert = Path(state.tls_cert) if state.tls_cert else None
        for name in registered_models(management, keys, tls_cert=cert):
            status.models += describe_model(management, name, keys, tls_cert=cert)
    except (OSError, ValueError) as exc:
        raise ServerError(
            f"The server in {state.runtime_dir} runs (pid {state.pid}), but its management API at "
            f"{management} did not answer: {exc}.",
            hint="It may still be starting; try again in a few seconds.",
        ) from None
    return status
