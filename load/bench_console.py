"""How fast the console's pages read a large ledger: fills a SQLite accounts database with N
ledger rows (default 1,000,000: 500 keys in 20 teams, 8 models, 30 days), then times each query
a page runs (accounts.console_queries), median of `--repeat` runs.

    python -m load.bench_console [--rows 1000000] [--db /tmp/doka-console-bench.sqlite]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from accounts import console_queries as q
from accounts import db
from accounts.models import Key, LedgerEntry


def fill(engine, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    keys = [{"id": f"k{i:05d}", "key_hash": f"h{i:063d}", "key_hint": "sk-...", "alias": f"key-{i}",
             "team": f"team-{i % 20}", "meta": {}, "models": []} for i in range(500)]
    models = [f"model-{i}" for i in range(8)]
    start = datetime(2026, 11, 1)
    with engine.begin() as conn:
        conn.execute(insert(Key), keys)
    chunk = 50_000
    for lo in range(0, rows, chunk):
        batch = []
        for i in range(lo, min(rows, lo + chunk)):
            t = start + timedelta(seconds=i * (30 * 86400 / rows))
            batch.append({"request_id": f"r{i:08d}", "key_id": keys[rng.randrange(500)]["id"], "model_requested": "auto",
                          "model": models[rng.randrange(8)], "prompt_tokens": rng.randrange(10, 2000),
                          "completion_tokens": rng.randrange(1, 500), "cost_usd": rng.random() / 1000,
                          "latency_ms": rng.random() * 900, "status": 200 if rng.random() > 0.02 else 429,
                          "route_reason": "router: best score", "stream": False, "created_at": t,
                          "day": t.strftime("%Y-%m-%d")})
        with engine.begin() as conn:
            conn.execute(insert(LedgerEntry), batch)


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=None, help="reuse this SQLite file if it has the rows")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    path = a.db or Path(tempfile.mkdtemp()) / "console-bench.sqlite"
    engine = db.make_engine(f"sqlite:///{path}")
    db.migrate(engine)
    with engine.connect() as conn:
        have = conn.exec_driver_sql("select count(*) from doka_ledger").scalar()
    if have < a.rows:
        t0 = time.perf_counter()
        fill(engine, a.rows)
        print(f"filled {a.rows:,} ledger rows in {time.perf_counter() - t0:.1f} s ({path})")
    with engine.begin() as conn:
        conn.exec_driver_sql("delete from doka_spend_daily")
    t0 = time.perf_counter()
    n = q.refresh_rollup(engine, q.rollup_cutoff())
    print(f"rollup of the finished days built once in {(time.perf_counter() - t0) * 1000:.0f} ms ({n:,} rollup rows)")
    cases = {
        "requests page (newest 200)": lambda: q.recent_requests(engine, limit=200),
        "requests page, one key": lambda: q.recent_requests(engine, key_id="k00042", limit=200),
        "one request's trace": lambda: q.request_rows(engine, "r00500000"),
        "spend by day, all time": lambda: q.spend(engine, "day"),
        "spend by day, last 7 days": lambda: q.spend(engine, "day", start="2026-11-24"),
        "spend by key, all time": lambda: q.spend(engine, "key"),
        "spend by team, all time": lambda: q.spend(engine, "team"),
        "spend by model, all time": lambda: q.spend(engine, "model"),
        "one key's spend by day": lambda: q.spend(engine, "day", key_id="k00042"),
        "spend page (4 groupings)": lambda: [q.spend(engine, g) for g in q.SPEND_GROUPS],
        "spend page, last 7 days": lambda: [q.spend(engine, g, start="2026-11-24") for g in q.SPEND_GROUPS],
    }
    print(f"{'query':32s} median ms ({a.repeat} runs, {a.rows:,} rows)")
    for name, fn in cases.items():
        ms = timed(fn, a.repeat)
        print(f"{name:32s} {ms:9.1f}")


if __name__ == "__main__":
    main()
