"""Typed settings for one TorchServe server and the config.properties rendered from them."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from serving.errors import ConfigError

log = logging.getLogger(__name__)

# Shipped with the package: TorchServe's own default writes several lines per request.
DEFAULT_LOG_CONFIG = Path(__file__).with_name("log4j2.xml")

# TorchServe's own rule for model names (torch-model-archiver refuses others).
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")

# sun_path in struct sockaddr_un on Linux, terminating NUL included.
_MAX_UNIX_SOCKET_PATH = 108

# Keys that a typed field owns: setting them through ``extra`` would silently fight the field.
_OWNED_KEYS = frozenset(
    {
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_address",
        "grpc_management_address",
        "grpc_inference_port",
        "grpc_management_port",
        "model_store",
        "load_models",
        "default_workers_per_model",
        "job_queue_size",
        "metrics_config",
        "metrics_mode",
        "disable_token_authorization",
        "ts_open_inference_protocol",
        "certificate_file",
        "private_key_file",
        "enable_grpc_ssl",
        "keystore",
    }
)

# TorchServe's keys expire after 60 minutes unless rotated through its /token API, and it cannot be
# given a key: a server meant to run for weeks would lock every client out after an hour. The keys
# are random per start and die with the process; `extra` may set a shorter life for those who rotate.
_TOKEN_LIFETIME_MIN = str(10 * 365 * 24 * 60)

# DER of the rsaEncryption algorithm identifier (1.2.840.113549.1.1.1): TorchServe reads keys as RSA only.
_RSA_OID = bytes.fromhex("06092a864886f70d010101")


@dataclass(frozen=True)
class ServerSettings:
    """Everything ckptserve decides about one TorchServe process.

    ``runtime_dir`` is private to this server: TorchServe keeps its pid file (under TMPDIR), its worker
    sockets and its unpacked archives (under TEMP) there, so two servers on one machine never meet.
    """

    model_store: Path
    runtime_dir: Path
    log_dir: Path | None = None  # None: runtime_dir / "logs"
    models: list[str] = field(default_factory=list)  # "name", "name=file.mar" or "ALL"
    host: str = "127.0.0.1"
    # The management APIs (8081/7071) scale and describe models: loopback unless asked otherwise,
    # even when inference listens on every interface (a pod, a container).
    management_host: str = "127.0.0.1"
    http_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    workers: int | None = None  # None: TorchServe's default, or minWorkers of each model-config.yaml
    job_queue_size: int | None = None
    # None: on whenever an API listens beyond loopback (TorchServe's key_file.json holds the keys), off
    # on loopback; False beyond loopback is an explicit opt-out (auth_warning() says what it opens).
    token_auth: bool | None = None
    # PEM certificate (chain) and PKCS#8 RSA key: HTTPS on every HTTP API and TLS on TorchServe's gRPC.
    tls_cert: Path | None = None  # made absolute with the other paths below
    tls_key: Path | None = None
    # TorchServe's own OIP mode adds a gRPC service under a non-standard package whose handler
    # contract differs (a wrong answer kills the worker); /v2/models/NAME/infer over HTTP works
    # without it, and ckptserve's gateway serves the standard OIP gRPC API. Off by default.
    open_inference: bool = False
    metrics_config: Path | None = None
    log_config: Path | None = DEFAULT_LOG_CONFIG  # None: TorchServe's verbose built-in log4j2.xml
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise once so every later use sees absolute paths (TorchServe runs with another cwd).
        for name in ("model_store", "runtime_dir", "log_dir", "metrics_config", "log_config"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser().resolve())
        for name in ("tls_cert", "tls_key"):
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, Path(value).expanduser().resolve())
        if self.log_dir is None:
            object.__setattr__(self, "log_dir", self.runtime_dir / "logs")
        object.__setattr__(self, "models", list(self.models))
        object.__setattr__(self, "extra", {str(k): str(v) for k, v in self.extra.items()})

    # --- derived values -------------------------------------------------------------------------

    @property
    def logs(self) -> Path:
        """``log_dir``, typed as a Path (it is never None after construction)."""
        assert self.log_dir is not None
        return self.log_dir

    @property
    def url_host(self) -> str:
        """The host as it goes into a URL: IPv6 literals need brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def http_url(self, port: int, host: str | None = None) -> str:
        host = host or self.host
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def loopback_only(self) -> bool:
        """Whether every API listens on loopback only (nobody off this machine can connect)."""
        return is_loopback(self.host) and is_loopback(self.management_host)

    @property
    def auth_enabled(self) -> bool:
        """Token authorization as TorchServe will run it: on beyond loopback unless explicitly opted out."""
        return self.token_auth if self.token_auth is not None else not self.loopback_only

    def auth_warning(self) -> str | None:
        """What an explicit opt-out of token authorization beyond loopback opens, or None."""
        if self.auth_enabled or self.loopback_only:
            return None
        exposed = self.host if not is_loopback(self.host) else self.management_host
        return (
            f"token authorization is OFF while TorchServe listens on {exposed}: anyone who can reach "
            "these ports can call every API there without a key. Allow only trusted networks in "
            "(a firewall, a Kubernetes NetworkPolicy), or drop --no-token-auth."
        )

    @property
    def ports(self) -> dict[str, int]:
        return {
            "http": self.http_port,
            "management": self.management_port,
            "metrics": self.metrics_port,
            "grpc_inference": self.grpc_inference_port,
            "grpc_management": self.grpc_management_port,
        }

    # --- validation -----------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ConfigError naming the setting, what was found and what to do."""
        for name in ("host", "management_host"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value):
                raise ConfigError(f"{name}: expected an IP address or host name, found {value!r}.")
        ports = self.ports
        for name, port in ports.items():
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(
                    f"{name}_port: expected a TCP port between 1 and 65535, found {port!r}.",
                    hint="Pick a free port, or use serving.torchserve.free_port() in tests.",
                )
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ConfigError(
                    f"{name}_port and {seen[port]}_port are both {port}: "
                    "TorchServe needs five distinct ports.",
                    hint="Give each endpoint its own port.",
                )
            seen[port] = name
        if not self.model_store.is_dir():
            raise ConfigError(
                f"model_store: expected a directory of model archives, "
                f"found no directory at {self.model_store}.",
                hint="Create it and build archives into it with serving.torchserve.build_archive().",
            )
        socket_path = self.runtime_dir / ".ts.sock.65535"
        if len(str(socket_path).encode()) >= _MAX_UNIX_SOCKET_PATH:
            raise ConfigError(
                f"runtime_dir: TorchServe's worker sockets go there, and {socket_path} is longer than the "
                f"{_MAX_UNIX_SOCKET_PATH - 1} bytes a Unix socket path may have.",
                hint="Choose a shorter runtime directory (e.g. under /tmp or /run).",
            )
        for entry in self.models:
            self._validate_model_entry(entry)
        for name in ("workers", "job_queue_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}: expected a positive whole number or None, found {value!r}.")
        for name in ("metrics_config", "log_config"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(
                    f"{name}: expected a file, found nothing at {path}.",
                    hint=f"Fix the path, or leave {name} unset to use the default.",
                )
        self._validate_tls()
        for key, value in self.extra.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
                raise ConfigError(f"extra: {key!r} is no TorchServe config.properties key.")
            if "\n" in value or "\r" in value:
                raise ConfigError(f"extra[{key!r}]: expected one line, found a line break.")
            if key in _OWNED_KEYS:
                raise ConfigError(
                    f"extra[{key!r}]: this key is set from a typed setting, not from extra.",
                    hint="Set the matching ServerSettings field instead (ports, host, workers, ...).",
                )

    def _validate_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "tls_cert and tls_key: expected both (or neither), found only one.",
                hint="Give the certificate with --tls-cert and its private key with --tls-key.",
            )
        if self.tls_cert is None or self.tls_key is None:
            return
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if not path.is_file():
                raise ConfigError(f"{name}: expected a PEM file, found nothing at {path}.")
        if b"-----BEGIN CERTIFICATE-----" not in self.tls_cert.read_bytes():
            raise ConfigError(f"tls_cert: expected a PEM certificate in {self.tls_cert}, found none.")
        # TorchServe's HTTPS reads RSA keys only, and its gRPC server (grpc-java) PKCS#8 only.
        key = self.tls_key.read_text(errors="replace")
        body = re.search(r"-----BEGIN PRIVATE KEY-----(.*?)-----END PRIVATE KEY-----", key, re.S)
        try:
            der = base64.b64decode("".join(body.group(1).split())) if body else b""
        except ValueError:
            der = b""
        if _RSA_OID not in der[:32]:
            raise ConfigError(
                f"tls_key: expected an unencrypted PKCS#8 RSA key ('BEGIN PRIVATE KEY') in {self.tls_key}.",
                hint="TorchServe reads no other kind. Convert it: "
                "openssl pkcs8 -topk8 -nocrypt -in KEY.pem -out KEY.pkcs8.pem (an RSA key).",
            )

    def _validate_model_entry(self, entry: str) -> None:
        if entry == "ALL":
            return
        name, sep, target = entry.partition("=")
        if not sep and _MODEL_NAME.match(name) and _archive_of(name, self.model_store) is None:
            found = sorted(p.name for p in self.model_store.iterdir() if p.suffix == ".mar" or p.is_dir())
            raise ConfigError(
                f"models: expected {name}.mar (or a {name}/ folder) in the model store {self.model_store} "
                f"for {entry!r}, found {', '.join(found) or 'nothing'}.",
                hint=f"Build it with `ckptserve package {name} --model-store {self.model_store} ...`, "
                "or name an archive with NAME=FILE.mar.",
            )
        if not _MODEL_NAME.match(name) or (sep and not target):
            raise ConfigError(
                f"models: expected 'NAME', 'NAME=FILE.mar' or 'ALL', found {entry!r}.",
                hint="Model names use letters, digits, '_', '-' and '.', and start with a letter or digit.",
            )
        if sep and "://" not in target and not (self.model_store / target).exists():
            raise ConfigError(
                f"models: {entry!r} names {target}, which is not in the model store {self.model_store}.",
                hint="Build the archive into the model store first (ckptserve build / build_archive()).",
            )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; any other name may resolve beyond this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def archive_entries(entries: list[str], model_store: Path) -> list[str]:
    """``--models`` entries as TorchServe wants them: a bare NAME becomes NAME=NAME.mar (or NAME=NAME
    for a no-archive folder); TorchServe itself would look for a file called NAME and register nothing."""
    resolved = []
    for entry in entries:
        name, sep, _ = entry.partition("=")
        archive = None if sep or entry == "ALL" else _archive_of(name, model_store)
        resolved.append(f"{name}={archive}" if archive else entry)
    return resolved


