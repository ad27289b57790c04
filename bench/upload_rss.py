"""Upload-path memory benchmark: the API's peak RSS while it receives and validates a large
upload (JSONL, CSV or Parquet), which it parses as a stream (core.datafiles).

Starts the real API server (uvicorn, one process) on a fresh PostgreSQL database, writes
a data file of the asked size (Korean text rows of ~1 KiB), uploads it with the same
client code a user would (httpx, multipart), and samples the server's RSS every 20 ms.

    python bench/upload_rss.py [--mib 512] [--format jsonl|csv|parquet]

Target: peak RSS < 300 MB for a 512 MiB upload. Prints figures; asserts nothing. Needs
PostgreSQL on 127.0.0.1:5432 (trust auth); the broker is not used.
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.services.auth import create_api_key, create_team  # noqa: E402
from tests.conftest import fresh_database, free_port, run_api  # noqa: E402

MiB = 1024 * 1024
DOC = "서울시는 오늘 새로운 자전거 도로를 개통했다고 밝혔다. " * 12  # ~1 KiB of UTF-8


def rows(n_bytes: int):
    i, written = 0, 0
    while written < n_bytes:
        row = {"document": f"{i} {DOC}", "summary": f"요약 {i}"}
        written += len(json.dumps(row, ensure_ascii=False).encode()) + 1
        i += 1
        yield row


def write_file(path: Path, fmt: str, n_bytes: int) -> int:
    """Returns the row count."""
    count = 0
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for count, row in enumerate(rows(n_bytes), 1):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["document", "summary"])
            w.writeheader()
            for count, row in enumerate(rows(n_bytes), 1):
                w.writerow(row)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        batch: list[dict] = []
        writer = None
        for count, row in enumerate(rows(n_bytes * 3), 1):  # compresses ~3x: aim at the same stored size
            batch.append(row)
            if len(batch) == 20_000:
                table = pa.Table.from_pylist(batch)
                writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
                writer.write_table(table)
                batch = []
        if batch:
            table = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
            writer.write_table(table)
        writer.close()
    return count


class PeakRss(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    args = ap.parse_args()
    with fresh_database("bench") as url, tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        data = Path(tmp) / f"data.{args.format}"
        n_rows = write_file(data, args.format, args.mib * MiB)
        size = data.stat().st_size
        engine = create_engine(url)
        with Session(engine) as s:
            team = create_team(s, "bench")
            _row, key = create_api_key(s, team.id)
            s.commit()
        engine.dispose()
        port = free_port()
        env = {
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_BROKER_URL": "redis://127.0.0.1:6379/15",
            "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
            "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TUNEFORGE_ARTIFACTS_URL": f"file://{tmp}/artifacts",
            "TUNEFORGE_MAX_UPLOAD_BYTES": str(max(size + MiB, 512 * MiB)),
        }
        with run_api(env, port) as base:
            server = next(p for p in psutil.Process().children(recursive=True) if str(port) in " ".join(p.cmdline()))
            httpx.get(f"{base}/healthz")
            idle = server.memory_info().rss
            sampler = PeakRss(server.pid)
            sampler.start()
            t0 = time.perf_counter()
            with data.open("rb") as f:
                r = httpx.post(
                    f"{base}/v1/files", headers={"Authorization": f"Bearer {key}"},
                    files={"file": (data.name, f)}, data={"purpose": "fine-tune"}, timeout=3600,
                )
            took = time.perf_counter() - t0
            time.sleep(0.1)
            sampler.stop.set()
            sampler.join()
        ok = r.status_code == 200 and r.json()["row_count"] == n_rows
        print(f"{args.format} upload of {size / MiB:.0f} MiB ({n_rows:,} rows): HTTP {r.status_code}, rows {'match' if ok else 'DIFFER: ' + r.text[:200]}")
        print(f"  upload + validate: {took:.1f}s ({size / MiB / took:.0f} MiB/s)")
        print(f"  API RSS idle {idle / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB (+{(sampler.peak - idle) / MiB:.0f} MiB); target: peak < 300 MB")


if __name__ == "__main__":
    main()
