"""The ``ckptserve`` command: thin wrappers over the library, printing for people (or JSON for machines)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

from serving.errors import CkptServeError, RequestError
from serving.wire import JSON_TYPE, NPY_MAGIC, NPY_TYPE

Command = Callable[[argparse.Namespace], int]


def _inspect(args: argparse.Namespace) -> int:
    from serving.checkpoints.summary import summarize

    summary = summarize(
        args.checkpoint,
        trust_pickle=args.trust_pickle,
        state_dict_key=args.state_dict_key,
        safe_globals=args.safe_global,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    rows = [
        ("path", summary["path"]),
        ("layout", f"{summary['layout']} ({summary['kind']})"),
        ("weights entry", summary["state_dict_key"] or "-"),
        ("size", _bytes(summary["size_bytes"])),
        ("tensors", f"{summary['tensors']:,}"),
        ("parameters", f"{summary['parameters']:,} ({_bytes(summary['tensor_bytes'])})"),
        ("dtypes", ", ".join(f"{k} x{v}" for k, v in summary["dtypes"].items())),
        ("saved on", ", ".join(summary["saved_devices"]) or "-"),
        ("epoch", summary["epoch"] if summary["epoch"] is not None else "-"),
        ("loss", summary["loss"] if summary["loss"] is not None else "-"),
        ("fingerprint", summary["fingerprint"]),
        ("sha256", summary["sha256"]),
    ]
    rows += [
        (f"meta.{k}", json.dumps(v)) for k, v in summary["metadata"].items() if k not in ("epoch", "loss")
    ]
    # Metadata keys and text come from the file: escape control characters, or a checkpoint could
    # drive the operator's terminal (ANSI/OSC sequences) or forge lines of the table.
    rows = [(_printable(k), _printable(v)) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _printable(value: object) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(value))


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def _package(args: argparse.Namespace) -> int:
    from serving.torchserve.package import package_model

    path = package_model(
        args.name,
        model_store=args.model_store,
        model_file=args.model_file,
        config=args.config,
        architecture=args.architecture,
        checkpoint=args.checkpoint,
        watch_dir=args.watch_dir,
        extra_files=args.extra_files,
        version=args.version,
        archive_format=args.archive_format,
    )
    print(f"archive: {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serving.torchserve.server import Server, StopRequested, settings_from_args

    settings = settings_from_args(args)
    if (warning := settings.auth_warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    server = Server(settings, oip_grpc_port=None if args.no_oip_grpc else args.oip_grpc_port)
    with server.stop_on_signals():  # from the first moment: a signal during start-up stops what started
        try:
            server.start(timeout_s=args.timeout)
            print(server.describe_endpoints())
            for line in server.waiting_models():
                print(line)
            if not args.foreground:
                server.detach()
                command = f"ckptserve stop --runtime-dir {server.runtime_dir}"
                print(f"running in the background; stop it with: {command}")
                return 0
            return server.run_until_stopped()
        except StopRequested as stop:
            server.stop()
            print(f"stopped ({stop})")
            return 0


def _stop(args: argparse.Namespace) -> int:
    from serving.torchserve.server import stop_server

    stopped = stop_server(args.runtime_dir)
    print("stopped" if stopped else f"no server was running from {args.runtime_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from serving.client.common import error_document, parse_error_body
    from serving.client.http import HttpClient

    if (args.json is None) == (args.file is None):
        raise RequestError("Give the request body with exactly one of --json or --file.")
    body = args.json.encode() if args.json is not None else Path(args.file).read_bytes()
    content_type = NPY_TYPE if body.startswith(NPY_MAGIC) else JSON_TYPE
    if args.grpc:
        return _predict_grpc(args, body, content_type)
    with HttpClient(_target(args, "inference"), tls_ca=args.tls_ca, **_credentials(args)) as client:
        status, data = client.request("POST", f"/predictions/{args.name}", body, content_type)
    if status >= 400:  # TorchServe's own errors (an unknown model) in the handler's shape, with a hint
        print(json.dumps(error_document(status, parse_error_body(data)), indent=2))
        return 1
    try:
        print(json.dumps(json.loads(data), indent=2))
    except ValueError:
        print(f"<{len(data)} bytes of {content_type}>")
    return 0


def _target(args: argparse.Namespace, endpoint: str) -> str:
    """Where to send a request: --host/--port when given, else the server running from --runtime-dir."""
    from serving.torchserve.state import STATE_FILE, ServerState

    default_port = {"inference": 8080, "grpc_inference": 7070}[endpoint]
    state_path = Path(args.runtime_dir) / STATE_FILE
    if args.port is None and args.host is None and state_path.exists():
        return str(getattr(ServerState.read(state_path).urls, endpoint))
    host = args.host or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    port = args.port or default_port
    scheme = "https" if args.tls_ca else "http"
    return f"{host}:{port}" if endpoint.startswith("grpc") else f"{scheme}://{host}:{port}"


def _predict_grpc(args: argparse.Namespace, body: bytes, content_type: str) -> int:
    from serving.client.grpc import GrpcClient
    from serving.error_codes import error_from_body

    with GrpcClient(_target(args, "grpc_inference"), tls_ca=args.tls_ca, **_credentials(args)) as client:
        data = client.request(args.name, body)  # TorchServe's Predictions: the handler's bytes, as over HTTP
    try:
        print(json.dumps(json.loads(data), indent=2))
    except ValueError:
        print(f"<{len(data)} bytes of {content_type}>")
    return 1 if error_from_body(data) is not None else 0


class Credentials(TypedDict):
    token: str | None
    key_file: str | None


def _credentials(args: argparse.Namespace) -> Credentials:
    """--token, else $CKPTSERVE_TOKEN, else --key-file, else a local server's key file in --runtime-dir."""
    key_file = args.key_file
    if key_file is None:
        local = Path(args.runtime_dir) / "key_file.json"
        key_file = str(local) if local.is_file() else None
    return {"token": args.token, "key_file": key_file}


