"""`ckptserve serve`: TorchServe plus ckptserve's defaults, started, waited for, and stopped as one unit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from serving.errors import ServerError
from serving.grpc.process import GatewayProcess, GatewaySettings, check_port_free
from serving.grpc.process import stop_from_state as stop_gateway_from_state
from serving.torchserve import ServerSettings, TorchServeProcess, stop_from_state

log = logging.getLogger(__name__)

METRICS_CONFIG = Path(__file__).resolve().parent / "torchserve" / "metrics.yaml"


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from `ckptserve serve` flags."""
    log_dir = args.log_dir or os.environ.get("LOG_LOCATION") or None
    return ServerSettings(
        model_store=Path(args.model_store),
        runtime_dir=Path(args.runtime_dir),
        log_dir=Path(log_dir) if log_dir else None,
        models=list(args.models),
        host=args.host,
        management_host=args.management_host,
        http_port=args.http_port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
        grpc_inference_port=args.grpc_port,
        grpc_management_port=args.grpc_management_port,
        workers=args.workers,
        token_auth=args.token_auth,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        metrics_config=METRICS_CONFIG if METRICS_CONFIG.is_file() else None,
    )


class Server:
    """One TorchServe process with ckptserve's settings, and the OIP v2 gRPC gateway when given a port."""

    def __init__(self, settings: ServerSettings, *, oip_grpc_port: int | None = None) -> None:
        self.settings = settings
        self.torchserve = TorchServeProcess(settings)
        self.oip_grpc_port = oip_grpc_port
        self.gateway: GatewayProcess | None = None

    @property
    def runtime_dir(self) -> Path:
        return self.settings.runtime_dir

    def start(self, timeout_s: float = 180.0) -> dict[str, int]:
        """Start and wait for READY workers; on failure stop everything and raise the worker's reason."""
        if self.oip_grpc_port is not None:
            check_port_free(self.settings.host, self.oip_grpc_port)  # before TorchServe's seconds of start-up
        self.torchserve.start()
        try:
            ready = self.torchserve.wait_ready(self.settings.models, timeout_s=timeout_s)
            if self.oip_grpc_port is not None:
                self.gateway = GatewayProcess(self._gateway_settings(self.oip_grpc_port)).start()
            return ready
        except BaseException:
            self.stop()
            raise

    def _gateway_settings(self, port: int) -> GatewaySettings:
        urls, ts = self.torchserve.urls, self.torchserve
        return GatewaySettings(
            host=self.settings.host,
            port=port,
            inference=urls.grpc_inference,
            management=urls.grpc_management,
            runtime_dir=self.runtime_dir,
            log_dir=self.settings.logs,
            key_file=ts.key_file if self.settings.auth_enabled else None,
            tls_cert=self.settings.tls_cert,
            tls_key=self.settings.tls_key,
            watch_pgid=ts.pid,  # the wrapper leads TorchServe's process group
        )

    def describe_endpoints(self) -> str:
        urls = self.torchserve.urls
        return "\n".join(
            [
                f"inference (HTTP)   {urls.inference}/predictions/NAME, /v2/models/NAME/infer",
                f"health             {urls.inference}/ping",
                f"management         {urls.management}/models",
                f"metrics            {urls.metrics}/metrics",
                f"gRPC (TorchServe)  {urls.grpc_inference}",
                *(
                    [f"gRPC (OIP v2)      {urls.grpc_inference.rsplit(':', 1)[0]}:{self.oip_grpc_port}"]
                    if self.gateway is not None
                    else []
                ),
                f"logs               {self.settings.logs}",
                f"token auth         {self._auth_line()}",
                *([f"TLS                {self.settings.tls_cert}"] if self.settings.tls else []),
            ]
        )

    def _auth_line(self) -> str:
        if not self.settings.auth_enabled:
            return "off"
        return f"on: send 'Authorization: Bearer <key>', keys in {self.torchserve.key_file}"

    def detach(self) -> None:
        self.torchserve.detach()
        if self.gateway is not None:
            self.gateway.detach()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.torchserve.stop()

    def run_until_stopped(self) -> int:
        """Block until SIGINT/SIGTERM (then stop gracefully) or until TorchServe exits on its own."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            if not self.torchserve.running():
                log.error("TorchServe exited; see %s", self.settings.logs)
                self.stop()
                return 1
            if self.gateway is not None and not self.gateway.running():
                log.error("the OIP gRPC gateway exited; see %s", self.gateway.log_path)
                self.stop()
                return 1
        self.stop()
        return 0


def stop_server(runtime_dir: str | Path) -> bool:
    """Stop the server recorded in ``runtime_dir`` (and its OIP gateway); False if none was running."""
    gateway = stop_gateway_from_state(Path(runtime_dir))
    try:
        return stop_from_state(Path(runtime_dir)) or gateway
    except ServerError:
        return gateway
