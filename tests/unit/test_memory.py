"""Peak memory of a load: the optimizer state in a checkpoint is never read into memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

WEIGHT_MIB = 48  # 12 x (1024 x 1024) float32


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(12)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def peak_rss() -> int:
    """This process's own high-water mark (VmHWM; ru_maxrss would inherit the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


MEASURE = textwrap.dedent(
    """
    import sys, psutil
    from serving import load_model
    from tests.unit.test_memory import Wide, peak_rss
    base = psutil.Process().memory_info().rss
    model = load_model(Wide, sys.argv[1])
    print((peak_rss() - base) / 2**20)
    """
)


@pytest.mark.slow
def test_peak_memory_stays_near_the_weights_not_the_file(tmp_path: Path) -> None:
    model = Wide()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    optimizer.step()  # Adam keeps two more tensors per weight: the file is 3x the weights
    path = tmp_path / "adam.pth"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)
    assert path.stat().st_size > 3 * WEIGHT_MIB * 2**20
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], cwd=root, capture_output=True, text=True, check=True
    )
    extra_mib = float(out.stdout.strip().splitlines()[-1])
    # One private copy of the weights plus slack; reading the whole file would cost 3x, and keeping
    # the file's pages mapped while copying would cost 2x.
    assert extra_mib < 1.5 * WEIGHT_MIB, f"peak grew by {extra_mib:.0f} MiB for {WEIGHT_MIB} MiB of weights"
