"""``--since``: a duration back from now (``30m``, ``1h``, ``2d``, ``90s``) or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ops.errors import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The time ``text`` names, in UTC; a UsageError saying the accepted forms otherwise."""
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (30m, 1h, 2d) or an ISO time (2026-12-06T09:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