def _archive_of(name: str, model_store: Path) -> str | None:
    for candidate in (f"{name}.mar", name):
        if (model_store / candidate).exists():
            return candidate
    return None


def model_names(entries: list[str]) -> list[str]:
    """The model names in ``--models`` entries ("name=file.mar" -> "name"); "ALL" names none."""
    return [entry.partition("=")[0] for entry in entries if entry != "ALL"]


# --- config.properties --------------------------------------------------------------------------


def _escape(value: str) -> str:
    # java.util.Properties treats backslashes as escapes, trims leading blanks, and may read the file
    # as ISO-8859-1: anything beyond ASCII goes in as \\uXXXX (UTF-16 code units).
    escaped = value.replace("\\", "\\\\")
    if escaped[:1] in (" ", "\t"):
        escaped = "\\" + escaped
    if escaped.isascii():
        return escaped
    units = escaped.encode("utf-16-be")
    return "".join(
        chr(code) if code < 0x7F else f"\\u{code:04x}"
        for code in (int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2))
    )


def _java_regex_literal(text: str) -> str:
    # Java regex accepts a backslash before any non-alphanumeric character; TorchServe splits
    # allowed_urls on commas, so a comma has to be spelled as a hex escape.
    out = []
    for char in text:
        if char == ",":
            out.append("\\x2C")
        elif char.isalnum() or char in "/_":
            out.append(char)
        else:
            out.append("\\" + char)
    return "".join(out)


