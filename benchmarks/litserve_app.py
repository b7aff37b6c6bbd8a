"""LitServe serving a compare-benchmark model: run by compare.py in LitServe's own venv.

Usage: python litserve_app.py MODEL_FILE CLASS WEIGHTS PORT WORKERS MAX_BATCH BATCH_TIMEOUT_S
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from typing import Any

import litserve as ls
import torch


def _model(model_file: str, cls: str, weights: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("bench_model", model_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, cls)()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


class Api(ls.LitAPI):
    def setup(self, device: str) -> None:
        torch.set_num_threads(1)  # as for every server in the comparison: one intra-op thread per worker
        self.model = _model(*sys.argv[1:4])

    # Unannotated on purpose: LitServe builds the endpoint from this hint, and none means a JSON body.
    def decode_request(self, request):
        return torch.as_tensor(request["instances"][0], dtype=torch.float32)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x if x.dim() > 3 else x.unsqueeze(0))

    def unbatch(self, output: torch.Tensor) -> list[Any]:
        return output.tolist()

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"predictions": [output]}


def main() -> None:
    port, workers, max_batch, timeout = (
        int(sys.argv[4]),
        int(sys.argv[5]),
        int(sys.argv[6]),
        float(sys.argv[7]),
    )
    batching = {"max_batch_size": max_batch, "batch_timeout": timeout}
    # LitServe moved the batching settings from LitServer to LitAPI; accept either release.
    if "max_batch_size" in inspect.signature(ls.LitAPI.__init__).parameters:
        api, server_kwargs = Api(**batching), {}
    else:
        api, server_kwargs = Api(), batching
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers, **server_kwargs)
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


if __name__ == "__main__":
    main()
