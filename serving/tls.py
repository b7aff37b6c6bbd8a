"""TLS for ckptserve's own calls to its servers over loopback: trust exactly the served certificate."""

from __future__ import annotations

import ssl
from pathlib import Path


def loopback_context(trusted: Path) -> ssl.SSLContext:
    """An SSL context that accepts only a server presenting a certificate from ``trusted`` (PEM).

    ckptserve reaches its own server over loopback, where the name in the certificate (the public
    one) cannot match: the host name is not checked, but the chain must end in ``trusted``, a
    certificate that only the holder of our private key can present. ``trusted`` may be the served
    certificate itself (a partial chain) or the CA that signed it.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def certificate_name(cert: Path) -> str | None:
    """The first DNS name (else the common name) of the first certificate in a PEM file, if readable.

    gRPC checks the server's name against the target; over loopback the target is an address, so
    the gateway names the certificate's own host instead (``grpc.ssl_target_name_override``).
    """
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]  # stdlib, no parser dependency
    except (AttributeError, OSError, ssl.SSLError):
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return str(value)
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
