"""Per-request cost of the observability facade on its own (no Ray, no HTTP).

One "request" = `Observability.start` + an `auto` routing decision + one successful attempt +
`finish` (metrics, span work, trace-store row), as the ingress makes them. Prints microseconds
per request; the trace store writes to a temp dir. Run on a quiet box:

    python -m load.bench_observability --requests 20000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from app.config import DEFAULT_CONFIG_PATH, load_config
from observability.gateway import Observability

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}]}
DECISION = {"model": "mock-gpt-3.5", "strategy": "learned", "score": 0.5, "artifact_version": "v1"}
ANSWER = {"model": "gpt-3.5-turbo", "usage": {"prompt_tokens": 3, "completion_tokens": 4},
          "choices": [{"finish_reason": "stop"}]}


def one(obs: Observability, i: int) -> None:
    req = obs.start(f"r{i}", "auto", BODY, key_id="k1")
    with obs.routing(["mock-gpt-3.5"]) as r:
        r.decided(DECISION)
    with req.attempt("mock-gpt-3.5") as a:
        a.succeeded(ANSWER)
    obs.finish(f"r{i}", "mock-gpt-3.5", usage=ANSWER["usage"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args(argv)
    cfg = load_config(DEFAULT_CONFIG_PATH)
    cfg.server.data_dir = tempfile.mkdtemp(prefix="doka-obs-bench-")
    obs = Observability(cfg, mirror_to_ray=False)
    for i in range(2000):  # warm-up
        one(obs, i)
    t = time.perf_counter()
    for i in range(args.requests):
        one(obs, i)
    us = (time.perf_counter() - t) / args.requests * 1e6
    obs.close()
    print(f"{us:.1f} us per request (start + routing + attempt + finish); spans "
          f"{'on' if obs.tracing.enabled else 'off (no exporter)'}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