def _status(args: argparse.Namespace) -> int:
    from serving.torchserve.gateway.process import LOG_FILE
    from serving.torchserve.server import status

    found = status(args.runtime_dir)
    if args.quiet:
        pass
    elif args.json:
        print(json.dumps(found.to_dict(), indent=2))
    elif not found.running:
        print(f"no server is running from {found.runtime_dir} (pid {found.pid} has exited)")
    else:
        urls = found.urls
        print(f"server     pid {found.pid}, runtime dir {found.runtime_dir}")
        print(f"inference  {urls['inference']}   management {urls['management']}   metrics {urls['metrics']}")
        grpc = f"gRPC {urls['grpc_inference']}" + (
            f"   OIP v2 gRPC {found.oip_grpc}" if found.oip_grpc else ""
        )
        if found.oip_grpc_starting:
            grpc += f"   OIP v2 gRPC {found.oip_grpc_starting} starting (not listening yet)"
        if found.oip_grpc_exited:
            grpc += (
                f"   OIP v2 gRPC {found.oip_grpc_exited} EXITED (see {LOG_FILE} in the log dir; "
                "`ckptserve stop`, then serve again)"
            )
        print(f"           {grpc}")
        for model in found.models:
            workers = ", ".join(f"{w['id']} {w['status']}" for w in model.workers) or "none"
            if model.state == "waiting":
                live = f"waiting for the first checkpoint in {model.waiting_for}"
            elif model.checkpoint:
                live = f"{model.checkpoint} (epoch {model.epoch if model.epoch is not None else '-'}, "
                live += f"sha256 {str(model.sha256)[:12]})"
            else:
                live = "unknown (no ckptserve handler description)"
            version = f" v{model.version}" if model.version else ""
            print(f"model      {model.name}{version}: {'ready' if model.ready else 'NOT ready'}")
            print(f"  workers  {len(model.workers)}: {workers}")
            print(f"  serving  {live}")
    return 0 if found.ready or not args.ready else 3


def _demo(args: argparse.Namespace) -> int:
    from serving.app.demo import run_demo

    return run_demo(workdir=Path(args.workdir), epochs=args.epochs, keep_running=args.keep_running)


