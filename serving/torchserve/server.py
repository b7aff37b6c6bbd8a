"""`ckptserve serve`: TorchServe plus ckptserve's defaults, started, waited for, and stopped as one unit."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from serving.errors import ServerError
from serving.torchserve import ServerSettings, TorchServeProcess, stop_from_state
from serving.torchserve.gateway.process import (
    GatewayProcess,
    GatewaySettings,
    announce_gateway,
    check_port_free,
    forget_gateway,
    gateway_from_state,
)
from serving.torchserve.gateway.process import stop_from_state as stop_gateway_from_state
from serving.torchserve.status import ModelStatus, ServerStatus, describe_model, server_status

log = logging.getLogger(__name__)

METRICS_CONFIG = Path(__file__).resolve().parent / "metrics.yaml"
# `ckptserve stop` leaves this in the runtime directory before it stops anything, so that a
# foreground server that sees its processes go knows the stop was asked for.
STOP_MARKER = "stop-requested"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """SIGTERM, SIGINT or SIGHUP arrived: stop every process of the server and exit cleanly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
        self._stopping = False
        self.ready: dict[str, int] = {}  # READY workers per model, once started

    @property
    def runtime_dir(self) -> Path:
        return self.settings.runtime_dir

    def start(self, timeout_s: float = 180.0) -> dict[str, int]:
        """Start and wait for READY workers; on failure (or StopRequested) stop everything and raise."""
        (self.runtime_dir / STOP_MARKER).unlink(missing_ok=True)
        # A live server in this runtime directory holds the gateway's port too: say that, not "port busy".
        self.torchserve.refuse_live_server()
        if self.oip_grpc_port is not None:
            check_port_free(self.settings.host, self.oip_grpc_port)  # before TorchServe's seconds of start-up
        self.torchserve.start()
        if self.oip_grpc_port is not None:
            announce_gateway(self.runtime_dir, self._gateway_settings(self.oip_grpc_port).endpoint)
        try:
            ready = self.ready = self.torchserve.wait_ready(self.settings.models, timeout_s=timeout_s)
            if self.oip_grpc_port is not None:
                self.gateway = GatewayProcess(self._gateway_settings(self.oip_grpc_port)).start()
            return ready
        except BaseException as exc:
            requested = self.stop_was_requested()
            self.stop()
            if requested and isinstance(exc, ServerError):  # `ckptserve stop` ended the start-up
                raise StopRequested(signal.SIGTERM) from None
            raise

    def _gateway_settings(self, port: int) -> GatewaySettings:
        urls, ts = self.torchserve.urls, self.torchserve
        return GatewaySettings(
            host=self.settings.host,
            port=port,
            inference=urls.grpc_inference,
            management=urls.grpc_management,
            http_inference=urls.inference,
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

    def waiting_models(self) -> list[str]:
        """A line for each model that waits for its first checkpoint (it answers 503 until then)."""
        urls, key_file = (
            self.torchserve.urls,
            self.torchserve.key_file if self.settings.auth_enabled else None,
        )
        lines = []
        for name in self.ready:
            try:
                versions: list[ModelStatus] = describe_model(
                    urls.management, name, key_file, tls_cert=self.settings.tls_cert
                )
            except (OSError, ValueError) as exc:
                log.warning("could not describe %s: %s", name, exc)
                continue
            lines += [
                f"model {name}: waiting for the first checkpoint in {m.waiting_for} "
                "(not ready: requests get 503 until one lands)"
                for m in versions
                if m.state == "waiting"
            ]
        return lines

    def detach(self) -> None:
        self.torchserve.detach()
        if self.gateway is not None:
            self.gateway.detach()

    def stop(self) -> None:
        self._stopping = True  # a signal from now on must not interrupt the stop itself
        if self.gateway is not None:
            self.gateway.stop()
        else:
            forget_gateway(self.runtime_dir)  # announced, never started
        self.torchserve.stop()
        (self.runtime_dir / STOP_MARKER).unlink(missing_ok=True)

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGTERM, SIGINT and SIGHUP raise StopRequested in the main thread, from start-up on.

        Installed before anything starts: Python's default SIGTERM (or SIGHUP, a closed terminal or
        SSH session) ends the process without stopping TorchServe and the gateway, which run in
        sessions of their own; as PID 1 (a container) a signal without a handler is ignored outright.
        Once a stop runs, further signals are ignored: they must not cut the stop short.
        """

        def raise_stop(signum: int, _frame: object) -> None:
            if not self._stopping:
                self._stopping = True
                raise StopRequested(signum)

        previous = {sig: signal.signal(sig, raise_stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_was_requested(self) -> bool:
        """True when `ckptserve stop` is stopping this server (its processes exit on purpose)."""
        return (self.runtime_dir / STOP_MARKER).exists()

    def run_until_stopped(self) -> int:
        """Block until a stop (a signal, `ckptserve stop`: exit 0) or until a process dies on its own (1)."""
        try:
            with self.stop_on_signals():
                while True:
                    failed = self._exited()
                    if failed is not None:
                        if self.stop_was_requested():
                            return 0
                        log.error(failed)
                        return 1
                    time.sleep(0.5)
        except StopRequested:
            return 0
        finally:
            self.stop()

    def _exited(self) -> str | None:
        if not self.torchserve.running():
            return f"TorchServe exited; see {self.settings.logs}"
        if self.gateway is not None and not self.gateway.running():
            return f"the OIP gRPC gateway exited; see {self.gateway.log_path}"
        return None


def stop_server(runtime_dir: str | Path) -> bool:
    """Stop the server recorded in ``runtime_dir`` (and its OIP gateway); False if none was running."""
    runtime_dir = Path(runtime_dir)
    if runtime_dir.is_dir():
        (runtime_dir / STOP_MARKER).touch()  # a foreground `ckptserve serve` then exits cleanly
    gateway = stop_gateway_from_state(runtime_dir)
    try:
        return stop_from_state(runtime_dir) or gateway
    except ServerError:
        return gateway


def status(runtime_dir: str | Path) -> ServerStatus:
    """The server recorded in ``runtime_dir``: processes, ports (the OIP gateway's too), models, workers."""
    found = server_status(Path(runtime_dir))
    gateway = gateway_from_state(Path(runtime_dir)) if found.running else None
    if gateway is not None:
        endpoint, state = gateway
        # a background server's gateway has no supervisor: its death must show, not just its port vanish
        if state == "listening":
            found.oip_grpc = endpoint
        elif state == "starting":
            found.oip_grpc_starting = endpoint
        else:
            found.oip_grpc_exited = endpoint
    return found
