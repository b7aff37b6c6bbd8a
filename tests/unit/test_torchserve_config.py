"""serving.torchserve without a server: rendered properties, settings checks, archives, worker logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.torchserve import ServerSettings, build_archive, render_properties
from serving.torchserve.worker_log import last_exception_lines

# The echo handler the integration tests serve; here it is only packed, never run.
HANDLER = Path(__file__).resolve().parents[1] / "integration" / "assets" / "echo_handler.py"


# --- configuration ------------------------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for what render_properties writes (its only escape is '\\')."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value.replace("\\\\", "\\") for key, value in pairs}


def test_rendered_properties_hold_the_safety_settings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    settings = ServerSettings(model_store=store, runtime_dir=tmp_path / "rt", http_port=9080)
    props = parse_properties(render_properties(settings))

    assert props["inference_address"] == "http://127.0.0.1:9080"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["metrics_address"] == "http://127.0.0.1:8082"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("7070", "7071")
    assert props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus"
    assert props["install_py_dep_per_model"] == "false"
    assert props["disable_token_authorization"] == "true"
    assert props["ts_open_inference_protocol"] == "false"  # off unless asked for (see ServerSettings)
    with_oip = ServerSettings(model_store=store, runtime_dir=tmp_path / "rt", open_inference=True)
    assert parse_properties(render_properties(with_oip))["ts_open_inference_protocol"] == "true"
    # allowed_urls is a Java regex; these paths need no escapes, so Python's re reads it alike.
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{store}/echo.mar")
    assert not allowed.fullmatch("file:///etc/passwd")
    assert not allowed.fullmatch("https://example.com/model.mar")

    with_auth = parse_properties(render_properties(ServerSettings(store, tmp_path / "rt", token_auth=True)))
    assert "disable_token_authorization" not in with_auth


def test_settings_refuse_what_torchserve_would_misread(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ConfigError, match="inference_address"):
        render_properties(ServerSettings(store, tmp_path, extra={"inference_address": "http://0.0.0.0:1"}))
    with pytest.raises(ConfigError, match="distinct ports"):
        ServerSettings(store, tmp_path, http_port=7070).validate()
    with pytest.raises(ConfigError, match="not in the model store"):
        ServerSettings(store, tmp_path, models=["echo=missing.mar"]).validate()
    with pytest.raises(ConfigError, match="Unix socket path"):
        ServerSettings(store, tmp_path / ("d" * 120)).validate()
    # Backslashes are escapes in java.util.Properties: they must reach TorchServe doubled.
    props = render_properties(ServerSettings(store, tmp_path, extra={"cors_allowed_origin": r"a\b"}))
    assert "cors_allowed_origin=a\\\\b" in props
    # Properties files may be read as ISO-8859-1: non-ASCII goes in as \uXXXX.
    props = render_properties(ServerSettings(store, tmp_path, extra={"cors_allowed_origin": "é"}))
    assert "cors_allowed_origin=\\u00e9" in props


# --- archives -----------------------------------------------------------------------------------


def test_build_archive_names_missing_files_and_builds_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serialized_file: expected a file, found nothing at .*nope\.pt"):
        build_archive("m", handler=HANDLER, export_dir=tmp_path, serialized_file=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="handler"):
        build_archive("m", handler=tmp_path / "missing.py", export_dir=tmp_path)
    with pytest.raises(ConfigError, match="Archive name"):
        build_archive("bad name", handler=HANDLER, export_dir=tmp_path)

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not really weights")
    folder = build_archive(
        "m",
        handler=HANDLER,
        export_dir=tmp_path / "out",
        serialized_file=weights,
        archive_format="no-archive",
    )
    manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"] == {
        "modelName": "m",
        "serializedFile": "weights.pt",
        "handler": "echo_handler.py",
        "modelVersion": "1.0",
    }
    assert (folder / "weights.pt").read_bytes() == b"not really weights"
    with pytest.raises(ConfigError, match="already exists"):
        build_archive(
            "m", handler=HANDLER, export_dir=tmp_path / "out", archive_format="no-archive", force=False
        )


# --- worker logs ---------------------------------------------------------------------------------


def test_last_exception_line_of_a_chained_traceback() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "loader.py", line 1, in load',
        "    read()",
        "KeyError: 'fc.weight'",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "handler.py", line 2, in initialize',
        "    load()",
        "CheckpointError: weights do not fit",
        "  (indented second line of the message)",
        "Backend worker process died.",
    ]
    assert last_exception_lines(lines) == ["CheckpointError: weights do not fit"]
    # The frontend may stop reading a dying worker mid-traceback; the next worker's lines are no error.
    cut_off = ["Traceback (most recent call last):", '  File "worker.py", line 3', "s_name_part0=/tmp/x"]
    assert last_exception_lines(cut_off) == []
