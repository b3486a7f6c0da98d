"""TorchServe's key file and when its keys are due for renewal.

TorchServe (0.12) writes ``key_file.json`` into its working directory with an inference key, a management
key (both expiring after ``token_expiration_min``) and a long-lived API key, rewrites it when a key is
renewed (``GET /token``) and deletes it on stop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stack.torchserve.errors import KeyFileUnreadable

RENEW_AT_MOST = timedelta(minutes=2)
RENEW_AT_LEAST = timedelta(seconds=5)
READ_ATTEMPTS = 5  # a file caught mid-rewrite: read again in a moment


@dataclass(frozen=True)
class Keys:
    """One reading of key_file.json."""

    inference: str
    management: str
    api: str
    inference_expires: datetime | None
    management_expires: datetime | None

    def of(self, api: str) -> str:
        """The key of ``api`` (``inference`` or ``management``)."""
        return self.management if api == "management" else self.inference

    def expires(self, api: str) -> datetime | None:
        """When the key of ``api`` expires (None: never, or not said)."""
        return self.management_expires if api == "management" else self.inference_expires


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


def renewal_due(issued: datetime, expires: datetime | None, now: datetime) -> bool:
    """Renew at a quarter of the key's lifetime before expiry (at most 2 min, at least 5 s before).

    Not on every request for short-lived keys: each renewal invalidates the key in-flight requests hold.
    """
    if expires is None:
        return False
    return expires - now < min(RENEW_AT_MOST, max(RENEW_AT_LEAST, (expires - issued) / 4))


class KeyRing:
    """The current keys: the key file re-read when it changes, the last good keys kept while it is rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.renewing: set[str] = set()  # kinds being renewed now (by one request; the others wait for it)
        self._keys: Keys | None = None
        self._mtime: float | None = None

    def current(self, reload: bool = False) -> Keys:
        """The keys, re-read when the file changed (or ``reload``); KeyFileUnreadable when there are none."""
        if reload:
            self._mtime = None
        for attempt in range(READ_ATTEMPTS):
            try:
                mtime = self.path.stat().st_mtime
            except OSError as exc:
                raise KeyFileUnreadable(
                    f"TorchServe's key file {self.path} does not exist; is TorchServe running?"
                ) from exc
            if self._keys is not None and mtime == self._mtime:
                return self._keys
            try:
                self._keys, self._mtime = read_keys(self.path), mtime
                return self._keys
            except KeyFileUnreadable:
                if attempt + 1 == READ_ATTEMPTS:
                    if self._keys is not None:
                        return self._keys  # keep the last good keys; a refusal makes us read again
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def due(self, api: str, keys: Keys) -> bool:
        """Whether the key of ``api`` should be renewed now."""
        if self._mtime is None:
            return False
        return renewal_due(datetime.fromtimestamp(self._mtime, UTC), keys.expires(api), datetime.now(UTC))
