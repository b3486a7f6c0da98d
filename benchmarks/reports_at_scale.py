"""History and report queries at scale: seed ≥ 1M inference rows, time every query.

    .venv/bin/python -m benchmarks.reports_at_scale [--rows 1000000] [--database serving_reports_bench]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--out benchmarks/results/reports-at-scale]

Seeds a database of its own (``--database``, default ``serving_reports_bench``; the ``serving`` database is
refused) with the real schema (stack/database's migrations), 30 days of rows over 4 models and 2 versions each,
then times each API query: the median over 5 runs and the number of rows it returned. The figures, the
machine (CPU, cores, load average, date) and the seeding time are written to ``OUT.json`` and ``OUT.md``
(``--out ''`` writes nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks.machine import machine, write_results
from bridge.reports import Bucket, ResultFilter, error_rates, label_counts, latency_percentiles, list_results
from stack.database import Database, migrate

BENCH_DB = "serving_reports_bench"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reports-at-scale"

SEED_SQL = """
INSERT INTO inferences (request_id, created_at, model, model_version, source, status, latency_ms, batch_size,
                        input_sha256, input_bytes, top_label, top_score, output, error)
SELECT md5(i::text || 'seed')::uuid,
       %(end)s::timestamptz - (i * (30 * 86400.0 / %(rows)s)) * interval '1 second',
       (ARRAY['classifier', 'resnet18', 'price', 'similar'])[1 + i %% 4],
       (ARRAY['1.0', '2.0'])[1 + (i / 7) %% 2],
       CASE WHEN i %% 10 = 0 THEN 'job' ELSE 'sync' END,
       CASE WHEN i %% 50 = 0 THEN 400 WHEN i %% 997 = 0 THEN 503 ELSE 200 END,
       20 + (i %% 83) * 1.7,
       1 + i %% 8,
       md5(i::text) || md5(i::text),
       50000 + i %% 100000,
       'label-' || (i %% 40),
       0.5,
       jsonb_build_object('predictions', jsonb_build_array(jsonb_build_object('label', 'label-' || (i %% 40)))),
       NULL
FROM generate_series(1, %(rows)s) AS i
"""


def ensure_database(admin_dsn: str, database: str) -> str:
    """Create the bench database when missing; return its DSN."""
    if database == "serving" or not database.replace("_", "").isalnum():
        raise SystemExit(f"refusing database {database!r}: the benchmark needs a database of its own")
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {database}")
    conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{database}"


def seed(dsn: str, rows: int, end: datetime) -> float | None:
    """Fill the table with ``rows`` rows unless it already has them; the seconds it took (None: already there)."""
    db = Database(dsn)
    try:
        migrate(db)
    finally:
        db.close()
    seeded: float | None = None
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM inferences")
        started = time.monotonic()
        (count,) = cur.fetchone() or (0,)
        if count == rows:
            print(f"{rows:,} rows already seeded")
        else:
            cur.execute("TRUNCATE inferences")
            print(f"seeding {rows:,} rows ...", flush=True)
            cur.execute(SEED_SQL, {"rows": rows, "end": end})
            seeded = time.monotonic() - started
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE inferences")
    conn.close()
    print(f"seeded and analysed in {time.monotonic() - started:.1f} s", flush=True)
    return seeded


def timed(dsn: str, fn: Callable[..., Any], *args: Any, runs: int = 5) -> tuple[float, int]:
    """Median ms over ``runs`` and the number of rows returned."""
    times, count = [], 0
    with psycopg2.connect(dsn) as conn:
        for _ in range(runs):
            started = time.perf_counter()
            result = fn(conn, *args)
            times.append((time.perf_counter() - started) * 1000)
            count = len(result[0]) if isinstance(result, tuple) else len(result)
    return statistics.median(times), count


def markdown(report: dict[str, Any]) -> str:
    """The results file's table in Markdown."""
    m = report["machine"]
    seeded = report["seed_s"]
    lines = [
        (
            f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores (load average {m['load_average_start']} at start,"
            f" {m['load_average_end']} at the end) by `{report['command']}`: {report['rows']:,} seeded rows"
            f" (30 days, 4 models × 2 versions; PostgreSQL {report['postgres']},"
            f" seeding {'skipped: already seeded' if seeded is None else f'took {seeded:.0f} s'}),"
            f" median of {report['runs']} runs per query."
        ),
        "",
        "| query | median ms | rows returned |",
        "|---|---:|---:|",
    ]
    lines += [f"| {q['query']} | {q['median_ms']:.1f} | {q['rows']} |" for q in report["queries"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Seed, time each query, print one line per query and write the results files."""
    arguments = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reports_at_scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default=BENCH_DB, help="the bench's own database (never `serving`)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results files OUT.json and OUT.md ('' = none)")
    args = parser.parse_args(arguments)
    load_start = os.getloadavg()[0]
    end = datetime(2026, 11, 1, tzinfo=UTC)
    dsn = ensure_database(args.dsn, args.database)
    seed_s = seed(dsn, args.rows, end)

    day, month = (end - timedelta(days=1), end), (end - timedelta(days=30), end)
    with psycopg2.connect(dsn) as conn:
        _, cursor = list_results(conn, ResultFilter(model="classifier"), 100, None)
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            (postgres,) = cur.fetchone() or ("unknown",)
    cases: list[tuple[Any, ...]] = [
        ("results, newest 100 (no filter)", list_results, ResultFilter(), 100, None),
        ("results, model + status, 100", list_results, ResultFilter(model="classifier", status=200), 100, None),
        ("results, next page by cursor", list_results, ResultFilter(model="classifier"), 100, cursor),
        (
            "results, version + 1 day",
            list_results,
            ResultFilter(model="price", version="2.0", since=day[0], until=day[1]),
            100,
            None,
        ),
        ("labels per hour, 1 day", label_counts, "classifier", *day, Bucket.HOUR),
        ("labels per day, 30 days", label_counts, "classifier", *month, Bucket.DAY),
        ("latency p50/95/99 per hour, 1 day", latency_percentiles, "classifier", *day, Bucket.HOUR),
        ("latency p50/95/99 per day, 30 days", latency_percentiles, "classifier", *month, Bucket.DAY),
        ("error rates per hour, 1 day", error_rates, "resnet18", *day, Bucket.HOUR),
        ("error rates per day, 30 days", error_rates, "resnet18", *month, Bucket.DAY),
    ]
    runs = 5
    queries = []
    print(f"\n{'query':<40} {'median ms':>10} {'rows':>6}")
    for name, fn, *fn_args in cases:
        ms, count = timed(dsn, fn, *fn_args, runs=runs)
        queries.append({"query": name, "median_ms": round(ms, 2), "rows": count})
        print(f"{name:<40} {ms:>10.1f} {count:>6}", flush=True)
    if args.out:
        report = {
            "command": " ".join(["python -m benchmarks.reports_at_scale", *arguments]).strip(),
            "machine": machine(load_start),
            "postgres": postgres,
            "database": args.database,
            "rows": args.rows,
            "seed_s": None if seed_s is None else round(seed_s, 1),
            "runs": runs,
            "queries": queries,
        }
        write_results(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
