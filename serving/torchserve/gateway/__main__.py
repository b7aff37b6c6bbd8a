"""``python -m serving.torchserve.gateway``: the OIP v2 gRPC gateway in front of TorchServe, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import grpc

from serving.errors import CkptServeError, ConfigError
from serving.torchserve.gateway.oip_gateway import start_gateway
from serving.torchserve.gateway.upstream import TokenFile, TorchServeUpstream

log = logging.getLogger("ckptserve.grpc")


async def _group_gone(pgid: int) -> None:
    """Return once TorchServe's process group has no process left (the gateway must not outlive it)."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> int:
    tokens = TokenFile(Path(args.key_file)) if args.key_file else None
    cert = Path(args.tls_cert) if args.tls_cert else None
    upstream = TorchServeUpstream(
        args.inference, args.management, args.http_inference, tokens=tokens, tls_cert=cert
    )
    credentials = None
    if cert is not None:
        if not args.tls_key:
            raise ConfigError("--tls-cert needs --tls-key (the certificate's private key).")
        credentials = grpc.ssl_server_credentials([(Path(args.tls_key).read_bytes(), cert.read_bytes())])
    server, port = await start_gateway(args.listen, upstream, tokens=tokens, credentials=credentials)
    log.info("OIP v2 gRPC gateway on port %d, forwarding to TorchServe at %s", port, args.inference)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
    if args.watch_pgid:
        waiters.append(asyncio.ensure_future(_group_gone(args.watch_pgid)))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    log.info("stopping the gateway")
    await server.stop(grace=2.0)  # in-flight calls finish; new ones are refused
    with contextlib.suppress(Exception):
        await upstream.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.torchserve.gateway", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8001", help="HOST:PORT of the OIP v2 gRPC API")
    parser.add_argument("--inference", default="127.0.0.1:7070", help="TorchServe's gRPC inference API")
    parser.add_argument("--management", default="127.0.0.1:7071", help="TorchServe's gRPC management API")
    parser.add_argument(
        "--http-inference",
        default="http://127.0.0.1:8080",
        help="TorchServe's HTTP inference API (the data path), http:// or https:// URL",
    )
    parser.add_argument("--key-file", help="TorchServe's key_file.json, when token authorization is on")
    parser.add_argument("--tls-cert", help="PEM certificate: serve TLS, and reach TorchServe's TLS with it")
    parser.add_argument("--tls-key", help="the certificate's PEM private key")
    parser.add_argument("--watch-pgid", type=int, help="exit when this process group (TorchServe) is gone")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s [%(levelname)s] %(name)s - %(message)s",
    )
    try:
        return asyncio.run(run(args))
    except CkptServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
