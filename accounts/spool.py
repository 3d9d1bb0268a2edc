"""A local write-ahead spool of ledger rows: what the accounts core has acknowledged survives a kill.

Every row is appended here when it is recorded, and the segment is fsync'd before a settlement is
answered (`sync`), so a 200 a client saw always has its row on disk. The periodic flush rotates
to a fresh segment, writes the buffered rows to the database, and deletes the segments it covered
only once that commit succeeded. On start the leftover segments are read back into the buffer;
each row carries a unique `row_uid`, so rows already in the database are not inserted twice.
Rows the database refuses (not an outage: a value it cannot store) go to `quarantine.jsonl`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("doka.accounts")
PREFIX, SUFFIX = "ledger-", ".jsonl"
QUARANTINE = "quarantine.jsonl"


def _encode(row: dict[str, Any]) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()},
                      separators=(",", ":"))


def _decode(line: str) -> dict[str, Any]:
    row = json.loads(line)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


def _locked(path: Path) -> bool:
    """True when a live process has `path` open as its current segment."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to replay


class LedgerSpool:
    """Append-only segment files in one directory (one accounts core per directory)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n = 0
        # left by an earlier process; a live one (a replica still draining) holds a lock on its open segment
        self._closed: list[Path] = [p for p in sorted(self.dir.glob(f"{PREFIX}*{SUFFIX}")) if not _locked(p)]
        self._file = self._open()
        self._dirty = False
        self._in_active = 0  # rows in the open segment
        self._appended = 0  # rows appended so far
        self._synced = 0  # of those, how many a finished fsync covers

    def _open(self):
        self._n += 1
        path = self.dir / f"{PREFIX}{time.time_ns():020d}-{os.getpid()}-{self._n}{SUFFIX}"
        self._path = path
        f = open(path, "a", encoding="utf-8")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # mine while open: no other core replays it
        return f

    def recover(self) -> list[dict[str, Any]]:
        """Rows of the segments an earlier process left (not yet known to be in the database)."""
        rows: list[dict[str, Any]] = []
        for path in self._closed:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rows.append(_decode(line))
                    except (ValueError, KeyError):  # a torn last line of a killed write: never acknowledged
                        log.warning("ledger spool: skipped a torn line in %s", path.name)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(_encode(row) + "\n")
        self._dirty = True
        self._appended += 1
        self._in_active += 1

    async def sync_async(self) -> None:
        """`sync` with the fsync in a worker thread: the core's loop keeps deciding meanwhile.

        Returns once every row appended before the call is on disk (another caller's fsync
        counts only once it has finished)."""
        target = self._appended
        if self._synced >= target:
            return
        f = self._file
        f.flush()
        self._dirty = False
        try:
            await asyncio.to_thread(os.fsync, f.fileno())
        except (OSError, ValueError):
            if f is self._file:
                raise
            # rotated meanwhile: `rotate` fsync'd that segment before closing it
        self._synced = max(self._synced, target)

    def sync(self) -> None:
        """Make every appended row durable (before a settlement is acknowledged)."""
        if self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False
        self._synced = self._appended

    def rotate(self) -> list[Path]:
        """Close the current segment (if it has rows); every closed segment (what a flush now covers)."""
        if not self._in_active:
            return list(self._closed)
        self.sync()
        self._in_active = 0
        self._file.close()
        self._closed.append(self._path)
        self._file = self._open()
        return list(self._closed)

    def discard(self, paths: list[Path]) -> None:
        """The rows of `paths` are in the database: drop the segments."""
        for p in paths:
            p.unlink(missing_ok=True)
        self._closed = [p for p in self._closed if p not in paths]

    def quarantine(self, rows: list[tuple[dict[str, Any], str]]) -> None:
        """Keep rows the database refused, with why, for an operator to repair and load."""
        with open(self.dir / QUARANTINE, "a", encoding="utf-8") as f:
            for row, why in rows:
                f.write(json.dumps({"error": why, "row": json.loads(_encode(row))}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.sync()
        self._file.close()
        if self._path.stat().st_size == 0:
            self._path.unlink(missing_ok=True)
