"""The README's by-hand flow, run command by command as written, in a scratch copy of a fresh clone.

The block between ``<!-- readme-flow -->`` and ``<!-- /readme-flow -->`` in README.md is the source.
Its commands run in order, each in its own bash that inherits the variables the ones before exported
(``source .venv/bin/activate``), in a scratch directory that looks like a clone after ``make demo``:
``.venv`` (this test's environment) and ``model_store/`` linked in, its own TMPDIR (so the default
runtime directory is private). One change is made, so that the flow runs beside other servers: free
ports go right after ``ckptserve serve`` and ``ckptserve predict`` (flags the README may still set
later on the line win).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from serving.torchserve import free_port, free_ports
from serving.torchserve.server import stop_server

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- readme-flow -->", "<!-- /readme-flow -->"


def flow_commands(readme: str) -> list[str]:
    """The shell commands of the marked block: comments and blank lines dropped, continuations joined."""
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1, "mark exactly one block in README.md"
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    fenced = re.search(r"```bash\n(.*?)```", block, re.S)
    assert fenced, "the marked block holds no ```bash fence"
    commands, pending = [], ""
    for line in fenced.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append(pending + line)
        pending = ""
    assert not pending, "the block ends inside a continued line"
    return commands


# `ckptserve serve` flags of ServerSettings' port fields (what free_ports() returns).
SERVE_FLAGS = {
    "http_port": "--http-port",
    "management_port": "--management-port",
    "metrics_port": "--metrics-port",
    "grpc_inference_port": "--grpc-port",
    "grpc_management_port": "--grpc-management-port",
    "oip_grpc_port": "--oip-grpc-port",
}


def with_ports(command: str, ports: Mapping[str, object]) -> str:
    """The command with this test's ports right after the subcommand (see the module docstring)."""
    serve = " ".join(f"{SERVE_FLAGS[name]} {port}" for name, port in ports.items())
    command = re.sub(r"\bckptserve serve\b", f"ckptserve serve {serve}", command)
    return re.sub(r"\bckptserve predict\b", f"ckptserve predict --port {ports['http_port']}", command)


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory laid out like a fresh clone after `make demo`; any server left is stopped."""
    venv = Path(sys.prefix)
    assert (venv / "bin" / "ckptserve").exists(), f"run the tests from the project's virtualenv ({venv})"
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / "model_store").symlink_to(ROOT / "model_store")
    (tmp_path / "tmp").mkdir()
    yield tmp_path
    stop_server(tmp_path / "tmp" / f"ckptserve-{os.getuid()}")  # a no-op when the flow stopped it


def run_in_order(commands: list[str], cwd: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Each command in its own bash; variables exported by earlier commands carry over."""
    exported = cwd / ".exported.sh"
    exported.write_text("")
    done = []
    for command in commands:
        script = f"source {shlex.quote(str(exported))}\n{command}\nrc=$?\nexport -p > {exported}\nexit $rc\n"
        result = subprocess.run(
            ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"README command failed ({result.returncode}): {command}\n{result.stdout}\n{result.stderr}"
        )
        done.append(result)
    return done


def test_readme_flow_runs_as_written(clone: Path) -> None:
    commands = flow_commands((ROOT / "README.md").read_text())
    verbs = [c.split()[1] for c in commands if c.startswith("ckptserve ")]
    promised = iter(verbs)  # package, serve, predict, stop in this order (other commands may come between)
    assert all(verb in promised for verb in ("package", "serve", "predict", "stop")), commands
    assert commands[0] == "source .venv/bin/activate"  # it says how ckptserve gets on PATH
    assert any(c.startswith("python model_store/digits/train.py") for c in commands)  # it fills the watch dir

    ports = {**free_ports(), "oip_grpc_port": free_port()}
    # This environment without the virtualenv (java and the rest stay): `source` must put it on PATH.
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=path, TMPDIR=str(clone / "tmp"), TEMP=str(clone / "tmp"))
    results = run_in_order([with_ports(c, ports) for c in commands], clone, env)

    by_command = dict(zip(commands, results, strict=True))
    predict = next(r for c, r in by_command.items() if c.startswith("ckptserve predict"))
    top = json.loads(predict.stdout)["predictions"][0][0]
    assert top["label"] == "zero", predict.stdout  # the README's image is a 0, a class of the labels file
    stop = next(r for c, r in by_command.items() if c.startswith("ckptserve stop"))
    assert stop.stdout.strip() == "stopped"
    assert (clone / "store" / "digits.mar").is_file()
    written = {p.name for p in (clone / "checkpoints").glob("model_epoch_*.pth")}
    assert written == {"model_epoch_1.pth", "model_epoch_2.pth", "model_epoch_3.pth"}  # the trainer resumed
