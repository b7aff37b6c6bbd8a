"""The npy codec: a batch (or one instance) as numpy.save bytes in, the output array as npy out."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch

from serving.codecs.base import Body, Codec, DecodedRequest, ModelRef, NamedOutputs, Protocol
from serving.codecs.checks import check_count, fmt, shape_ok, to_tensor
from serving.codecs.config import InputSpec
from serving.codecs.jsontext import json_error
from serving.codecs.kserve_v1 import predictions_reply
from serving.codecs.postprocess import ranking_rows, single
from serving.errors import CkptServeError, RequestError
from serving.wire import NPY_MAGIC, NPY_TYPE


class NpyCodec(Codec):
    protocol = Protocol.NPY
    reads: Literal["bytes", "json"] = "bytes"

    def speaks(self, media: str) -> bool:
        return media == NPY_TYPE

    def matches(self, body: Body, media: str) -> bool:
        # npy magic is never JSON: such a body is read as npy whatever JSON type it came with
        return media == NPY_TYPE or (isinstance(body, (bytes, bytearray)) and body[:6] == NPY_MAGIC)

    def decode(self, body: Body, spec: InputSpec) -> DecodedRequest:
        if not isinstance(body, (bytes, bytearray)) or body[:6] != NPY_MAGIC:
            raise RequestError(
                "the body is not an npy file: it does not start with the npy magic b'\\x93NUMPY'",
                hint="send the bytes numpy.save writes",
            )
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:  # untrusted bytes: any parser failure is the client's, never a 500
            raise RequestError(
                f"the body starts like an npy file but cannot be read: {exc}",
                hint="send the bytes numpy.save writes, with a numeric dtype (no object arrays)",
            ) from None
        if arr.dtype.kind not in "biuf":
            raise RequestError(
                f"npy array has dtype {arr.dtype}; expected a numeric one", hint="cast to float32"
            )
        if arr.ndim == len(spec.shape):
            arr = arr[None]  # one instance without its batch axis
        if arr.ndim != len(spec.shape) + 1 or not shape_ok(arr.shape[1:], spec.shape):
            raise RequestError(
                f"npy array has shape {arr.shape}; expected one instance {fmt(spec.shape)} "
                "or a batch (n, ...)",
                hint="reshape the array before numpy.save",
            )
        check_count(len(arr), spec)
        if not (arr.flags.writeable and arr.flags.c_contiguous and arr.dtype.isnative):
            # np.load on a buffer gives a read-only view, which torch.from_numpy warns about
            arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C")
        return DecodedRequest(to_tensor(arr, spec), Protocol.NPY)

    def encode(self, outputs: NamedOutputs, request: DecodedRequest, model: ModelRef) -> tuple[bytes, str]:
        if ranking_rows(outputs) is not None:  # an npy file holds one array: a ranking answers as v1 rows
            return predictions_reply(outputs)
        values = single(outputs)
        buf = io.BytesIO()
        array = (values.float() if values.dtype == torch.bfloat16 else values).numpy()  # npy has no bf16
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue(), NPY_TYPE

    def encode_error(self, error: CkptServeError) -> bytes:
        return json_error(error)
