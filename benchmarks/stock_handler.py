"""Benchmarks' baseline: TorchServe's own BaseHandler plus the few lines a user adds for JSON in, top-k out.

Packaged by benchmarks/sweep.py next to the demo model (model_file + a whole-state-dict serialized_file).
BaseHandler loads the weights, sets eval mode and runs ``inference`` under ``torch.inference_mode``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class StockHandler(BaseHandler):
    """JSON ``{"instances": [...]}`` rows stacked into one batch; the top 3 classes per request back."""

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            body: Any = row.get("data") or row.get("body")  # bytes, or what TorchServe parsed
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.as_tensor(body["instances"], dtype=torch.float32))
        return torch.cat(rows)

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        scores, indices = torch.softmax(data, dim=1).topk(3, dim=1)
        return [
            {"topk_indices": i, "topk_scores": s}
            for i, s in zip(indices.tolist(), scores.tolist(), strict=True)
        ]
