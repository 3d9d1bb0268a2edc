"""Interactive latency with and without a large batch running (the runner's yield rule).

One keys-on gateway (`doka run`, static router), the mock upstream at a fixed latency. First
`--clients` interactive chat clients for `--duration` s alone; then a `--lines`-line batch is
created (OpenAI Batch API, same key) and, once it runs, the same interactive load again; the
batch's progress during that window is reported, then the batch is cancelled. Prints a
Markdown table of req/s, p50 and p99 per phase. Only 127.0.0.1 is targeted; bounded in time.

    python -m load.bench_batches [--clients 10] [--duration 20] [--lines 10000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from load.harness import Gateway, load, start_mock

BODY = {"model": "mock-gpt-3.5", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]}


def batch_file(lines: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {**BODY, "messages": [{"role": "user", "content": f"Batch question {i}"}]}})
                   + "\n" for i in range(lines)).encode()


def counts(gw: Gateway, batch_id: str) -> dict[str, int]:
    return httpx.get(f"{gw.url}/v1/batches/{batch_id}", headers=gw.headers, timeout=30).json()["request_counts"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--latency-ms", type=float, default=50.0)
    args = p.parse_args(argv)
    mock, mock_port = start_mock(args.latency_ms)
    gw = Gateway(mock_port, keys=True, learned=False, tag="bench-batch")
    rows = []
    try:
        gw.ready()
        url = gw.url + "/v1/chat/completions"
        load("python", url, BODY, 4, 2, gw.headers)  # warm up
        rows.append(("interactive alone", load("python", url, BODY, args.clients, args.duration, gw.headers), ""))
        f = httpx.post(f"{gw.url}/v1/files", headers=gw.headers, timeout=120, data={"purpose": "batch"},
                       files={"file": ("bench.jsonl", batch_file(args.lines), "application/jsonl")}).json()
        b = httpx.post(f"{gw.url}/v1/batches", headers=gw.headers, timeout=60,
                       json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"}).json()
        deadline = time.time() + 60
        while counts(gw, b["id"])["completed"] < 50 and time.time() < deadline:  # the runner is going
            time.sleep(0.5)
        before = counts(gw, b["id"])["completed"]
        r = load("python", url, BODY, args.clients, args.duration, gw.headers)
        during = counts(gw, b["id"])["completed"] - before
        rows.append((f"interactive + {args.lines}-line batch", r,
                     f"{during} lines ({during / args.duration:.0f}/s) in the window"))
        alone_batch_start = counts(gw, b["id"])["completed"]
        time.sleep(args.duration / 2)
        alone_rate = (counts(gw, b["id"])["completed"] - alone_batch_start) / (args.duration / 2)
        rows.append(("batch alone", None, f"{alone_rate:.0f} lines/s"))
        httpx.post(f"{gw.url}/v1/batches/{b['id']}/cancel", headers=gw.headers, timeout=30)
    finally:
        gw.stop()
        mock.terminate()
    print(f"\n| phase | clients | req/s | p50 ms | p99 ms | errors | batch |  (mock latency {args.latency_ms:g} ms)")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r, note in rows:
        if r is None:
            print(f"| {name} | - | - | - | - | - | {note} |")
        else:
            print(f"| {name} | {args.clients} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['non2xx']} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
