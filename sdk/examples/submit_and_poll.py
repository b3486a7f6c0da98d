"""Submit a photo as a job and print each model's result: ``python submit_and_poll.py PHOTO [--models a,b]``.

Exits 0 when the job succeeded (a model may still have refused the photo: its line says so), 1 when the
job failed, did not finish within ``--timeout`` seconds, or the bridge refused the submission.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from serving_client import Client, JobFailed, JobTimeout, ModelResult, ServingError


def describe(result: ModelResult) -> str:
    """One model's result in a few words: its top label, its output, or its error."""
    if not result.ok:
        return f"error: {result.error or 'no message'}"
    if result.top_label is not None:
        score = result.output["predictions"][0].get("score")
        return f"{result.top_label}" + (f" ({score:.2f})" if isinstance(score, (int, float)) else "")
    return json.dumps(result.output, separators=(",", ":"))[:200]


def print_results(results: dict[str, ModelResult], order: Sequence[str] = ()) -> None:
    """One line per model (in ``order``, then the rest): name, status, version and the answer."""
    width = max((len(m) for m in results), default=5)
    for model in dict.fromkeys([*(m for m in order if m in results), *results]):
        result = results[model]
        print(f"  {model:<{width}}  {result.status}  {result.model_version or '-':<6}  {describe(result)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("photo", type=Path, help="the photo to submit")
    parser.add_argument("--models", default=None, help="comma-separated models (default: the bridge's job models)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the job (default 120)")
    parser.add_argument("--idempotency-key", default=None, help="makes a retried submission safe")
    parser.add_argument("--url", default=os.environ.get("SERVING_URL", "http://127.0.0.1:8000"),
                        help="the bridge (default: $SERVING_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("SERVING_API_KEY"), help="default: $SERVING_API_KEY")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Submit, long-poll, print; see the module docstring for the exit status."""
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    with Client(args.url, api_key=args.api_key) as client:
        try:
            started = time.monotonic()
            job = client.submit(args.photo, models=models, idempotency_key=args.idempotency_key)
            print(f"job {job.id} {'submitted' if job.created else 'already known'}: {job.state.status.value}, "
                  f"models {', '.join(job.state.models)}")
            results = job.result(timeout=args.timeout)
        except JobFailed as exc:
            print(f"job {exc.job.id} failed after {exc.job.attempts} attempt(s): {exc.job.error}")
            print_results(exc.job.results or {}, exc.job.models)
            return 1
        except JobTimeout as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (ServingError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"job {job.id} succeeded in {time.monotonic() - started:.1f} s")
    print_results(results, job.state.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
