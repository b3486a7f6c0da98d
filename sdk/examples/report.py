"""Print a report as a table: ``python report.py --model classifier [--kind labels|latency|errors]``.

Rows are per time bucket (``--bucket minute|hour|day``) over ``--since``..``--until`` (default: the last 24 h).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from serving_client import REPORT_KINDS, Client, Report, ServingError


def cell(value: Any) -> str:
    """A value as table text: timestamps without seconds, floats with few decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and "T" in value:
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return value
    return str(value)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text lines: a header, a rule, one line per row (numbers right-aligned)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    texts = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(t[i]) for t in texts)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return [line(columns), line(["-" * w for w in widths]), *(line(t) for t in texts)]


def render(report: Report) -> str:
    """The report's title and its table."""
    title = (f"{report.kind} report for {report.model}, by {report.bucket}: "
             f"{report.since:%Y-%m-%d %H:%M} → {report.until:%Y-%m-%d %H:%M} UTC")
    body = table(report.rows) if report.rows else ["(no rows in this range)"]
    return "\n".join([title, *body])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True, help="model name, e.g. classifier")
    parser.add_argument("--kind", choices=REPORT_KINDS, default="labels", help="default: labels")
    parser.add_argument("--bucket", choices=("minute", "hour", "day"), default="hour", help="default: hour")
    parser.add_argument("--since", default=None, help="start, ISO 8601 (default: 24 h before --until)")
    parser.add_argument("--until", default=None, help="end, ISO 8601 (default: now)")
    parser.add_argument("--url", default=os.environ.get("SERVING_URL", "http://127.0.0.1:8000"),
                        help="the bridge (default: $SERVING_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("SERVING_API_KEY"), help="default: $SERVING_API_KEY")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch and print the report; 1 when the bridge refuses or cannot be reached."""
    args = parse_args(argv)
    with Client(args.url, api_key=args.api_key) as client:
        try:
            report = client.report(args.kind, args.model, since=args.since, until=args.until, bucket=args.bucket)
        except ServingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
