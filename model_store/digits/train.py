"""Train the demo model the way the PyTorch docs teach, saving one checkpoint per epoch.

Data: scikit-learn's 8x8 handwritten digits, which ship inside the scikit-learn package (no download).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from serving import save_checkpoint

try:
    from model import DigitsCNN
except ImportError:  # imported as model_store.digits.train
    from model_store.digits.model import DigitsCNN

Split = tuple[torch.Tensor, torch.Tensor]


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """(train, test) splits of (images (n, 1, 8, 8) float32 0..16, labels int64)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


def accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(split[0]).argmax(1) == split[1]).float().mean().item())


def train(
    out_dir: str | Path,
    *,
    epochs: int = 5,
    seed: int = 0,
    start_epoch: int = 1,
    model: DigitsCNN | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[int, Path, float], None] | None = None,
) -> tuple[DigitsCNN, torch.optim.Optimizer]:
    """Train ``epochs`` epochs, saving ``model_epoch_<N>.pth`` (weights, optimizer, epoch, loss) each time."""
    torch.manual_seed(seed)
    (x, y), test = load_digits_split(seed=seed)
    model = model or DigitsCNN()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, start_epoch + epochs):
        model.train()
        total = 0.0
        for batch in torch.split(torch.randperm(len(y)), 64):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val_accuracy = accuracy(model, test)
        path = save_checkpoint(
            out_dir,
            model,
            optimizer=optimizer,
            epoch=epoch,
            loss=total / len(y),
            metrics={"val_accuracy": val_accuracy},
        )
        if on_epoch is not None and path is not None:
            on_epoch(epoch, path, val_accuracy)
    return model, optimizer


def resume(out_dir: str | Path) -> tuple[int, DigitsCNN | None, torch.optim.Optimizer | None]:
    """Continue from the newest model_epoch_<N>.pth in ``out_dir`` (seeds 9.3, 9.4): weights and optimizer."""
    numbered = sorted((n, p) for p in Path(out_dir).glob("model_epoch_*.pth") if (n := number(p)) is not None)
    if not numbered:
        return 1, None, None
    epoch, path = numbered[-1]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsCNN()
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    return epoch + 1, model, optimizer


def number(path: Path) -> int | None:
    tail = path.stem.removeprefix("model_epoch_")
    return int(tail) if tail.isdigit() else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    start, model, optimizer = resume(args.out_dir)
    if model is not None:
        print(f"resuming after epoch {start - 1} from {args.out_dir}")
    train(
        args.out_dir,
        epochs=args.epochs,
        start_epoch=start,
        model=model,
        optimizer=optimizer,
        on_epoch=lambda e, p, a: print(f"epoch {e}: {p} val_accuracy={a:.3f}"),
    )
