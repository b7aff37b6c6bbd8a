"""Request and response formats of the model server: KServe v1 JSON, Open Inference Protocol v2, npy.

One module per job: ``config`` (input, post-processing, labels), ``datatypes`` (the OIP datatype
table), ``base`` (the ``Codec`` protocol), one module per codec, ``postprocess`` (named outputs),
``registry`` (the ordered codecs, and the decode/encode entry points), ``oip_grpc`` (OIP protobuf
tensors). Names are imported on first use: the gateway and the clients read the datatype table and
the protobuf tensors without paying for torch.

A new format is one module with a class that satisfies ``base.Codec``, and one line in
``registry.CODECS`` (its place in the order decides which codec claims a request first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checker sees them; at run time __getattr__ imports them
    from serving.codecs.base import Codec as Codec
    from serving.codecs.base import DecodedRequest as DecodedRequest
    from serving.codecs.base import Protocol as Protocol
    from serving.codecs.config import InputSpec as InputSpec
    from serving.codecs.config import PostProcess as PostProcess
    from serving.codecs.config import load_labels as load_labels
    from serving.codecs.registry import CODECS as CODECS
    from serving.codecs.registry import Registry as Registry
    from serving.codecs.registry import decode_request as decode_request
    from serving.codecs.registry import encode_error as encode_error
    from serving.codecs.registry import encode_response as encode_response
    from serving.codecs.registry import max_body_bytes as max_body_bytes

_EXPORTS = {
    "Codec": "serving.codecs.base",
    "DecodedRequest": "serving.codecs.base",
    "Protocol": "serving.codecs.base",
    "InputSpec": "serving.codecs.config",
    "PostProcess": "serving.codecs.config",
    "load_labels": "serving.codecs.config",
    "CODECS": "serving.codecs.registry",
    "Registry": "serving.codecs.registry",
    "decode_request": "serving.codecs.registry",
    "encode_error": "serving.codecs.registry",
    "encode_response": "serving.codecs.registry",
    "max_body_bytes": "serving.codecs.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving.codecs' has no attribute {name!r}")
