"""`rfkp` command line: a parser and a dispatch; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (module, function that adds its parser, the command it adds, the extra its imports need). Imported only when
# the command line is built, never at package import.
SUBCOMMANDS = [
    ("rfkp.cli.predict", "add_parser", "predict", None),
    ("rfkp.cli.demo", "add_parser", "demo", "serving"),
    ("rfkp.cli.serve", "add_parser", "serve", "serving"),
    ("rfkp.cli.export", "add_parser", "export", "export"),
    ("trainer.cli", "add_eval_parser", "eval", "training"),
    ("trainer.train_cli", "add_parser", "train", "training"),
    ("trainer.search_cli", "add_parser", "search", "training"),
    ("trainer.calibrate_cli", "add_parser", "calibrate", "training"),
]


def _add_unavailable(sub: argparse._SubParsersAction, command: str, extra: str | None, exc: Exception) -> None:
    """A command whose module cannot be imported stays on the command line and says why when run (it used to
    vanish: "invalid choice")."""
    hint = f"; install it with pip install 'rfkp[{extra}]'" if extra and isinstance(exc, ImportError) else ""
    reason = f"{type(exc).__name__}: {exc}"
    p = sub.add_parser(command, help=f"(unavailable: {reason})", add_help=False)

    def unavailable(args: argparse.Namespace) -> int:
        print(f"rfkp {command}: error: this command is unavailable here ({reason}){hint}", file=sys.stderr)
        return 1

    p.set_defaults(func=unavailable, unavailable=True)  # its arguments are not parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfkp", description="RF-DETR Keypoint: detect, serve, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, fn, command, extra in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a missing extra or a broken module must not take the others down
            _add_unavailable(sub, command, extra, exc)
            continue
        getattr(module, fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
