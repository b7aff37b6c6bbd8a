"""Regenerate the modules and .pyi stubs beside the .proto files: `python -m serving.protos.generate`."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
# protoc runs from the repository root so that each file is known as serving/protos/NAME.proto:
# the generated `_pb2_grpc` modules then import `from serving.protos import NAME_pb2` with no
# rewriting, and our file names cannot collide in protobuf's descriptor pool with another
# project's bare "inference.proto". The .pyi stubs come from mypy-protobuf's two protoc plugins (one
# tool for both kinds, so the service stubs name the same message classes the message stubs declare);
# ruff's exclude in pyproject.toml covers them, as they follow mypy-protobuf's style, not ours.
REPO_ROOT = PROTOS_DIR.parent.parent
PROTO_FILES = ("inference.proto", "management.proto", "grpc_predict_v2.proto")


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Compile every .proto into out_root/serving/protos/ and return the files written."""
    # Imported here: importing this module (for PROTOS_DIR, say) must not need dev-only grpcio-tools.
    from grpc_tools import protoc

    out_dir = out_root / "serving" / "protos"
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    plugins = [f"--plugin=protoc-gen-{name}={_plugin(name)}" for name in ("mypy", "mypy_grpc")]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={REPO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        *plugins,
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(f"serving/protos/{name}" for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}; its errors are printed above")
    return sorted(out_dir.glob("*_pb2*.py*"))


def _plugin(name: str) -> Path:
    """A protoc plugin that mypy-protobuf (a dev dependency) installs beside this interpreter."""
    path = Path(sys.executable).parent / f"protoc-gen-{name}"
    if not path.exists():
        raise RuntimeError(f"{path} not found: `make install` installs it (mypy-protobuf, in the dev extra)")
    return path


def main() -> int:
    for path in generate():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
