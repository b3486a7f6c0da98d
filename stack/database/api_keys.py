"""API keys in PostgreSQL (migration 0007, docs/api-keys.md): what a key may do and how often, stored hashed.

A key reads ``pk_<id>_<secret>`` (publishable: predictions and jobs only, safe in a browser, CORS origins of its own)
or ``sk_<id>_<secret>`` (secret: results, reports, feedback, administration too). ``<id>`` is public (lists,
metrics); ``<secret>`` holds 192 random bits. Only the SHA-256 of the whole key is stored — a slow password hash
buys nothing for a random secret of that size, and a bridge checks every request against it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg2.extensions

KINDS = ("publishable", "secret")
PREFIXES = {"publishable": "pk", "secret": "sk"}
# What each scope opens (bridge.auth maps every keyed route to one).
SCOPES = {
    "predict": "POST /predictions/*, the Open Inference Protocol (/v2)",
    "jobs": "POST /v1/jobs, GET /v1/jobs/{id}",
    "results": "GET /v1/results",
    "reports": "GET /v1/reports/* (labels, latency, errors, compare, accuracy)",
    "feedback": "POST /v1/feedback",
    "admin": "GET /v1/rollouts",
}
PUBLISHABLE_SCOPES = ("predict", "jobs")
KEY_PATTERN = re.compile(r"(pk|sk)_([a-z0-9]{8})_([A-Za-z0-9_-]{32})")
_COLUMNS = "id, name, kind, sha256, scopes, origins, rate_per_s, burst, created_at, created_by, revoked_at, revoked_by"


class KeyRefused(ValueError):
    """A key that cannot be created as asked (the message says why)."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret)."""

    id: str
    name: str
    kind: str
    sha256: str
    scopes: tuple[str, ...]
    origins: tuple[str, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None
    created_at: datetime | None = None
    created_by: str = ""
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def matches(self, offered: str) -> bool:
        """Whether ``offered`` is this key (constant time in its digest)."""
        return hmac.compare_digest(digest(offered), self.sha256)

    def public(self) -> dict[str, Any]:
        """What a list shows: everything but the digest."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "scopes": list(self.scopes),
                "origins": list(self.origins), "rate_per_s": self.rate_per_s, "burst": self.burst,
                "created_at": self.created_at.isoformat() if self.created_at else None, "created_by": self.created_by,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None, "revoked_by": self.revoked_by}


def digest(key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(offered: str) -> str | None:
    """The id of a well-formed key (``pk_<id>_…``), else None: a lookup needs no database round trip."""
    match = KEY_PATTERN.fullmatch(offered)
    return match[2] if match else None


def normalise_origin(origin: str) -> str:
    """``https://shop.example.com`` from what a user typed (scheme and host, the port only when given)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise KeyRefused(f"{origin!r} is not an origin: give scheme://host[:port], e.g. https://shop.example.com")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{host}"


def new_key(kind: str) -> tuple[str, str]:
    """A fresh key and its id."""
    ident = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    return f"{PREFIXES[kind]}_{ident}_{secrets.token_urlsafe(24)}", ident


def check_request(kind: str, scopes: tuple[str, ...] | None, origins: tuple[str, ...], rate_per_s: float | None,
                  burst: int | None) -> tuple[tuple[str, ...], tuple[str, ...], int | None]:
    """The scopes, origins and burst a new key gets; raises :class:`KeyRefused` for a combination that is refused."""
    if kind not in KINDS:
        raise KeyRefused(f"kind must be one of {', '.join(KINDS)}")
    allowed = PUBLISHABLE_SCOPES if kind == "publishable" else tuple(SCOPES)
    scopes = tuple(dict.fromkeys(scopes)) if scopes else allowed
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise KeyRefused(f"unknown scope {', '.join(unknown)}: choose from {', '.join(SCOPES)}")
    beyond = [s for s in scopes if s not in allowed]
    if beyond:
        raise KeyRefused(f"a publishable key is seen by every browser that loads the page: it may only have the scopes "
                        f"{', '.join(PUBLISHABLE_SCOPES)} (not {', '.join(beyond)}); create a secret key for those")
    if origins and kind != "publishable":
        raise KeyRefused("only publishable keys are used from browsers: a secret key has no origins")
    if rate_per_s is not None and rate_per_s <= 0:
        raise KeyRefused("the rate must be a positive number of requests per second")
    if burst is not None and (burst < 1 or rate_per_s is None):
        raise KeyRefused("a burst needs a rate, and is at least 1")
    if rate_per_s is not None and burst is None:
        burst = max(1, round(rate_per_s))  # a second's worth
    return scopes, tuple(dict.fromkeys(normalise_origin(o) for o in origins)), burst


def _key(row: tuple[Any, ...]) -> ApiKey:
    ident, name, kind, sha, scopes, origins, rate, burst, created_at, created_by, revoked_at, revoked_by = row
    return ApiKey(ident, name, kind, sha, tuple(scopes), tuple(origins), rate, burst, created_at, created_by,
                  revoked_at, revoked_by)


def create_key(conn: psycopg2.extensions.connection, name: str, kind: str, created_by: str,
               scopes: tuple[str, ...] | None = None, origins: tuple[str, ...] = (), rate_per_s: float | None = None,
               burst: int | None = None) -> tuple[str, ApiKey]:
    """Store a new key; returns the key itself (shown once, never stored) and its row."""
    scopes, origins, burst = check_request(kind, scopes, origins, rate_per_s, burst)
    if not name.strip():
        raise KeyRefused("give the key a name (what it is for)")
    key, ident = new_key(kind)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO api_keys (id, name, kind, sha256, scopes, origins, rate_per_s, burst, created_by) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (ident, name.strip(), kind, digest(key), list(scopes), list(origins), rate_per_s, burst, created_by),
        )
        row = cur.fetchone()
    assert row is not None
    return key, _key(row)


def list_keys(conn: psycopg2.extensions.connection, include_revoked: bool = False) -> list[ApiKey]:
    """Every key, newest first (revoked ones too when asked)."""
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at DESC, id")
        return [_key(row) for row in cur.fetchall()]


def active_keys(conn: psycopg2.extensions.connection) -> dict[str, ApiKey]:
    """id → key, for every key not revoked: what the bridges read twice a second."""
    return {key.id: key for key in list_keys(conn)}


def revoke_key(conn: psycopg2.extensions.connection, ident: str, revoked_by: str) -> ApiKey | None:
    """Revoke a key by its id (or the whole key); returns it, or None when no active key has that id."""
    ident = key_id(ident) or ident
    with conn.cursor() as cur:
        cur.execute(f"UPDATE api_keys SET revoked_at = now(), revoked_by = %s WHERE id = %s AND revoked_at IS NULL "
                    f"RETURNING {_COLUMNS}", (revoked_by, ident))
        row = cur.fetchone()
    return _key(row) if row else None
