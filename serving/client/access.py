"""Credentials every client shares: TorchServe's inference key and the CA that signed the server."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import grpc

from serving.errors import RequestError

TOKEN_ENV = "CKPTSERVE_TOKEN"


def resolve_token(token: str | None = None, key_file: str | Path | None = None) -> str | None:
    """The inference key to send: ``token``, else $CKPTSERVE_TOKEN, else the one in ``key_file``.

    ``key_file`` is TorchServe's key_file.json (in the server's runtime directory); a key file that
    is named but unreadable is an error, since requests without the key would only get 401.
    """
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if key_file is None:
        return None
    try:
        return str(json.loads(Path(key_file).read_text())["inference"]["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RequestError(
            f"Expected TorchServe's key file with an inference key at {key_file}, could not read it ({exc}).",
            hint="Is the server running with token authorization? Its runtime directory holds key_file.json "
            "(readable by the server's user only); or pass the key itself (--token / $CKPTSERVE_TOKEN).",
        ) from None


def ssl_context(tls_ca: str | Path | None) -> ssl.SSLContext:
    """Verify the server against ``tls_ca`` (a PEM CA bundle), or the system's roots when None."""
    try:
        return ssl.create_default_context(cafile=str(tls_ca) if tls_ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise RequestError(f"Expected a PEM CA certificate at {tls_ca}, could not load it ({exc}).") from None


def grpc_credentials(tls_ca: str | Path | None) -> grpc.ChannelCredentials:
    """gRPC channel credentials verifying the server against ``tls_ca``, or the system's roots when None."""
    try:
        roots = Path(tls_ca).read_bytes() if tls_ca else None
    except OSError as exc:
        raise RequestError(f"Expected a PEM CA certificate at {tls_ca}, could not read it ({exc}).") from None
    return grpc.ssl_channel_credentials(root_certificates=roots)
