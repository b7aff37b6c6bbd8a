"""JSON on the wire: which media types hold it, the one parse of a body, and compact strict output."""

from __future__ import annotations

import json
import math
from typing import Any

from serving.codecs.base import Body
from serving.codecs.checks import HINT_V1
from serving.errors import CkptServeError, RequestError, UnsupportedMediaTypeError
from serving.wire import JSON_TYPE

FORM_TYPE = "application/x-www-form-urlencoded"
_JSON_TYPES = frozenset({JSON_TYPE, "text/json", "text/plain"})  # and any "+json" suffix


def is_json_media(media: str) -> bool:
    return media in _JSON_TYPES or media.endswith("+json")


def parse_json(raw: bytes | bytearray | str, media: str) -> Body:
    try:
        doc: Body = json.loads(raw)
        return doc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        if not raw.strip():
            if media == FORM_TYPE:
                # TorchServe's frontend decodes such a body as HTML form fields: JSON sent that way
                # reaches the worker as the name of an empty field, never as the body.
                raise UnsupportedMediaTypeError(
                    f"the body was sent as {FORM_TYPE} (the default of curl -d and urllib), which the "
                    "server reads as form fields: no JSON or npy reached the model",
                    hint="send it with Content-Type: application/json (or application/x-npy)",
                ) from None
            raise RequestError("the request body is empty; expected JSON or npy", hint=HINT_V1) from None
        if isinstance(exc, json.JSONDecodeError):
            where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
            raise RequestError(f"malformed JSON at {where}: {exc.msg}", hint="send valid JSON") from None
        raise RequestError(f"the body is neither npy nor JSON text: {exc}", hint="send UTF-8 JSON") from None


def _nonfinite_as_text(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, list):
        return [_nonfinite_as_text(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _nonfinite_as_text(v) for k, v in obj.items()}
    return obj


# Built once: json.dumps with options builds a new encoder on every call (a quarter of its cost here).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(obj: Any) -> bytes:
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError:
        # Strict JSON has no NaN/Infinity and many clients reject the bare literals; a model may still
        # emit -inf logits. Spell them as the strings proto3's JSON mapping uses (slow path only).
        return _ENCODER.encode(_nonfinite_as_text(obj)).encode()


def json_error(error: CkptServeError) -> bytes:
    """The JSON error body every built-in codec answers with: v1 and OIP v2 clients both read its "error"."""
    return dumps(error.to_dict())
