"""Every handler key lands where the server reads it, every default holds, each refusal names file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.codecs import InputSpec, PostProcess
from serving.errors import CheckpointNotFoundError, ConfigError
from serving.spec import ModelSpec, ReloadSpec, labels_file, missing_checkpoint_error, parse_spec

BASE: dict[str, Any] = {"architecture": "model:Net", "checkpoint": "w.pth", "input": {"shape": [1, 8, 8]}}
SOURCE = "digits/model-config.yaml"


def _refused(change: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_spec({**BASE, **change}, model_dir=tmp_path, source=SOURCE)
    return str(caught.value)


def test_every_key_of_a_full_config_is_kept(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps(["cat", "dog", "emu"]))
    handler = {
        "architecture": "model:Net",
        "checkpoint": "/weights/w.pth",
        "architecture_kwargs": {"hidden": 32},
        "device": "cpu",
        "dtype": "float16",
        "strict": False,
        "trust_pickle": True,
        "state_dict_key": "ema",
        "safe_globals": ["collections.OrderedDict"],
        "input": {
            "shape": [-1, 3],
            "dtype": "int64",
            "max_instances": 8,
            "name": "tokens",
            "allow_nonfinite": True,
        },
        "output": {"name": "logits"},
        "postprocess": {"kind": "topk", "k": 2, "labels": "labels.json"},
        "threads": 2,
        "json_logs": True,
        "metrics": False,
        "watch_dir": "ckpts",
        "poll_interval_s": 0.5,
        "policy": "best",
        "metric": "metrics.val_accuracy",
        "mode": "max",
        "pinned": "keep.pt",
        "reload_strategy": "inplace",
        "follow_symlinks": True,
    }
    spec = parse_spec(handler, model_dir=tmp_path, source=SOURCE)
    assert spec == ModelSpec(
        architecture="model:Net",
        checkpoint=Path("/weights/w.pth"),
        architecture_kwargs={"hidden": 32},
        device="cpu",
        dtype="float16",
        strict=False,
        trust_pickle=True,
        state_dict_key="ema",
        safe_globals=("collections.OrderedDict",),
        input=InputSpec(
            shape=(-1, 3), dtype=torch.int64, name="tokens", allow_nonfinite=True, max_instances=8
        ),
        postprocess=PostProcess(kind="topk", k=2, labels=("cat", "dog", "emu"), output_name="logits"),
        threads=2,
        reload=ReloadSpec(
            watch_dir=tmp_path / "ckpts",
            poll_interval_s=0.5,
            policy="best",
            metric="metrics.val_accuracy",
            mode="max",
            pinned="keep.pt",
            strategy="inplace",
            follow_symlinks=True,
        ),
        json_logs=True,
        metrics=False,
        checkpoint_setting="/weights/w.pth",
    )


def test_every_default(tmp_path: Path) -> None:
    assert parse_spec(BASE, model_dir=tmp_path) == ModelSpec(
        architecture="model:Net",
        checkpoint=tmp_path / "w.pth",
        architecture_kwargs={},
        device="auto",
        dtype="auto",
        strict=True,
        trust_pickle=False,
        state_dict_key=None,
        safe_globals=(),
        input=InputSpec(
            shape=(1, 8, 8), dtype=torch.float32, name="input__0", allow_nonfinite=False, max_instances=64
        ),
        postprocess=PostProcess(kind="raw", k=5, labels=None, output_name="output__0"),
        threads=None,
        reload=ReloadSpec(
            watch_dir=None,
            poll_interval_s=2.0,
            policy="latest",
            metric="loss",
            mode="min",
            pinned=None,
            strategy="shadow",
            follow_symlinks=False,
        ),
        json_logs=False,
        metrics=True,
        checkpoint_setting="w.pth",
    )
    assert parse_spec({**BASE, "threads": "auto"}, model_dir=tmp_path).threads is None


@pytest.mark.parametrize("kind", ["raw", "softmax", "topk"])
def test_each_postprocess_kind_is_kept(tmp_path: Path, kind: str) -> None:
    assert parse_spec({**BASE, "postprocess": {"kind": kind}}, model_dir=tmp_path).postprocess.kind == kind


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"]
)
def test_each_input_dtype_is_kept(tmp_path: Path, dtype: str) -> None:
    spec = parse_spec({**BASE, "input": {"shape": [2], "dtype": dtype}}, model_dir=tmp_path)
    assert spec.input.dtype == getattr(torch, dtype)


@pytest.mark.parametrize(
    "change",
    [
        {"threads": 1},
        {"input": {"shape": [-1]}},
        {"input": {"shape": [1], "max_instances": 1}},
        {"postprocess": {"k": 1}},
        {"poll_interval_s": 1},
        {"poll_interval_s": 1e-3},
        {"checkpoint": None, "watch_dir": "/ckpts"},
        {"policy": "pinned", "pinned": "a.pt"},
        {"output": "logits"},  # not a mapping: the default output name
        {"output": {}},  # no name: the default output name
        {"safe_globals": []},
        {"state_dict_key": ""},
    ],
)
def test_the_smallest_accepted_values(tmp_path: Path, change: dict[str, Any]) -> None:
    spec = parse_spec({**BASE, **change}, model_dir=tmp_path, source=SOURCE)
    assert spec.threads == change.get("threads")
    assert spec.postprocess.output_name == "output__0"
    assert spec.state_dict_key is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"poll_interval_s": 0}, "handler.poll_interval_s must be a positive number of seconds, got 0."),
        (
            {"poll_interval_s": -0.5},
            "handler.poll_interval_s must be a positive number of seconds, got -0.5.",
        ),
        (
            {"poll_interval_s": float("nan")},
            "handler.poll_interval_s must be a positive number of seconds, got nan.",
        ),
        (
            {"poll_interval_s": float("inf")},
            "handler.poll_interval_s must be a positive number of seconds, got inf.",
        ),
        ({"poll_interval_s": "2"}, "handler.poll_interval_s must be a positive number of seconds, got '2'."),
        ({"threads": 0}, "handler.threads must be 'auto' or a positive integer, got 0."),
        ({"threads": 1.5}, "handler.threads must be 'auto' or a positive integer, got 1.5."),
        ({"threads": "2"}, "handler.threads must be 'auto' or a positive integer, got '2'."),
        (
            {"input": {"shape": [1, -2]}},
            "handler.input.shape must be a list of positive integers (-1 for any size)",
        ),
        ({"input": {"shape": [1, 0]}}, "handler.input.shape must be a list of positive integers"),
        ({"input": {"shape": [1.0]}}, "handler.input.shape must be a list of positive integers"),
        ({"input": {"shape": "1,8,8"}}, "handler.input.shape must be a list of positive integers"),
        ({"input": [1, 8, 8]}, "handler.input.shape is missing"),
        ({"input": {"shape": [1], "dtype": "float8"}}, "handler.input.dtype 'float8' is not supported."),
        (
            {"input": {"shape": [1], "max_instances": 0}},
            "handler.input.max_instances must be a positive integer, got 0.",
        ),
        (
            {"input": {"shape": [1], "max_instances": "8"}},
            "handler.input.max_instances must be a positive integer",
        ),
        ({"postprocess": {"k": 0}}, "handler.postprocess.k must be a positive integer, got 0."),
        ({"postprocess": {"k": "3"}}, "handler.postprocess.k must be a positive integer, got '3'."),
        (
            {"postprocess": {"kind": "argmax"}},
            "handler.postprocess.kind must be raw, softmax or topk, got 'argmax'.",
        ),
        ({"mode": "avg"}, "handler.mode must be one of ['min', 'max'], got 'avg'."),
        (
            {"reload_strategy": "swap"},
            "handler.reload_strategy must be one of ['shadow', 'inplace'], got 'swap'.",
        ),
        ({"policy": "pinned"}, "handler.policy is 'pinned' but pinned"),
        ({"architecture": 5}, "handler.architecture must be a string, got int 5."),
        ({"checkpoint": 5}, "handler.checkpoint must be a string, got int 5."),
        ({"state_dict_key": ["ema"]}, "handler.state_dict_key must be a string, got list ['ema']."),
        ({"watch_dir": 5}, "handler.watch_dir must be a string, got int 5."),
        ({"policy": "pinned", "pinned": 5}, "handler.pinned must be a string, got int 5."),
        ({"safe_globals": "a.B"}, "handler.safe_globals must be a list of strings, got 'a.B'."),
        ({"safe_globals": ["a.B", 1]}, "handler.safe_globals must be a list of strings"),
        ({"follow_symlinks": 1}, "handler.follow_symlinks must be true or false, got 1."),
        ({"json_logs": "yes"}, "handler.json_logs must be true or false"),
        (
            {"input": {"shape": [1], "allow_nonfinite": "false"}},
            "handler.input.allow_nonfinite must be true or false",
        ),
        ({"trust_pickle": "no"}, "handler.trust_pickle must be true or false"),
        ({"architecture_kwargs": [1]}, "handler.architecture_kwargs must be a mapping, got list."),
    ],
)
def test_each_refusal_names_the_file_the_key_and_the_value(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    assert f"{SOURCE}, {message}" in _refused(change, tmp_path)


def test_a_missing_checkpoint_and_unknown_keys_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec({**BASE, "checkpoint": None}, model_dir=tmp_path, source=SOURCE)
    assert caught.value.message == f"{SOURCE}, handler.checkpoint is missing."
    assert caught.value.hint == "Name the checkpoint file, or set watch_dir."
    with pytest.raises(ConfigError) as caught:
        parse_spec({**BASE, "chekpoint": "x", "devcie": "cpu"}, model_dir=tmp_path, source=SOURCE)
    assert caught.value.message == f"Unknown key(s) in {SOURCE} under handler: ['chekpoint', 'devcie']."
    assert "'checkpoint'" in (caught.value.hint or "") and "'poll_interval_s'" in (caught.value.hint or "")
    assert "'reload'" not in (caught.value.hint or "")  # a field of the spec, not a key of the file
    with pytest.raises(ConfigError, match="dtype 'float8'") as caught:
        parse_spec({**BASE, "input": {"shape": [1], "dtype": "float8"}}, model_dir=tmp_path)
    assert (
        caught.value.hint
        == "Use one of ['bfloat16', 'bool', 'float16', 'float32', 'float64', 'int32', 'int64', 'uint8']."
    )
    with pytest.raises(ConfigError, match="shape is missing") as caught:
        parse_spec({**BASE, "input": None}, model_dir=tmp_path)
    assert "input: {shape: [1, 8, 8], dtype: float32}" in (caught.value.hint or "")


def test_paths_expand_the_home_and_variables_and_resolve_in_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPT_ROOT", "/data/runs")
    monkeypatch.setenv("HOME", "/home/trainer")
    spec = parse_spec({**BASE, "checkpoint": "$CKPT_ROOT/w.pth", "watch_dir": "~/ckpts"}, model_dir=tmp_path)
    assert spec.checkpoint == Path("/data/runs/w.pth") and spec.reload.watch_dir == Path(
        "/home/trainer/ckpts"
    )
    assert spec.checkpoint_setting == "$CKPT_ROOT/w.pth"
    spec = parse_spec({**BASE, "checkpoint": "sub/w.pth"}, model_dir=tmp_path)
    assert spec.checkpoint == tmp_path / "sub" / "w.pth"


def test_labels_missing_from_the_archive_or_the_disk(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text('{"0": "cat"}')
    assert labels_file("labels.json", tmp_path) == tmp_path / "labels.json"
    with pytest.raises(ConfigError) as caught:
        labels_file("sub/names.json", tmp_path)
    assert caught.value.message == (
        "handler.postprocess.labels 'sub/names.json' is not in the archive "
        "(a relative path is read from inside it)."
    )
    assert "--extra-files path/to/names.json" in (caught.value.hint or "")
    absent = str(tmp_path / "gone.json")
    with pytest.raises(ConfigError) as caught:
        labels_file(absent, tmp_path, where="x.")
    assert (
        caught.value.message == f"x.labels {absent!r} does not exist."
        and caught.value.hint == "Check the path."
    )
    message = _refused({"postprocess": {"kind": "topk", "labels": "names.json"}}, tmp_path)
    assert f"{SOURCE}, handler.postprocess.labels 'names.json' is not in the archive" in message


def test_a_missing_checkpoint_is_named_as_written(tmp_path: Path) -> None:
    relative = missing_checkpoint_error(parse_spec(BASE, model_dir=tmp_path))
    assert isinstance(relative, CheckpointNotFoundError)
    assert relative.message.startswith("handler.checkpoint 'w.pth' is a relative path")
    assert "--checkpoint PATH" in (relative.hint or "")
    absolute = missing_checkpoint_error(
        parse_spec({**BASE, "checkpoint": "/nowhere/w.pth"}, model_dir=tmp_path)
    )
    assert absolute.message == "handler.checkpoint '/nowhere/w.pth' does not exist."
    assert absolute.hint == "Check the path, and that the server can see that volume."
    # a spec built in code, without the setting as written: the resolved path is named
    built = ModelSpec(architecture=None, checkpoint=Path("/x/w.pth"))
    assert missing_checkpoint_error(built).message == "handler.checkpoint '/x/w.pth' does not exist."
