"""``python -m benchmarks NAME``: run one benchmark and print its numbers."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    name: f"benchmarks.{name}"
    for name in (
        "load",
        "http",
        "reload",
        "grpc",
        "metrics",
        "sweep",
        "worker_path",
        "compare",
        "bodies",
        "async_batching",
    )
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
