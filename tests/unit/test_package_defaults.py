"""`ckptserve package` fills in the measured TorchServe defaults only where the user's yaml is silent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from serving.errors import ConfigError
from serving.torchserve.package import MODEL_DEFAULTS, package_model

DIGITS = Path(__file__).resolve().parents[2] / "model_store" / "digits"
HANDLER = {"architecture": "model:DigitsCNN", "input": {"shape": [1, 8, 8]}}


def _package(tmp_path: Path, top: dict[str, Any]) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(DIGITS))
    from model import DigitsCNN

    checkpoint = tmp_path / "weights.pt"
    torch.save(DigitsCNN().state_dict(), checkpoint)
    config = tmp_path / "model-config.yaml"
    config.write_text(yaml.safe_dump({**top, "handler": HANDLER}))
    archive = package_model(
        "m",
        model_store=tmp_path / "store",
        model_file=DIGITS / "model.py",
        config=config,
        checkpoint=checkpoint,
        archive_format="no-archive",
    )
    return yaml.safe_load((archive / "model-config.yaml").read_text())


@pytest.mark.slow
def test_a_handler_only_yaml_gets_the_measured_defaults(tmp_path: Path) -> None:
    written = _package(tmp_path, {})
    assert {k: written[k] for k in MODEL_DEFAULTS} == MODEL_DEFAULTS
    # No worker count: TorchServe's default (one per usable CPU) and the handler's thread plan apply.
    assert "minWorkers" not in written and "maxWorkers" not in written
    assert written["handler"]["architecture"] == "model:DigitsCNN"


@pytest.mark.slow
def test_the_users_values_win(tmp_path: Path) -> None:
    mine = {"batchSize": 3, "maxBatchDelay": 7, "minWorkers": 1, "maxWorkers": 1}
    written = _package(tmp_path, mine)
    assert {k: written[k] for k in mine} == mine


def test_a_zero_batch_delay_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="maxBatchDelay 0") as err:
        _package(tmp_path, {"batchSize": 8, "maxBatchDelay": 0})
    assert "100 ms" in err.value.message and err.value.hint
