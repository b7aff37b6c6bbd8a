"""`ckptserve package` catches at package time what a worker would trip on, naming the flag that fixes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.app.cli import main
from tests.assets.cli import ckptserve

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "model_store" / "digits"
MODEL, LABELS = DIGITS / "model.py", DIGITS / "index_to_name.json"
# Every test packages, and packaging checks the architecture in a child process: seconds each.
pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    returncode: int
    stderr: str


Package = Callable[..., Outcome]


def write_config(path: Path, **handler: object) -> Path:
    config = {
        "minWorkers": 1,
        "handler": {
            "architecture": "model:DigitsCNN",
            "input": {"shape": [1, 8, 8]},
            "postprocess": {"kind": "topk", "k": 3, "labels": "index_to_name.json"},
            **handler,
        },
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture
def package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Package:
    """`ckptserve package digits --model-store STORE ARGS` through the CLI's entry point, in this process
    (faster: the architecture check starts a child of its own); the watch-dir test runs a real child."""

    def run(*args: str | Path) -> Outcome:
        code = main(["package", "digits", "--model-store", str(tmp_path / "store"), *map(str, args)])
        return Outcome(code, capsys.readouterr().err)

    return run


def test_missing_model_file_and_labels_are_both_named(
    tmp_path: Path, package: Package, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaging process can import `model` (its directory is on sys.path); a worker could not.
    monkeypatch.syspath_prepend(str(DIGITS))
    done = package("--config", write_config(tmp_path / "config.yaml"), "--watch-dir", tmp_path)
    assert done.returncode == 2, done.stderr
    assert "2 problems" in done.stderr
    assert "--model-file" in done.stderr and "--extra-files path/to/index_to_name.json" in done.stderr
    assert "ckptserve-package-" not in done.stderr  # no internal staging path
    assert not (tmp_path / "store" / "digits.mar").exists()


def test_missing_labels_names_extra_files(tmp_path: Path, package: Package) -> None:
    config = write_config(tmp_path / "config.yaml")
    done = package("--config", config, "--model-file", MODEL, "--watch-dir", tmp_path)
    assert done.returncode == 2, done.stderr
    assert "handler.postprocess.labels 'index_to_name.json' is not in the archive" in done.stderr
    assert "--extra-files" in done.stderr and "ckptserve-package-" not in done.stderr


@pytest.mark.parametrize(
    ("source", "handler", "expected"),
    [
        ("import torch\nclass Other(torch.nn.Module):\n    pass\n", {}, "Module 'model' has no 'DigitsCNN'"),
        ("import not_installed_dep\n", {}, "it imports 'not_installed_dep', which is not installed"),
        (MODEL.read_text(), {"architecture_kwargs": {"bogus": 1}}, "Cannot build DigitsCNN with"),
    ],
    ids=["no-such-class", "missing-dependency", "bad-kwargs"],
)
def test_architecture_is_imported_and_built_at_package_time(
    tmp_path: Path, package: Package, source: str, handler: dict[str, object], expected: str
) -> None:
    (tmp_path / "model.py").write_text(source)
    config = write_config(tmp_path / "config.yaml", **handler)
    done = package("--config", config, "--model-file", tmp_path / "model.py", "--extra-files", LABELS)
    assert done.returncode == 2, done.stderr
    assert "handler.architecture 'model:DigitsCNN'" in done.stderr and expected in done.stderr


def test_relative_checkpoint_not_in_the_archive_says_so(tmp_path: Path, package: Package) -> None:
    config = write_config(tmp_path / "config.yaml", checkpoint="model_epoch_1.pth")
    done = package("--config", config, "--model-file", MODEL, "--extra-files", LABELS)
    assert done.returncode == 2, done.stderr
    assert "handler.checkpoint 'model_epoch_1.pth' is a relative path" in done.stderr
    assert "--checkpoint" in done.stderr and "--watch-dir" in done.stderr


def test_missing_watch_dir_is_a_warning_not_an_error(tmp_path: Path) -> None:
    args: list[str | Path] = [
        "package",
        "digits",
        "--model-store",
        tmp_path / "store",
        "--config",
        write_config(tmp_path / "c.yaml"),
    ]
    args += ["--model-file", MODEL, "--extra-files", LABELS, "--watch-dir"]
    missing = tmp_path / "not-yet"
    done = ckptserve(*args, missing)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "store" / "digits.mar").is_file()
    assert "WARNING" in done.stderr and f"{missing} does not exist (yet)" in done.stderr

    missing.mkdir()
    done = ckptserve(*args, missing)
    assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr  # silent once it exists
