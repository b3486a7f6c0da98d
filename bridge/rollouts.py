"""The bridge's side of rollouts (docs/rollouts.md): which requests a candidate version shadows or answers.

servingctl writes the model's active rollout to PostgreSQL (stack/database/rollouts.py); every bridge reads them
every ``refresh_s`` (off the request path: a request only looks at the last view). Then, for a request that names
no version:

- **shadow**: with probability ``fraction`` a copy goes to the candidate as well (bridge.shadow), recorded with
  ``shadow_of`` = the live request's id, compared per kind (stack.comparison) into InfluxDB's ``rollout_pair``;
- **canary**: a client (its ``X-Client-Id``, else its API key, else its address) whose hash falls under
  ``fraction`` is answered by the candidate — the same clients for as long as the canary runs, and still the same
  ones when its percentage grows. Every ``check_s`` the bridge compares the candidate's served answers with the live
  version's over the canary's window and ends the canary itself when they breach its limits
  (stack.database.rollouts.CanaryLimits), with an audited ``canary-abort`` in the change history.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
from typing import Any

from bridge.outbox import PointOutbox
from bridge.tasks import cancel_and_wait
from stack.comparison import metric_names, pair_metrics
from stack.database import Database
from stack.database.inferences import InferenceRecord
from stack.database.rollouts import CanaryLimits, Rollout, active_rollouts, audit, end_rollout, window_stats

logger = logging.getLogger(__name__)

PAIR_MEASUREMENT = "rollout_pair"


def client_share(model: str, client: str) -> float:
    """Where ``client`` falls in [0, 1) for ``model``: stable across bridges and restarts."""
    digest = hashlib.blake2b(f"{model}\x00{client}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Rollouts:
    """The active rollouts as this bridge last read them, and the canaries' watch."""

    def __init__(self, database: Database, refresh_s: float = 1.0, check_s: float = 5.0,
                 rng: random.Random | None = None, outbox: PointOutbox | None = None) -> None:
        self._database = database
        self._outbox = outbox
        self._refresh_s = refresh_s
        self._check_s = check_s
        self._rng = rng or random.Random()
        self._active: dict[str, Rollout] = {}
        self._task: asyncio.Task[None] | None = None
        self.actor = f"bridge@{socket.gethostname()}"
        self.refresh_failures = 0
        self.aborted = 0

    # --- the request path: dictionary lookups only ---------------------------------------------------------

    def canary_version(self, model: str, client: str) -> str | None:
        """The candidate version when ``client`` is among ``model``'s canary clients, else None."""
        rollout = self._active.get(model)
        if rollout is None or rollout.mode != "canary":
            return None
        return rollout.version if client_share(model, client) < rollout.fraction else None

    def shadow_version(self, model: str) -> str | None:
        """The candidate version when this request of ``model`` is sampled for shadowing, else None."""
        rollout = self._active.get(model)
        if rollout is None or rollout.mode != "shadow":
            return None
        return rollout.version if self._rng.random() < rollout.fraction else None

    def active(self) -> dict[str, Rollout]:
        """model → its active rollout, as last read."""
        return dict(self._active)

    # --- the background loop ------------------------------------------------------------------------------

    def start(self) -> None:
        """Read the rollouts now and then every ``refresh_s``; check canaries every ``check_s``."""
        self._task = asyncio.create_task(self._loop(), name="rollouts")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _loop(self) -> None:
        checked = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self.refresh()
            if loop.time() - checked >= self._check_s:
                checked = loop.time()
                await self.check_canaries()
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> None:
        """Read the active rollouts; on failure the last view stays (a rollout outlives a database outage)."""
        try:
            rollouts = await self._database.transaction(active_rollouts)
        except Exception as exc:  # noqa: BLE001 - a missed refresh is retried in refresh_s
            self.refresh_failures += 1
            logger.warning("reading the active rollouts failed (%d so far): %s", self.refresh_failures, exc)
            return
        self._active = {r.model: r for r in rollouts}

    async def check_canaries(self) -> list[Rollout]:
        """End every canary that breaches its limits; returns those this bridge ended."""
        ended = []
        for rollout in [r for r in self._active.values() if r.mode == "canary"]:
            try:
                stopped = await self._database.transaction(self._check, rollout)
            except Exception as exc:  # noqa: BLE001 - checked again in check_s
                logger.warning("checking the canary of %s %s failed: %s", rollout.model, rollout.version, exc)
                continue
            if stopped is not None:
                ended.append(stopped[0])
                self._active.pop(rollout.model, None)
                self.aborted += 1
                logger.warning("canary %s %s aborted: %s", rollout.model, rollout.version, stopped[0].ended_reason)
                if self._outbox is not None:  # the dashboards' annotations, as servingctl's changes are
                    self._outbox.add("model_changes", {"model": rollout.model, "version": rollout.version,
                                                       "action": "canary-abort"},
                                     {"from": rollout.version, "to": rollout.live_version or "", "actor": self.actor,
                                      "change_id": stopped[1]})
        return ended

    def _check(self, conn: Any, rollout: Rollout) -> tuple[Rollout, int] | None:
        limits = CanaryLimits.from_json(rollout.thresholds)
        stats = window_stats(conn, rollout.model, limits.window_s, rollout.started_at)
        reason = limits.breach(stats.get(rollout.live_version), stats.get(rollout.version))
        if reason is None:
            return None
        stopped = end_rollout(conn, rollout.model, "aborted", reason, rollout.id)
        if stopped is None:  # another bridge ended it first, and audited it
            return None
        change = audit(conn, self.actor, rollout.model, rollout.version, "canary-abort", rollout.version,
                       rollout.live_version, {"reason": reason, "rollout": rollout.id, "percent": 100 * rollout.fraction})
        return stopped, change


def pair_fields(kind: str, live: InferenceRecord, candidate: InferenceRecord) -> dict[str, float]:
    """The InfluxDB fields of one shadow pair: its metrics (both answered 200), errors and latencies."""
    fields = {
        "live_latency_ms": float(live.latency_ms), "candidate_latency_ms": float(candidate.latency_ms),
        "live_server_error": float(live.status >= 500), "candidate_server_error": float(candidate.status >= 500),
        "count": 1.0,
    }
    if live.status == 200 and candidate.status == 200:
        metrics = pair_metrics(kind, live.output, candidate.output)
        fields.update({name: float(metrics[name]) for name in metric_names(kind) if name in metrics})
    return fields
