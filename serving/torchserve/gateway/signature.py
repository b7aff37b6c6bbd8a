"""A served model's real input/output signature, read from TorchServe once and cached per model version."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.codecs.datatypes import oip_of_torch_name
from serving.errors import ModelStatefulError, UnsupportedModelError

if TYPE_CHECKING:  # the gateway hands its upstream in; the protocol side never imports the runtime
    from serving.torchserve.gateway.upstream import TorchServeUpstream

log = logging.getLogger(__name__)

PROBE_ID = "ckptserve-signature-probe"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension first, as -1


@dataclass(frozen=True)
class Signature:
    model: str
    version: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


class Signatures:
    """Signatures by (model, version), each read once; concurrent first requests share one read."""

    def __init__(self, upstream: TorchServeUpstream) -> None:
        self._upstream = upstream
        self._cache: dict[tuple[str, str], asyncio.Future[Signature]] = {}

    async def get(self, model: str, version: str) -> Signature:
        key = (model, version)
        future = self._cache.get(key)
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            return future.result()  # the hot path: no task, no shield
        if future is None:
            future = self._cache[key] = asyncio.ensure_future(self._read(model, version))
        try:
            return await asyncio.shield(future)
        except BaseException:
            if future.done() and self._cache.get(key) is future:
                del self._cache[key]  # a failed read (model missing, server down) is not remembered
            raise

    def forget(self, model: str, version: str) -> None:
        self._cache.pop((model, version), None)

    async def _read(self, model: str, version: str) -> Signature:
        # The plain description first: it never reaches a worker, so it is cheap and cannot hang.
        plain = await self._upstream.describe(model, version)
        if plain.get("stateful"):
            raise ModelStatefulError(
                f"model {model!r} uses TorchServe's sequence batching (stateful): TorchServe 0.12 serves it "
                "through StreamPredictions2 only, and never runs a request that comes without a sequence",
                hint="register the same archive without sequenceBatching for Open Inference Protocol calls",
            )
        custom: Any = (await self._upstream.describe(model, version, customized=True)).get(
            "customizedMetadata"
        )
        if isinstance(custom, str):  # some TorchServe paths hand it over as a JSON string
            custom = json.loads(custom)
        if not isinstance(custom, dict) or not isinstance(custom.get("input"), dict):
            raise UnsupportedModelError(
                f"model {model!r} does not describe its input (no customizedMetadata.input): it is not "
                "served by ckptserve's handler",
                hint="package it with `ckptserve package`",
            )
        spec = custom["input"]
        datatype = oip_of_torch_name(str(spec.get("dtype", "float32"))) or "FP32"
        shape = tuple(int(d) for d in spec.get("shape", ()))
        inputs = TensorSpec(str(spec.get("name") or "input__0"), datatype, (-1, *shape))
        version = version or str(plain.get("modelVersion") or "")
        declared = custom.get("outputs")
        if isinstance(declared, list) and declared:  # a handler that declares its outputs: no probe
            outputs = tuple(
                TensorSpec(str(o["name"]), str(o["datatype"]), tuple(int(d) for d in o["shape"]))
                for o in declared
            )
        else:
            outputs = await self._probe(model, version, inputs)
        signature = Signature(model, version, inputs, outputs)
        log.info("signature of %s:%s: %s", model, version, signature)
        return signature

    async def _probe(self, model: str, version: str, inputs: TensorSpec) -> tuple[TensorSpec, ...]:
        """Output names, datatypes and shapes from one real request of one zero instance.

        The handler's describe() gives the input but not the outputs, whose names and sizes depend
        on the post-processing (raw, softmax, top-k with or without labels) and the architecture.
        """
        shape = [1, *(d if d > 0 else 1 for d in inputs.shape[1:])]
        zeros: list[Any] = [False if inputs.datatype == "BOOL" else 0] * math.prod(shape)
        body = {
            "id": PROBE_ID,
            "inputs": [dict(name=inputs.name, shape=shape, datatype=inputs.datatype, data=zeros)],
        }
        answer = json.loads(
            await self._upstream.predict(model, version, json.dumps(body).encode(), timeout=30.0)
        )
        # An input of variable size can make the outputs vary too: say so rather than guess.
        variable = -1 in inputs.shape[1:]
        return tuple(
            TensorSpec(
                o["name"],
                o["datatype"],
                (-1, *(-1 if variable and not o["name"].startswith("topk_") else d for d in o["shape"][1:])),
            )
            for o in answer["outputs"]
        )
