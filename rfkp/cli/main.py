"""`rfkp` command line: a parser and a dispatch; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (module, function that adds its parser). Imported only when the command line is built, never at package import.
SUBCOMMANDS = [
    ("rfkp.cli.predict", "add_parser"),
    ("rfkp.cli.demo", "add_parser"),
    ("rfkp.cli.serve", "add_parser"),
    ("rfkp.cli.export", "add_parser"),
    ("trainer.cli", "add_eval_parser"),
    ("trainer.train_cli", "add_parser"),
    ("trainer.search_cli", "add_parser"),
    ("trainer.calibrate_cli", "add_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfkp", description="RF-DETR Keypoint: detect, serve, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, fn in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # optional parts (serving, training extras) may be missing
            logging.getLogger(__name__).debug("subcommands of %s unavailable: %s", module_name, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one broken subcommand must not take the others down
            logging.getLogger(__name__).warning("subcommands of %s failed to load: %s", module_name, exc)
            continue
        if hasattr(module, fn):
            getattr(module, fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError) as exc:  # the user's input or environment: a message, no traceback (-v: both)
        if args.verbose:
            raise
        print(f"rfkp {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
