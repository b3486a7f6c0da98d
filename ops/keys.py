"""``servingctl keys create|list|revoke``: the bridge's API keys, stored hashed in PostgreSQL (docs/api-keys.md)."""

from __future__ import annotations

import json

from ops.commands import Context
from ops.errors import NotFound, UsageError
from stack.database.api_keys import KeyRefused, create_key, list_keys, revoke_key


def create(ctx: Context, name: str, publishable: bool, scopes: list[str] | None, origins: list[str] | None,
           rate: float | None, burst: int | None, as_json: bool) -> int:
    """Create a key and print it — the only time it is shown."""
    kind = "publishable" if publishable else "secret"
    try:
        key, stored = ctx.history().transaction(create_key, name, kind, ctx.settings.actor, tuple(scopes or ()),
                                                tuple(origins or ()), rate, burst)
    except KeyRefused as exc:
        raise UsageError(str(exc)) from exc
    if as_json:
        ctx.say(json.dumps({"key": key, **stored.public()}, indent=2))
        return 0
    ctx.say(key)
    limit = f"{stored.rate_per_s:g}/s, bursts of {stored.burst}" if stored.rate_per_s else "no rate limit"
    where = f"; browsers on {', '.join(stored.origins)}" if stored.origins else ""
    ctx.warn(f"{kind} key {stored.id} ({stored.name}): scopes {', '.join(stored.scopes)}; {limit}{where}. "
             "Keep it now: only its hash is stored. Every bridge accepts it within a second")
    return 0


def show(ctx: Context, include_revoked: bool, as_json: bool) -> int:
    """List the keys (never their secrets)."""
    keys = ctx.history().transaction(list_keys, include_revoked)
    if as_json:
        ctx.say(json.dumps([k.public() for k in keys], indent=2))
        return 0
    ctx.say(f"{'ID':<10} {'KIND':<12} {'NAME':<24} {'SCOPES':<40} {'RATE':<12} {'CREATED':<17} STATE")
    for k in keys:
        rate = f"{k.rate_per_s:g}/s×{k.burst}" if k.rate_per_s else "-"
        created = k.created_at.strftime("%Y-%m-%d %H:%M") if k.created_at else ""
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M} by {k.revoked_by}" if k.revoked_at else "active"
        ctx.say(f"{k.id:<10} {k.kind:<12} {k.name[:24]:<24} {','.join(k.scopes)[:40]:<40} {rate:<12} {created:<17} "
                f"{state}")
        if k.origins:
            ctx.say(f"{'':<10} origins: {', '.join(k.origins)}")
    return 0


def revoke(ctx: Context, ident: str) -> int:
    """Revoke a key by its id (or the key itself): every bridge refuses it within a second."""
    revoked = ctx.history().transaction(revoke_key, ident, ctx.settings.actor)
    if revoked is None:
        raise NotFound(f"no active API key {ident!r}: `servingctl keys list` shows them")
    ctx.say(f"revoked {revoked.kind} key {revoked.id} ({revoked.name}); every bridge refuses it within a second")
    return 0
