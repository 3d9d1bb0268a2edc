"""`doka mock-upstream` and `doka bench`."""

from __future__ import annotations

import argparse


def _mock(args: argparse.Namespace) -> int:
    from load.mock_upstream import serve

    return serve(args)


def _bench(args: argparse.Namespace) -> int:
    from load.bench_gateway import run_bench

    return run_bench(args)


def register(sub: argparse._SubParsersAction) -> None:
    from load.bench_gateway import add_arguments as bench_args
    from load.mock_upstream import add_arguments as mock_args

    mock = sub.add_parser("mock-upstream", help="run the OpenAI-compatible mock provider (latency, faults)")
    mock_args(mock)
    mock.set_defaults(handler=_mock)

    bench = sub.add_parser("bench", help="gateway vs mock upstream: requests/s, p50, p99 at 1 and N clients")
    bench_args(bench)
    bench.set_defaults(handler=_bench)
