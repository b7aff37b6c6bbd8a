"""Load time and peak RSS: plain torch.load vs ckptserve's load_model vs safetensors, on >= 200 MB of weights
plus Adam state. Each measurement runs in a fresh process so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import current_rss, median, peak_rss, save_results

MiB = 2**20


class Big(nn.Module):
    """12 x Linear(2048, 2048): 201 MB of float32 weights."""

    def __init__(self, layers: int = 12, width: int = 2048) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def write_files(directory: Path) -> tuple[Path, Path, int]:
    model = Big()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 2048)).sum().backward()
    optimizer.step()  # fills Adam's exp_avg and exp_avg_sq: the file is ~3x the weights
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    ckpt = directory / "model_epoch_1.pth"
    torch.save(
        {"epoch": 1, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        ckpt,
    )
    from safetensors.torch import save_file

    st = directory / "model.safetensors"
    save_file(model.state_dict(), st)
    return ckpt, st, weights


def measure_one(method: str, path: str) -> dict[str, float]:
    """Runs inside the child process: load once, report seconds and peak extra RSS."""
    base = current_rss()
    started = time.perf_counter()
    if method == "torch.load":
        model = Big()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"])
    elif method == "ckptserve":
        from serving import load_model

        model = load_model(Big, path)
    elif method == "ckptserve (sha256 known)":
        from serving import load_model

        model = load_model(Big, path, sha256="precomputed")
    elif method == "safetensors":
        from safetensors.torch import load_file

        model = Big()
        model.load_state_dict(load_file(path))
    else:
        raise ValueError(method)
    model.eval()
    return {"seconds": time.perf_counter() - started, "peak_extra_mib": (peak_rss() - base) / MiB}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, st, weights = write_files(Path(tmp))
        print(
            f"weights {weights / MiB:.0f} MiB; checkpoint with Adam state {ckpt.stat().st_size / MiB:.0f} MiB"
        )
        print(f"{'method':<26} {'load s (median)':>16} {'peak extra RSS MiB':>20} {'x weights':>10}")
        rows = {}
        for method, path in (
            ("torch.load", ckpt),
            ("ckptserve", ckpt),
            ("ckptserve (sha256 known)", ckpt),
            ("safetensors", st),
        ):
            runs = [_child(method, path) for _ in range(args.repeat)]
            secs = median([r["seconds"] for r in runs])
            peak = max(r["peak_extra_mib"] for r in runs)
            rows[method] = {
                "seconds_median": round(secs, 3),
                "peak_extra_mib": round(peak, 1),
                "file": path.name,
            }
            print(f"{method:<26} {secs:>16.3f} {peak:>20.0f} {peak * MiB / weights:>10.2f}")
    out = save_results("load", {"weights_mib": round(weights / MiB, 1), "methods": rows})
    print(f"results: {out}")


def _child(method: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--child", method, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
