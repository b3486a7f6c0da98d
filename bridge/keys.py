"""Who calls, what they may do, how often: the bridge's view of the API keys (docs/api-keys.md).

Keys come from two places: ``BRIDGE_API_KEYS`` (the settings file's keys: secret, every scope, no limit — as before
keys were stored) and PostgreSQL's ``api_keys`` (``servingctl keys``: publishable or secret, scoped, rate-limited,
revocable). Every ``refresh_s`` the bridge reads the active stored keys, off the request path, so a key created or
revoked on one machine counts on every bridge within that time; when PostgreSQL cannot be read the last view stays.
Keys are required as soon as either place holds one.

Each key's rate is a token bucket per bridge: ``rate_per_s / bridges`` with ``burst / bridges`` tokens (the
balancer spreads a client's requests over the bridges). Requests are counted per key and outcome into InfluxDB's
``api_key_requests`` (through the point outbox, once per refresh).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
import time
from dataclasses import dataclass, field

from bridge.errors import Forbidden, TooManyRequests, Unauthorized
from bridge.outbox import PointOutbox
from bridge.tasks import cancel_and_wait
from stack.database import Database
from stack.database.api_keys import SCOPES, ApiKey, active_keys, key_id

logger = logging.getLogger(__name__)

KEY_MEASUREMENT = "api_key_requests"
OUTCOMES = ("served", "unauthorized", "forbidden", "limited")


@dataclass(frozen=True)
class Caller:
    """The key a request was accepted with (``OPEN`` when the bridge has no keys)."""

    id: str
    kind: str  # publishable | secret | open
    scopes: frozenset[str]
    origins: tuple[str, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None


OPEN = Caller("-", "open", frozenset(SCOPES))


def _caller(key: ApiKey) -> Caller:
    return Caller(key.id, key.kind, frozenset(key.scopes), key.origins, key.rate_per_s, key.burst)


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``depth``; a request takes one. (Written here rather than taken from a library:
    the 429 needs the wait until the next token, which the maintained limiters do not tell.)"""

    rate: float
    depth: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.depth

    def take(self, now: float | None = None) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one is (nothing taken)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.depth, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyRing:
    """The keys as this bridge last read them; ``authenticate`` and ``admit`` are dictionary lookups."""

    def __init__(self, database: Database | None, settings_keys: tuple[str, ...] = (), refresh_s: float = 0.5,
                 bridges: int = 1, outbox: PointOutbox | None = None) -> None:
        self._database = database
        self._settings_keys = tuple(k.encode() for k in settings_keys)
        self._refresh_s = refresh_s
        self._bridges = max(1, bridges)
        self._outbox = outbox
        self._stored: dict[str, ApiKey] = {}
        self._origins: frozenset[str] = frozenset()
        self._buckets: dict[str, tuple[Caller, TokenBucket]] = {}
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        self.loaded = False
        self.refresh_failures = 0

    # --- the request path --------------------------------------------------------------------------------------

    @property
    def required(self) -> bool:
        """Whether requests must carry a key: some key exists in the settings or in PostgreSQL."""
        return bool(self._settings_keys or self._stored)

    def browser_origins(self) -> frozenset[str]:
        """Every origin some active publishable key allows (a CORS preflight carries no key)."""
        return self._origins

    def authenticate(self, offered: str | None) -> Caller:
        """The caller ``offered`` identifies; raises Unauthorized (401) when keys are required and it is not one."""
        if not self.required:
            return OPEN
        if offered is None:
            self.count("-", "-", "unauthorized")
            raise Unauthorized("missing API key: send it in the X-API-Key header (or Authorization: Bearer)")
        ident = key_id(offered)
        stored = self._stored.get(ident) if ident else None
        if stored is not None and stored.matches(offered):
            return _caller(stored)
        encoded = offered.encode()
        if any(hmac.compare_digest(encoded, key) for key in self._settings_keys):
            return Caller("settings", "secret", frozenset(SCOPES))
        self.count("-", "-", "unauthorized")
        raise Unauthorized("invalid or revoked API key")

    def authorise(self, caller: Caller, scope: str) -> None:
        """Raise Forbidden (403) unless ``caller``'s key has ``scope``."""
        if scope not in caller.scopes:
            self.count(caller.id, caller.kind, "forbidden")
            hint = " (a publishable key may only predict and submit jobs: use a secret key on a server)" \
                if caller.kind == "publishable" else ""
            raise Forbidden(f"this API key may not use {scope}: its scopes are "
                            f"{', '.join(sorted(caller.scopes)) or 'none'}{hint}")

    def admit(self, caller: Caller) -> None:
        """Take a token from ``caller``'s bucket; raise TooManyRequests (429, Retry-After) when it is empty."""
        if caller.rate_per_s is None:
            self.count(caller.id, caller.kind, "served")
            return
        held = self._buckets.get(caller.id)
        if held is None or held[0] != caller:  # new, or its limits changed
            depth = max(1.0, (caller.burst or 1) / self._bridges)
            held = (caller, TokenBucket(caller.rate_per_s / self._bridges, depth))
            self._buckets[caller.id] = held
        wait_s = held[1].take()
        if wait_s > 0:
            self.count(caller.id, caller.kind, "limited")
            raise TooManyRequests(
                f"API key {caller.id} is over its rate ({caller.rate_per_s:g} requests/s, bursts of {caller.burst}); "
                f"retry after {math.ceil(wait_s)} s", retry_after_s=math.ceil(wait_s))
        self.count(caller.id, caller.kind, "served")

    def count(self, ident: str, kind: str, outcome: str) -> None:
        """Count one request's outcome for ``api_key_requests``."""
        self._counts[(ident, kind, outcome)] += 1

    def stats(self) -> dict[str, int]:
        """Totals for the bridge's own metrics."""
        return {"api_keys_active": len(self._stored), "api_key_refresh_failures": self.refresh_failures}

    # --- the background loop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Read the keys every ``refresh_s`` (the first read is :meth:`refresh`, awaited at start-up)."""
        self._task = asyncio.create_task(self._loop(), name="api-keys")

    async def stop(self) -> None:
        """Stop the loop (counts of the last half second are not written: telemetry has stopped by then)."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()
            self.flush_counts()

    async def refresh(self) -> bool:
        """Read the active keys now; on failure keep the last view (counted). Returns whether it was read."""
        if self._database is None:
            return False
        try:
            keys = await self._database.transaction(active_keys)
        except Exception as exc:  # noqa: BLE001 - an outage: the keys read last stay in force
            self.refresh_failures += 1
            if self.refresh_failures == 1 or self.refresh_failures % 100 == 0:
                logger.warning("API keys not refreshed (%s); the last %d read stay in force", exc, len(self._stored))
            return False
        self._stored = keys
        self._origins = frozenset(o for k in keys.values() if k.kind == "publishable" for o in k.origins)
        for gone in set(self._buckets) - set(keys):
            del self._buckets[gone]
        self.loaded = True
        return True

    def flush_counts(self) -> None:
        """Move the counts into the outbox as one point per key and outcome."""
        if self._outbox is None or not self._counts:
            return
        counts, self._counts = self._counts, collections.Counter()
        for (ident, kind, outcome), n in counts.items():
            self._outbox.add(KEY_MEASUREMENT, {"key": ident, "kind": kind, "outcome": outcome}, {"requests": n})
