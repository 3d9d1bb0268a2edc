"""Fault scenarios: a bounded load driver, per-scenario figures with a pass/fail verdict, a report.

The scenarios themselves live in tests/test_faults_*.py, tests/test_fuzz_*.py and
tests/test_shutdown_*.py (real Serve apps, a real mock upstream, real databases). Each one
drives load with `drive()`, injects its fault, judges the outcome and calls `record()`, which
appends one JSON line to `load/results/faults.jsonl`. `python -m load.faults` runs the suite
and prints the Markdown table that docs/reliability.md carries:

    python -m load.faults            # run every fault/fuzz/shutdown test, then print the table
    python -m load.faults --report   # only print the table from the last run's results

Counting rules (the same in every scenario):
  * an *error* is any client-visible failure: an HTTP status >= 500, a transport error, or a
    stream that ends with an error event / without `[DONE]`; 4xx answers that the scenario
    expects (e.g. 503 while the database is down, 400 for bad input) are counted separately;
  * *data lost* = requests that got a 2xx answer but have no ledger row (when keys are on).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("DOKA_FAULTS_RESULTS", REPO / "load" / "results" / "faults.jsonl"))
MSG = [{"role": "user", "content": "Say hello to the fault suite."}]


# ---------------------------------------------------------------- one request's outcome
@dataclass
class Outcome:
    """What one client saw."""

    status: int  # HTTP status; 0 = transport error (connection refused/reset, client timeout)
    started: float  # monotonic seconds
    elapsed: float
    stream: bool = False
    done: bool = False  # a stream ended with `data: [DONE]`
    error_event: bool = False  # a stream carried an OpenAI error event
    chunks: int = 0
    text: str = ""  # streamed content, joined (to check nothing was lost)
    request_id: str | None = None
    model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the answer's x-doka-* headers
    error: str | None = None
    body: Any = None

    @property
    def ok(self) -> bool:
        if not 200 <= self.status < 300:
            return False
        return (self.done and not self.error_event) if self.stream else True

    @property
    def server_error(self) -> bool:
        """Client-visible failure: 5xx, transport error, or a broken stream."""
        return self.status == 0 or self.status >= 500 or (200 <= self.status < 300 and not self.ok)


@dataclass
class LoadRun:
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def errors(self) -> int:
        return sum(o.server_error for o in self.outcomes)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    def statuses(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for o in self.outcomes:
            key = str(o.status) if o.status else "transport"
            if o.stream and 200 <= o.status < 300 and not o.ok:
                key = "stream_error_event" if o.error_event else "stream_cut"
            c[key] += 1
        return dict(sorted(c.items()))

    def recovery_s(self, after: float) -> float | None:
        """Seconds from `after` (monotonic) to the end of the last failure; 0 when none failed."""
        bad = [o.started + o.elapsed for o in self.outcomes if o.server_error and o.started + o.elapsed >= after]
        return round(max(bad) - after, 2) if bad else 0.0


def chat_body(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MSG, "max_tokens": 16, **extra}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    """The content a chat or completion chunk carries ('' for role/usage-only chunks)."""
    parts = []
    for c in chunk.get("choices") or []:
        parts.append((c.get("delta") or {}).get("content") or c.get("text") or "")
    return "".join(parts)


async def _one(session: Any, url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Outcome:
    import aiohttp

    t0 = time.monotonic()
    stream = bool(body.get("stream"))
    out = Outcome(status=0, started=t0, elapsed=0.0, stream=stream)
    try:
        async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            out.status = r.status
            out.request_id = r.headers.get("x-doka-request-id")
            out.model = r.headers.get("x-doka-model")
            out.headers = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-doka-")}
            if stream and r.status == 200:
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        out.done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk and "choices" not in chunk:
                        out.error_event, out.body = True, chunk
                    else:
                        out.chunks += 1
                        out.text += _chunk_text(chunk)
            else:
                raw = await r.read()
                try:
                    out.body = json.loads(raw)
                except ValueError:
                    out.body = raw[:200].decode(errors="replace")
    except Exception as e:  # transport failure: counted, never raised
        out.error = f"{type(e).__name__}: {e}"[:200]
    out.elapsed = time.monotonic() - t0
    return out


async def drive_async(url: str, bodies: Callable[[int], dict[str, Any]], *, clients: int, requests: int | None = None,
                      duration: float | None = None, headers: Callable[[int], dict[str, str]] | None = None,
                      timeout: float = 30.0, during: Callable[[], Any] | None = None,
                      until_during: bool = False) -> LoadRun:
    """`clients` concurrent loops posting `bodies(i)` until `requests` were sent or `duration` ran out.

    `during` (sync or async, optional) runs once, concurrently, while the load runs: the fault.
    It is awaited (its exception fails the run); with `until_during` the load also stops when
    it returns, so a fault script that waits for recovery sets the window's length.
    """
    import aiohttp

    if requests is None and duration is None:
        raise ValueError("give requests or duration")
    run = LoadRun(started=time.monotonic())
    deadline = run.started + duration if duration is not None else float("inf")
    counter = iter(range(requests if requests is not None else 10**9))
    connector = aiohttp.TCPConnector(limit=0, force_close=False)

    stopped: list[bool] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if stopped or time.monotonic() >= deadline:
                return
            run.outcomes.append(await _one(session, url, bodies(i), headers(i) if headers else {}, timeout))

    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(clients)]
        if during is not None:
            try:
                result = during()
                if inspect.isawaitable(result):  # a coroutine, or the future of a sync fault in a thread
                    await result
            finally:
                if until_during:
                    stopped.append(True)
        await asyncio.gather(*tasks)
    run.elapsed = time.monotonic() - run.started
    return run


def drive(url: str, bodies: Callable[[int], dict[str, Any]], **kw: Any) -> LoadRun:
    """Blocking `drive_async`, for tests; a sync `during` runs in a thread so it may block."""
    during = kw.pop("during", None)
    if during is not None and not asyncio.iscoroutinefunction(during):
        sync = during
        kw["during"] = lambda: asyncio.get_running_loop().run_in_executor(None, sync)
    return asyncio.run(drive_async(url, bodies, **kw))


def ledger_missing(run: LoadRun, ledger_ids: Iterable[str]) -> list[str]:
    """Request ids that got a 2xx answer but have no ledger row."""
    have = set(ledger_ids)
    return [o.request_id or "?" for o in run.outcomes if 200 <= o.status < 300 and o.request_id not in have]


# ---------------------------------------------------------------- figures + verdicts
class ScenarioResult(BaseModel):
    """One row of docs/reliability.md."""

    scenario: str
    load: str
    faults: str
    requests: int
    errors: int = Field(description="client-visible failures: 5xx, transport errors, broken streams")
    expected_errors: int = Field(0, description="failures the scenario allows (e.g. chunks already sent)")
    status_counts: dict[str, int] = Field(default_factory=dict)
    data_lost: int | None = Field(None, description="2xx answers without a ledger row; None: no ledger here")
    recovery_s: float | None = None
    passed: bool
    notes: str = ""
    at: float = Field(default_factory=time.time)


def record(result: ScenarioResult) -> ScenarioResult:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(result.model_dump_json() + "\n")
    return result


def load_results(path: Path = RESULTS) -> list[ScenarioResult]:
    if not path.exists():
        return []
    latest: dict[str, ScenarioResult] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = ScenarioResult.model_validate_json(line)
            latest[r.scenario] = r  # the newest run of each scenario
    return list(latest.values())


def markdown_table(results: list[ScenarioResult]) -> str:
    lines = ["| scenario | load | faults injected | requests | errors | data lost | recovery s | verdict | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lost = "n/a" if r.data_lost is None else str(r.data_lost)
        rec = "" if r.recovery_s is None else f"{r.recovery_s:g}"
        err = f"{r.errors}" + (f" ({r.expected_errors} expected)" if r.expected_errors else "")
        lines.append(f"| {r.scenario} | {r.load} | {r.faults} | {r.requests} | {err} | {lost} | {rec} | "
                     f"{'PASS' if r.passed else 'FAIL'} | {r.notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.faults", description="run the fault suite and print its table")
    p.add_argument("--report", action="store_true", help="only print the table of the last results")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k upstream)")
    args = p.parse_args(argv)
    rc = 0
    if not args.report:
        if RESULTS.exists():
            RESULTS.unlink()
        tests = sorted(str(t) for pat in ("test_faults_*.py", "test_fuzz_*.py", "test_shutdown_*.py")
                       for t in (REPO / "tests").glob(pat))
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests,
                              *args.pytest_args], cwd=REPO)
    results = load_results()
    print(markdown_table(results))
    failed = [r.scenario for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} scenarios passed" + (f"; failed: {failed}" if failed else ""))
    return rc or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
