"""servingctl's safe rollouts: shadow, canary, compare, promote, stop-rollout (docs/rollouts.md).

A rollout is a row in PostgreSQL (stack/database/rollouts.py) that every bridge reads within a second; each step is
also a change in the history. Promotion is gated on the comparison of the candidate's answers with the live ones
(stack.comparison), then sets the default box by box as ``set-default`` does (so ``rollback`` undoes it).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from ops.commands import Context, _require_ready, _version_or_404, each_box, set_default
from ops.errors import NotFound, Refused, UsageError
from ops.since import parse_since
from stack.comparison import Comparison, describe
from stack.database.rollouts import (
    CanaryLimits,
    Rollout,
    active_rollout,
    candidate_comparison,
    end_rollout,
    latest_rollout,
    start_rollout,
)

DEFAULT_WINDOW = timedelta(days=1)


def _live_version(ctx: Context, model: str, version: str) -> str:
    """The model's default on every box, after checking ``version`` is registered there with a READY worker."""
    defaults = set()
    for view in each_box(ctx, model):
        info = view.torchserve.describe(model)
        candidate = _version_or_404(info, version)
        if info.default == version:
            raise Refused(f"{model} {version} is the default already: a rollout needs another candidate version")
        _require_ready(info, candidate)
        defaults.add(info.default)
    if len(defaults) != 1:
        raise Refused(f"{model}'s boxes serve different defaults ({', '.join(sorted(defaults))}): "
                      "`servingctl set-default` one first")
    return defaults.pop()


def _start(ctx: Context, model: str, version: str, mode: str, fraction: float, thresholds: dict[str, float]) -> int:
    history = ctx.history()
    live = _live_version(ctx, model, version)
    rollout, replaced = history.transaction(start_rollout, model, version, live, mode, fraction, thresholds,
                                            ctx.settings.actor)
    if replaced is not None:
        ctx.record(ctx.change(model, replaced.version, "rollout-stop", replaced.mode, None,
                              detail={"rollout": replaced.id, "reason": replaced.ended_reason}))
    ctx.record(ctx.change(model, version, mode, live, version,
                          detail={"rollout": rollout.id, "percent": 100 * fraction, **thresholds}))
    return 0


def shadow(ctx: Context, model: str, version: str, fraction: float) -> int:
    """Send ``fraction`` of ``model``'s live requests to ``version`` as well (its answers recorded, never served)."""
    if not 0 < fraction <= 1:
        raise UsageError("--fraction must be in (0, 1]")
    _start(ctx, model, version, "shadow", fraction, {})
    ctx.say(f"{model} {version} shadows {100 * fraction:g} % of live requests (every bridge within about a second); "
            f"`servingctl compare {model} {version}` shows how it answers")
    return 0


def canary(ctx: Context, model: str, version: str, percent: float, limits: CanaryLimits) -> int:
    """Answer ``percent`` % of ``model``'s clients from ``version``; it aborts itself beyond ``limits``."""
    if not 0 < percent <= 100:
        raise UsageError("--percent must be in (0, 100]")
    _start(ctx, model, version, "canary", percent / 100, asdict(limits))
    ctx.say(f"{model} {version} answers {percent:g} % of clients (sticky per client id or API key); it is aborted "
            f"by the bridges when its 5xx rate exceeds the live one's by {100 * limits.max_error_rate_delta:g} points "
            f"or its p99 is over {limits.max_p99_ratio:g}× over {limits.window_s:g} s")
    return 0


def stop_rollout(ctx: Context, model: str) -> int:
    """End ``model``'s shadow or canary: every request is the live version's again."""
    ended = ctx.history().transaction(end_rollout, model, "stopped", f"stopped by {ctx.settings.actor}")
    if ended is None:
        raise NotFound(f"{model} has no active rollout (see `servingctl history {model}`)")
    ctx.record(ctx.change(model, ended.version, "rollout-stop", ended.mode, None, detail={"rollout": ended.id}))
    ctx.say(f"{model} {ended.version}: {ended.mode} stopped")
    return 0


def comparison(ctx: Context, model: str, version: str, since: str | None, source: str) -> tuple[Comparison, datetime]:
    """The candidate's comparison since ``since`` (default: the start of its latest rollout, else a day)."""
    history = ctx.history()
    now = datetime.now(UTC)
    if since is not None:
        start = parse_since(since, now)
    else:
        latest: Rollout | None = history.transaction(latest_rollout, model, version)
        start = latest.started_at if latest is not None and latest.started_at is not None else now - DEFAULT_WINDOW
    return history.transaction(candidate_comparison, model, version, start, now + timedelta(seconds=1), source), start


def compare_command(ctx: Context, model: str, version: str | None, since: str | None, source: str,
                    as_json: bool = False) -> int:
    """Print the comparison of ``version`` (default: the active rollout's) with the live answers."""
    if version is None:
        rollout = ctx.history().transaction(active_rollout, model)
        if rollout is None:
            raise UsageError(f"{model} has no active rollout: name the candidate version")
        version = rollout.version
    result, start = comparison(ctx, model, version, since, source)
    if as_json:
        ctx.say(json.dumps({"model": model, "version": version, "since": start.isoformat(), **result.as_dict()},
                           indent=2))
        return 0
    print_comparison(ctx, f"{model} {version} against the live answers since {start:%Y-%m-%d %H:%M:%S %Z} ({source}):",
                     result)
    return 0


def print_comparison(ctx: Context, heading: str, result: Comparison) -> None:
    """``heading``, the comparison's lines, and whether the promote gate would pass (compare, replay)."""
    ctx.say(heading)
    for line in describe(result):
        ctx.say(line)
    failures = ctx.settings.gate().failures(result)
    ctx.say("promote gate: " + ("passes" if not failures else "refuses — " + "; ".join(failures)))


def promote(ctx: Context, model: str, version: str, since: str | None, force: bool) -> int:
    """Make ``version`` the default once its comparison passes the gate (``force``: anyway, audited)."""
    history = ctx.history()
    result, start = comparison(ctx, model, version, since, "all")
    failures = ctx.settings.gate().failures(result)
    detail = {"samples": result.samples, "since": start.isoformat(), "failures": failures,
              **{name: e.value for name, e in result.metrics.items()}}
    if failures and not force:
        ctx.record(ctx.change(model, version, "promote-refused", None, version, detail=detail))
        for line in describe(result):
            ctx.say(line)
        raise Refused(f"{model} {version} is not promoted: " + "; ".join(failures)
                      + " (`--force` promotes anyway, recorded in the history)")
    if failures:
        ctx.record(ctx.change(model, version, "promote-forced", None, version, detail=detail))
        ctx.warn(f"promoting {model} {version} despite: " + "; ".join(failures))
    status = set_default(ctx, model, version)
    if status:
        return status
    active = history.transaction(active_rollout, model)
    ended = None
    if active is not None and active.version == version:
        ended = history.transaction(end_rollout, model, "promoted", f"promoted by {ctx.settings.actor}", active.id)
    ctx.record(ctx.change(model, version, "promote", None, version,
                          detail={**detail, "rollout": ended.id if ended is not None else None}))
    ctx.say(f"{model} {version} promoted over {result.samples} compared photos")
    return 0
