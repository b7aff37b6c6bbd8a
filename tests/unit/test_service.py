"""The data plane without a server: batching, per-request errors, isolation of inputs the model rejects."""

from __future__ import annotations

import json
from contextlib import nullcontext

import torch
from torch import nn

from serving.codecs import InputSpec, PostProcess
from serving.service import InferenceService
from tests.conftest import Reference


def _service(model: nn.Module, shape: tuple[int, ...] = (1, 8, 8), kind: str = "raw") -> InferenceService:
    return InferenceService(
        lambda: nullcontext(model),
        input_spec=InputSpec(shape=shape),
        postprocess=PostProcess(kind=kind),  # type: ignore[arg-type]
        model_name="small",
    )


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.inner(x)


def test_a_batch_runs_as_one_forward_and_matches_unbatched(reference: Reference) -> None:
    counting = CountingModel(reference.model)
    service = _service(counting)
    requests = [({"instances": reference.inputs[i : i + 1].tolist()}, "application/json") for i in range(5)]
    replies, times = service.infer(requests)
    assert counting.batches == [5]
    assert times.batch_size == 5 and times.inference > 0
    got = torch.tensor([json.loads(r.body)["predictions"][0] for r in replies])
    torch.testing.assert_close(got, reference.outputs)


def test_a_bad_request_fails_alone(reference: Reference) -> None:
    service = _service(reference.model)
    good = ({"instances": reference.inputs[:2].tolist()}, "application/json")
    replies, times = service.infer(
        [good, (b"{not json", "application/json"), good, ({"instances": [[1, 2]]}, None)]
    )
    assert [r.status for r in replies] == [200, 400, 200, 400]
    assert "malformed JSON" in json.loads(replies[1].body)["error"]
    assert times.errors == ["RequestError", "RequestError"]
    torch.testing.assert_close(
        torch.tensor(json.loads(replies[2].body)["predictions"]), reference.outputs[:2]
    )


class PickyModel(nn.Module):
    """Takes any length, but refuses lengths above 4 from inside its forward (as real layers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            raise RuntimeError("sequence too long for the position table")
        return x.sum(-1, keepdim=True)


def test_an_input_the_model_rejects_gets_422_and_the_rest_are_served() -> None:
    service = _service(PickyModel(), shape=(-1,))
    replies, _ = service.infer(
        [
            ({"instances": [[1.0, 2.0]]}, None),
            ({"instances": [[1.0] * 6]}, None),
            ({"instances": [[3.0, 4.0]]}, None),
        ]
    )
    assert [r.status for r in replies] == [200, 422, 200]
    assert "position table" in json.loads(replies[1].body)["error"]
    assert json.loads(replies[2].body)["predictions"] == [[7.0]]


def test_the_model_is_asked_for_at_every_batch(reference: Reference) -> None:
    current: dict[str, nn.Module] = {"model": reference.model}
    service = InferenceService(
        lambda: nullcontext(current["model"]),
        input_spec=InputSpec(shape=(1, 8, 8)),
        postprocess=PostProcess(),
        model_name="m",
    )
    body = ({"instances": reference.inputs[:1].tolist()}, None)
    before = json.loads(service.infer([body])[0][0].body)
    counting = current["model"] = CountingModel(reference.model)
    service.infer([body])
    assert counting.batches == [1]
    assert before["predictions"]
