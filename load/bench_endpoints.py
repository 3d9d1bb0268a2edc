"""Each model endpoint through one keys-on gateway: chat vs /v1/messages, /v1/responses, /v1/embeddings.

Same gateway (`doka run`, keys on, static router), same mock upstream and latency, same model
(mock-gpt-3.5; mock-embed for embeddings), non-streaming, one endpoint after the other at each
client count; prints a Markdown table of req/s, p50 and p99. What differs between the rows is
the endpoint's own work on the ingress (validation + translation in and out).
Only 127.0.0.1 is ever targeted; every run is bounded in time.

    python -m load.bench_endpoints [--clients 1,50] [--duration 10] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
from typing import Any

from load.harness import Gateway, load, start_mock

PROMPT = "Say hello to the benchmark."
ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "mock-gpt-3.5", "max_tokens": 16,
                                      "messages": [{"role": "user", "content": PROMPT}]}),
    "messages": ("/v1/messages", {"model": "mock-gpt-3.5", "max_tokens": 16,
                                  "messages": [{"role": "user", "content": PROMPT}]}),
    "responses": ("/v1/responses", {"model": "mock-gpt-3.5", "max_output_tokens": 16, "input": PROMPT}),
    "embeddings": ("/v1/embeddings", {"model": "mock-embed", "input": PROMPT}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,50")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--endpoints", default=",".join(ENDPOINTS))
    p.add_argument("--tool", choices=["wrk", "python"], default="python")
    args = p.parse_args(argv)
    mock, mock_port = start_mock(args.latency_ms)
    gw = Gateway(mock_port, keys=True, learned=False, tag="bench-ep")
    rows = []
    try:
        gw.ready()
        for name in args.endpoints.split(","):
            path, body = ENDPOINTS[name]
            load(args.tool, gw.url + path, body, 4, 2, gw.headers)  # warm up
            for clients in (int(c) for c in args.clients.split(",")):
                r = load(args.tool, gw.url + path, body, clients, args.duration, gw.headers)
                rows.append((name, path, clients, r))
                print(f"{name} c={clients}: {r}", flush=True)
    finally:
        gw.stop()
        mock.terminate()
    print(f"\n| endpoint | clients | req/s | p50 ms | p99 ms | errors |  (mock latency {args.latency_ms:g} ms)")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, path, clients, r in rows:
        print(f"| `{path}` | {clients} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['non2xx']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
