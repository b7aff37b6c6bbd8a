"""Stock TorchServe for the compare benchmark: BaseHandler plus the JSON decoding it lacks; raw logits out.

Not product code: the baseline that ckptserve's handler is measured against. BaseHandler loads the
eager model (the archive's one model class and its state dict) and runs it under inference mode.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class StockHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        # The sweep's best for stock TorchServe: one intra-op thread per worker (see compare.py's table).
        torch.set_num_threads(1)
        super().initialize(context)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows: list[Any] = []
        for request in data:
            body: Any = request.get("data") or request.get("body")  # bytes, or what TorchServe parsed
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.extend(body["instances"])  # one instance per request in the benchmark
        return torch.as_tensor(rows, dtype=torch.float32)

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return [{"predictions": [row]} for row in data.tolist()]
