"""`ckptserve serve`: TorchServe plus ckptserve's defaults, started, waited for, and stopped as one unit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from serving.errors import ServerError
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
        metrics_config=METRICS_CONFIG if METRICS_CONFIG.is_file() else None,
    )


class Server:
    """One TorchServe process with ckptserve's settings."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.torchserve = TorchServeProcess(settings)

    @property
    def runtime_dir(self) -> Path:
        return self.settings.runtime_dir

    def start(self, timeout_s: float = 180.0) -> dict[str, int]:
        """Start and wait for READY workers; on failure stop everything and raise the worker's reason."""
        self.torchserve.start()
        try:
            return self.torchserve.wait_ready(self.settings.models, timeout_s=timeout_s)
        except BaseException:
            self.torchserve.stop()
            raise

    def describe_endpoints(self) -> str:
        urls = self.torchserve.urls
        return "\n".join(
            [
                f"inference (HTTP)   {urls.inference}/predictions/NAME, /v2/models/NAME/infer",
                f"health             {urls.inference}/ping",
                f"management         {urls.management}/models",
                f"metrics            {urls.metrics}/metrics",
                f"gRPC (TorchServe)  {urls.grpc_inference}",
                f"logs               {self.settings.logs}",
            ]
        )

    def detach(self) -> None:
        self.torchserve.detach()

    def stop(self) -> None:
        self.torchserve.stop()

    def run_until_stopped(self) -> int:
        """Block until SIGINT/SIGTERM (then stop gracefully) or until TorchServe exits on its own."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            if not self.torchserve.running():
                log.error("TorchServe exited; see %s", self.settings.logs)
                return 1
        self.stop()
        return 0


def stop_server(runtime_dir: str | Path) -> bool:
    """Stop the server recorded in ``runtime_dir``; False if none was running."""
    try:
        return stop_from_state(Path(runtime_dir))
    except ServerError:
        return False
