"""The `doka` command: a thin dispatcher over each folder's own subcommands.

Each folder that offers commands exposes `register(subparsers)` in its `cli` module; this
keeps the CLI layout the same as the architecture and keeps heavy imports lazy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds). A module that is missing or fails to import is reported, not fatal.
SUBCOMMAND_MODULES = [
    "app.run_cli",  # doka run / doka serve-config / doka config check
    "training.cli",  # doka router ...
    "training.from_traces",  # doka train-from-traces
    "accounts.cli",  # doka keys ...
    "deployments.cli",  # doka models make-tiny
    "kuberay.cli",  # doka k8s ...
    "load.cli",  # doka bench, doka mock-upstream
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="doka", description="Ray Serve native LLM gateway with learned routing")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that folder has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result = handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
