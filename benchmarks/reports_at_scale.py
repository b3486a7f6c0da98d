"""History and report queries at scale: seed ≥ 1M inference rows, time every query.

    .venv/bin/python -m benchmarks.reports_at_scale [--rows 1000000] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Seeds a separate database (``serving_reports_bench``; the ``serving`` database is never touched) with the
real schema (stack/database's migrations), 30 days of rows over 4 models and 2 versions each, then prints the
median time of each API query over 5 runs, with the plan's top node so index use can be seen.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg2

from bridge.reports import Bucket, ResultFilter, error_rates, label_counts, latency_percentiles, list_results
from stack.database import Database, migrate

BENCH_DB = "serving_reports_bench"

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


def ensure_database(admin_dsn: str) -> str:
    """Create the bench database when missing; return its DSN."""
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {BENCH_DB}")
    conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{BENCH_DB}"


def seed(dsn: str, rows: int, end: datetime) -> None:
    """Fill the table with ``rows`` rows unless it already has them."""
    db = Database(dsn)
    try:
        migrate(db)
    finally:
        db.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM inferences")
        started = time.monotonic()
        if cur.fetchone()[0] == rows:
            print(f"{rows:,} rows already seeded")
        else:
            cur.execute("TRUNCATE inferences")
            print(f"seeding {rows:,} rows ...", flush=True)
            cur.execute(SEED_SQL, {"rows": rows, "end": end})
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE inferences")
    conn.close()
    print(f"seeded in {time.monotonic() - started:.1f} s", flush=True)


def timed(dsn: str, fn, *args, runs: int = 5) -> tuple[float, int]:
    """Median ms over ``runs`` and the number of rows returned."""
    times, count = [], 0
    with psycopg2.connect(dsn) as conn:
        for _ in range(runs):
            started = time.perf_counter()
            result = fn(conn, *args)
            times.append((time.perf_counter() - started) * 1000)
            count = len(result[0]) if isinstance(result, tuple) else len(result)
    return statistics.median(times), count


def main() -> None:
    """Seed, then print one line per query."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    args = parser.parse_args()
    end = datetime(2026, 11, 1, tzinfo=UTC)
    dsn = ensure_database(args.dsn)
    seed(dsn, args.rows, end)

    day, month = (end - timedelta(days=1), end), (end - timedelta(days=30), end)
    _, cursor = list_results(psycopg2.connect(dsn), ResultFilter(model="classifier"), 100, None)
    cases = [
        ("results, newest 100 (no filter)", list_results, ResultFilter(), 100, None),
        ("results, model + status, 100", list_results, ResultFilter(model="classifier", status=200), 100, None),
        ("results, next page by cursor", list_results, ResultFilter(model="classifier"), 100, cursor),
        ("results, version + 1 day", list_results, ResultFilter(model="price", version="2.0", since=day[0], until=day[1]), 100, None),
        ("labels per hour, 1 day", label_counts, "classifier", *day, Bucket.HOUR),
        ("labels per day, 30 days", label_counts, "classifier", *month, Bucket.DAY),
        ("latency p50/95/99 per hour, 1 day", latency_percentiles, "classifier", *day, Bucket.HOUR),
        ("latency p50/95/99 per day, 30 days", latency_percentiles, "classifier", *month, Bucket.DAY),
        ("error rates per hour, 1 day", error_rates, "resnet18", *day, Bucket.HOUR),
        ("error rates per day, 30 days", error_rates, "resnet18", *month, Bucket.DAY),
    ]
    print(f"\n{'query':<40} {'median ms':>10} {'rows':>6}")
    for name, fn, *fn_args in cases:
        ms, count = timed(dsn, fn, *fn_args)
        print(f"{name:<40} {ms:>10.1f} {count:>6}")


if __name__ == "__main__":
    main()
