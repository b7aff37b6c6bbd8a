"""The ``ckptserve`` command: thin wrappers over the library, printing for people (or JSON for machines)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from serving.errors import CkptServeError

Command = Callable[[argparse.Namespace], int]


def _inspect(args: argparse.Namespace) -> int:
    from serving.checkpoints.summary import summarize

    summary = summarize(
        args.checkpoint,
        trust_pickle=args.trust_pickle,
        state_dict_key=args.state_dict_key,
        safe_globals=args.safe_global,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    rows = [
        ("path", summary["path"]),
        ("layout", f"{summary['layout']} ({summary['kind']})"),
        ("weights entry", summary["state_dict_key"] or "-"),
        ("size", _bytes(summary["size_bytes"])),
        ("tensors", f"{summary['tensors']:,}"),
        ("parameters", f"{summary['parameters']:,} ({_bytes(summary['tensor_bytes'])})"),
        ("dtypes", ", ".join(f"{k} x{v}" for k, v in summary["dtypes"].items())),
        ("saved on", ", ".join(summary["saved_devices"]) or "-"),
        ("epoch", summary["epoch"] if summary["epoch"] is not None else "-"),
        ("loss", summary["loss"] if summary["loss"] is not None else "-"),
        ("fingerprint", summary["fingerprint"]),
        ("sha256", summary["sha256"]),
    ]
    rows += [
        (f"meta.{k}", json.dumps(v)) for k, v in summary["metadata"].items() if k not in ("epoch", "loss")
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="show what a checkpoint holds, without building a model")
    inspect.add_argument("checkpoint", help="a checkpoint file or directory (any supported layout)")
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_load_options(inspect)
    inspect.set_defaults(run=_inspect)
    return parser


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled Python objects (runs their code)"
    )
    parser.add_argument("--state-dict-key", help="the checkpoint entry that holds the model's weights")
    parser.add_argument(
        "--safe-global", action="append", default=[], metavar="MODULE.NAME", help="allow one pickled class"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    run: Command = args.run
    try:
        return run(args)
    except CkptServeError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  what to do: {err.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
