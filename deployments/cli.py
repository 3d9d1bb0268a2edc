"""`doka models ...`: set-up commands for self-hosted models."""

from __future__ import annotations

import argparse
import json


def _make_tiny(args: argparse.Namespace) -> int:
    from deployments.local_models import DEFAULT_OUT, TinyModelSpec, describe, fingerprint, make_tiny_model

    path = make_tiny_model(args.out or DEFAULT_OUT, TinyModelSpec(seed=args.seed), force=args.force)
    print(json.dumps({"path": str(path), **describe(path), "sha256": fingerprint(path)}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="self-hosted (vLLM) model set-up")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    models.set_defaults(handler=lambda _args: models.print_help() or 2)
    tiny = sub.add_parser(
        "make-tiny",
        help="generate the tiny random Llama model + tokenizer the default config serves as local-tiny",
    )
    tiny.add_argument("--out", default=None, help="output folder (default: .doka/models/tiny-llama)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same bytes)")
    tiny.add_argument("--force", action="store_true", help="regenerate even if the folder is complete")
    tiny.set_defaults(handler=_make_tiny)