def _pin(args: argparse.Namespace) -> int:
    from serving.files import atomic_write
    from serving.reload.candidates import PIN_FILE

    watch = Path(args.watch_dir)
    if args.clear:
        (watch / PIN_FILE).unlink(missing_ok=True)
        print(f"unpinned {watch}: servers with policy 'pinned' fall back to the configured pin")
        return 0
    if not args.name or not (watch / args.name).exists():
        raise RequestError(f"Give a checkpoint that exists in {str(watch)!r}, found {args.name!r}.")
    atomic_write(watch / PIN_FILE, lambda fh: fh.write(f"{args.name}\n".encode()))
    print(f"pinned {args.name}: workers with policy 'pinned' switch to it at their next poll")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="show what a checkpoint holds, without building a model")
    inspect.add_argument("checkpoint", help="a checkpoint file or directory (any supported layout)")
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_load_options(inspect)
    inspect.set_defaults(run=_inspect)

    package = commands.add_parser(
        "package", help="build a TorchServe archive (.mar) with ckptserve's handler"
    )
    package.add_argument("name", help="the model name (used in URLs: /predictions/NAME)")
    package.add_argument("--architecture", help="MODULE:CLASS of the model, e.g. model:DigitsCNN")
    package.add_argument("--model-file", help="the .py file that defines the architecture")
    package.add_argument("--checkpoint", help="a checkpoint to bundle into the archive")
    package.add_argument("--watch-dir", help="serve checkpoints from this directory, hot-reloading new ones")
    package.add_argument("--config", help="a model-config.yaml (TorchServe keys + a handler: section)")
    package.add_argument("--extra-files", nargs="*", default=[], help="files the handler needs (labels...)")
    package.add_argument("--model-store", default="model_store", help="where the archive goes")
    package.add_argument("--version", default="1.0")
    package.add_argument("--archive-format", choices=["default", "no-archive"], default="default")
    package.set_defaults(run=_package)

    serve = commands.add_parser(
        "serve", help="start TorchServe on a model store and wait until models are ready"
    )
    _add_server_options(serve)
    serve.add_argument(
        "--foreground", action="store_true", help="stay attached; stop the server on Ctrl-C/TERM"
    )
    serve.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for READY workers")
    serve.add_argument(
        "--oip-grpc-port", type=int, default=8001, help="Open Inference Protocol v2 gRPC gateway"
    )
    serve.add_argument("--no-oip-grpc", action="store_true", help="do not start the OIP v2 gRPC gateway")
    serve.set_defaults(run=_serve)

    stop = commands.add_parser("stop", help="stop a server started with `ckptserve serve`")
    stop.add_argument(
        "--runtime-dir", default=str(default_runtime_dir()), help="the server's runtime directory"
    )
    stop.set_defaults(run=_stop)

    status = commands.add_parser(
        "status", help="show the running server: ports, models, workers, checkpoints"
    )
    status.add_argument(
        "--runtime-dir", default=str(default_runtime_dir()), help="the server's runtime directory"
    )
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.add_argument("--quiet", action="store_true", help="print nothing (with --ready: a probe)")
    status.add_argument(
        "--ready",
        action="store_true",
        help="exit 3 unless every model serves a checkpoint (a readiness probe)",
    )
    status.set_defaults(run=_status)

    predict = commands.add_parser("predict", help="send one request and print the answer")
    predict.add_argument("name", help="the model name")
    predict.add_argument("--json", help="the JSON body, e.g. '{\"instances\": [...]}'")
    predict.add_argument("--file", help="a file with the body (JSON or .npy)")
    predict.add_argument("--host", help="default: the server running from --runtime-dir, else 127.0.0.1")
    predict.add_argument(
        "--port", type=int, help="default: the running server's port, else 8080 (7070 with --grpc)"
    )
    predict.add_argument(
        "--grpc", action="store_true", help="call TorchServe's gRPC Predictions instead of HTTP"
    )
    predict.add_argument(
        "--token", help="TorchServe's inference key, when token auth is on (default: $CKPTSERVE_TOKEN)"
    )
    predict.add_argument("--key-file", help="TorchServe's key_file.json to read the inference key from")
    predict.add_argument(
        "--runtime-dir",
        default=str(default_runtime_dir()),
        help="find the local server here: its ports, and its key_file.json when no key is given",
    )
    predict.add_argument("--tls-ca", help="PEM CA certificate: use HTTPS / TLS and verify the server with it")
    predict.set_defaults(run=_predict)

    pin = commands.add_parser("pin", help="choose the checkpoint served under policy 'pinned' (a reload)")
    pin.add_argument("watch_dir", help="the model's watch_dir")
    pin.add_argument("name", nargs="?", help="a checkpoint file (or directory) name inside it")
    pin.add_argument("--clear", action="store_true", help="remove the pin")
    pin.set_defaults(run=_pin)

    demo = commands.add_parser("demo", help="train the embedded model, serve it, query it, hot-reload it")
    demo.add_argument("--workdir", default=".ckptserve/demo", help="where checkpoints and the archive go")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--keep-running", action="store_true", help="leave the server up at the end")
    demo.set_defaults(run=_demo)
    return parser


def default_runtime_dir() -> Path:
    """Where `serve` keeps its pid/state/sockets by default (`stop` looks there too)."""
    return Path(tempfile.gettempdir()) / f"ckptserve-{os.getuid()}"


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-store", default="model_store", help="a directory of .mar archives")
    parser.add_argument("--models", nargs="*", default=["ALL"], help="NAME or NAME=FILE.mar (default: ALL)")
    parser.add_argument("--host", default="127.0.0.1", help="interface for inference, gRPC and metrics")
    parser.add_argument("--management-host", default="127.0.0.1", help="interface for the management APIs")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--management-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--grpc-port", type=int, default=7070, help="TorchServe gRPC inference")
    parser.add_argument("--grpc-management-port", type=int, default=7071)
    parser.add_argument("--workers", type=int, help="workers per model (default: minWorkers of its config)")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-auth",
        dest="token_auth",
        action="store_const",
        const=True,
        default=None,
        help="require TorchServe's keys even on loopback (default: on whenever a host is beyond loopback)",
    )
    auth.add_argument(
        "--no-token-auth",
        dest="token_auth",
        action="store_const",
        const=False,
        help="serve without keys even beyond loopback (warns: anyone who reaches the ports may call them)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate (chain): HTTPS on every HTTP API, TLS on gRPC")
    parser.add_argument("--tls-key", help="the certificate's private key: unencrypted PKCS#8 RSA PEM")
    parser.add_argument("--runtime-dir", default=str(default_runtime_dir()), help="pid, state, sockets")
    parser.add_argument("--log-dir", help="TorchServe's logs (default: $LOG_LOCATION or RUNTIME_DIR/logs)")


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled Python objects (runs their code)"
    )
    parser.add_argument("--state-dict-key", help="the checkpoint entry that holds the model's weights")
    parser.add_argument(
        "--safe-global", action="append", default=[], metavar="MODULE.NAME", help="allow one pickled class"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    run: Command = args.run
    try:
        return run(args)
    except CkptServeError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  what to do: {err.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
