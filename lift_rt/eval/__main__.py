"""``python -m lift_rt.eval <command>``: each command lives in its own module.

A command module exposes ``add_parser(subparsers)`` that registers its
sub-parser and sets ``func`` (called with the parsed args) as a default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lift_rt.cli import plain_text

COMMAND_MODULES = ("lift_rt.eval.fidelity", "lift_rt.eval.pck_cli", "lift_rt.eval.davis", "lift_rt.eval.corloc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lift_rt.eval", description=plain_text(__doc__.splitlines()[0]))
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    from lift_rt.backends import BackendUnavailable

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, BackendUnavailable) as exc:  # bad inputs: a message, not a traceback
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
