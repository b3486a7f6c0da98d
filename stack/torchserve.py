"""The one way to TorchServe for every component (bridge, servingctl, the stack, tests, benchmarks).

TorchServe (0.12) writes ``key_file.json`` into its working directory with an inference key, a management
key (both expiring after ``token_expiration_min``) and a long-lived API key, and deletes it on stop.
This module owns parsing that file; the clients built on it live here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


class TorchServeError(Exception):
    """Base of what talking to TorchServe can raise."""


class TorchServeUnavailable(TorchServeError):
    """TorchServe is not reachable, not ready, or one of its workers failed: retry shortly."""


class KeyFileUnreadable(TorchServeUnavailable):
    """TorchServe's key file is missing or unreadable (TorchServe not started, or rewriting it)."""


@dataclass(frozen=True)
class Keys:
    """One reading of key_file.json."""

    inference: str
    management: str
    api: str
    inference_expires: datetime | None
    management_expires: datetime | None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    # Java prints nanoseconds; Python parses microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").replace(tzinfo=UTC)


def read_keys(path: Path) -> Keys:
    """Parse TorchServe's key file; raise KeyFileUnreadable when it is missing or unreadable."""
    try:
        raw = json.loads(path.read_text())
        return Keys(
            inference=raw["inference"]["key"],
            management=raw["management"]["key"],
            api=raw["API"]["key"],
            inference_expires=_parse_time(raw["inference"].get("expiration time")),
            management_expires=_parse_time(raw["management"].get("expiration time")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileUnreadable(f"TorchServe's key file {path} is not readable yet; is TorchServe running?") from exc
