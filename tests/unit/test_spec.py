"""model-config.yaml's handler section: validated once, with the file and key named in every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.errors import ConfigError
from serving.spec import parse_spec

BASE = {"architecture": "model:Net", "checkpoint": "w.pth", "input": {"shape": [1, 8, 8]}}


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    spec = parse_spec(BASE, model_dir=tmp_path)
    assert spec.checkpoint == tmp_path / "w.pth"
    assert spec.input.shape == (1, 8, 8) and spec.input.dtype == torch.float32
    assert (spec.device, spec.dtype, spec.strict, spec.trust_pickle) == ("auto", "auto", True, False)
    assert spec.postprocess.kind == "raw" and spec.threads is None
    assert spec.reload.watch_dir is None and spec.reload.policy == "latest"


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"0": "cat", "1": "dog"}))
    spec = parse_spec(
        {
            **BASE,
            "architecture_kwargs": {"hidden": 32},
            "input": {"shape": [-1, 3], "dtype": "int64", "max_instances": 8, "name": "tokens"},
            "postprocess": {"kind": "topk", "k": 1, "labels": "labels.json"},
            "threads": 2,
            "watch_dir": "/ckpts",
            "policy": "best",
            "metric": "metrics.val_accuracy",
            "mode": "max",
            "reload_strategy": "inplace",
        },
        model_dir=tmp_path,
    )
    assert spec.architecture_kwargs == {"hidden": 32}
    assert spec.input.dtype == torch.int64 and spec.input.max_instances == 8
    assert spec.postprocess.labels == ("cat", "dog")
    assert spec.reload.watch_dir == Path("/ckpts") and spec.reload.strategy == "inplace"
    assert (spec.reload.policy, spec.reload.metric, spec.reload.mode) == (
        "best",
        "metrics.val_accuracy",
        "max",
    )


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"chekpoint": "x"}, "Unknown key(s)"),
        ({"input": {}}, "input.shape is missing"),
        ({"input": {"shape": [1, 0]}}, "positive integers"),
        ({"input": {"shape": [1], "dtype": "complex64"}}, "dtype 'complex64'"),
        ({"postprocess": {"kind": "argmax"}}, "kind must be"),
        ({"strict": "yes"}, "strict must be true or false"),
        ({"threads": 0}, "threads must be"),
        ({"poll_interval_s": -1}, "poll_interval_s"),
        ({"policy": "newest"}, "policy must be one of"),
        ({"policy": "pinned"}, "pinned"),
        ({"checkpoint": None}, "checkpoint is missing"),
        ({"architecture_kwargs": [1]}, "architecture_kwargs must be a mapping"),
        ({"metrics": "off"}, "metrics must be true or false"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, change: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec({**BASE, **change}, model_dir=tmp_path, source="digits/model-config.yaml")
    assert fragment in str(caught.value)
    assert "model-config.yaml" in str(caught.value)


def test_handler_metrics_are_on_unless_switched_off(tmp_path: Path) -> None:
    assert parse_spec(BASE, model_dir=tmp_path).metrics is True
    assert parse_spec({**BASE, "metrics": False}, model_dir=tmp_path).metrics is False
    # "metrics" (on/off) and "metric" (what policy "best" ranks by) are different keys.
    spec = parse_spec({**BASE, "metrics": False, "policy": "best", "metric": "loss"}, model_dir=tmp_path)
    assert (spec.metrics, spec.reload.metric) == (False, "loss")