def _grpc_address(host: str) -> str:
    # gRPC keys take a bare address; a name such as "localhost" is resolved by TorchServe itself.
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def render_properties(settings: ServerSettings) -> str:
    """A config.properties with safe production defaults for ``settings``.

    Loopback by default, model-registration API off, model URLs limited to the local model store,
    Prometheus metrics, no per-model pip installs. Config snapshots are switched off by the ``--ncs``
    flag that TorchServeProcess passes (TorchServe has no config key for it). ``settings.extra`` may
    override these policy keys (with a warning in the log) but not the keys a typed setting owns.
    """
    settings.validate()
    props: dict[str, str] = {
        "inference_address": settings.http_url(settings.http_port),
        "management_address": settings.http_url(settings.management_port, settings.management_host),
        "metrics_address": settings.http_url(settings.metrics_port),
        "grpc_inference_address": _grpc_address(settings.host),
        "grpc_inference_port": str(settings.grpc_inference_port),
        "grpc_management_address": _grpc_address(settings.management_host),
        "grpc_management_port": str(settings.grpc_management_port),
        "model_store": str(settings.model_store),
        # Registering models over HTTP would let any caller load arbitrary code: keep it off.
        "enable_model_api": "false",
        # Even if the API were switched on, only archives from our own store may be loaded.
        "allowed_urls": f"file://{_java_regex_literal(str(settings.model_store))}/.*",
        "metrics_mode": "prometheus",
        "enable_metrics_api": "true",
        "install_py_dep_per_model": "false",
        # Workers hand the handler raw bytes: ckptserve's codecs parse JSON once, and a malformed body
        # becomes a clean 400 instead of a logged traceback from TorchServe's own decoder.
        "decode_input_request": "false",
        "ts_open_inference_protocol": "true" if settings.open_inference else "false",
    }
    if settings.auth_enabled:
        props["token_expiration_min"] = _TOKEN_LIFETIME_MIN
    else:
        props["disable_token_authorization"] = "true"
    if settings.tls_cert is not None and settings.tls_key is not None:
        # https:// in the addresses above turns HTTPS on; enable_grpc_ssl does it for both gRPC APIs.
        props["certificate_file"] = str(settings.tls_cert)
        props["private_key_file"] = str(settings.tls_key)
        props["enable_grpc_ssl"] = "true"
    if settings.models:
        props["load_models"] = ",".join(settings.models)
    if settings.workers is not None:
        props["default_workers_per_model"] = str(settings.workers)
    if settings.job_queue_size is not None:
        props["job_queue_size"] = str(settings.job_queue_size)
    if settings.metrics_config is not None:
        props["metrics_config"] = str(settings.metrics_config)
    for key, value in settings.extra.items():
        if key in props:
            log.warning("config.properties: extra sets %s=%s over the default %s", key, value, props[key])
        props[key] = value

    lines = ["# Written by ckptserve (serving.torchserve.config); edits are overwritten at each start."]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``port`` on ``host`` cannot be listened on now (another listener, no such address), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port in TIME_WAIT is fine (Netty sets it too); only a listener is a clash.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for tests; another process may still take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Ports(TypedDict):
    """A port for every TorchServe endpoint, under the names of ServerSettings' keyword arguments."""

    http_port: int
    management_port: int
    metrics_port: int
    grpc_inference_port: int
    grpc_management_port: int


def distinct_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different TCP ports that were free a moment ago on ``host`` (tests, demo).

    The sockets stay bound until all are chosen: a port closed before the next bind may be handed out
    again, and TorchServe refuses two endpoints on one port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_ports(host: str = "127.0.0.1") -> Ports:
    """Free ports for every TorchServe endpoint, as ServerSettings keyword arguments (tests, demo)."""
    http, management, metrics, grpc_inference, grpc_management = distinct_free_ports(5, host)
    return Ports(
        http_port=http,
        management_port=management,
        metrics_port=metrics,
        grpc_inference_port=grpc_inference,
        grpc_management_port=grpc_management,
    )
