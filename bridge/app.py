"""The bridge's ASGI application: ``create_app()`` wires settings, the model servers (routed), the recorder and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import web
from bridge.api import feedback, health, jobs, predictions, results, v2
from bridge.api import rollouts as rollout_routes
from bridge.auth import require_api_key
from bridge.cache import ResultCache
from bridge.captures import CaptureStore
from bridge.db import Database
from bridge.errors import ERROR_RESPONSES, BridgeError, envelope, request_id_of
from bridge.fastpath import BridgeApp
from bridge.job_runner import JobRunner
from bridge.jobs import JobStore
from bridge.keys import KeyRing
from bridge.methods import allowed_methods
from bridge.metrics_sink import InfluxSink
from bridge.outbox import PointOutbox
from bridge.priority import PriorityGate
from bridge.recorder import Recorder
from bridge.rollouts import Rollouts
from bridge.routing import Router
from bridge.service import PredictionService
from bridge.settings import Settings
from bridge.sinks import build_recorder
from bridge.telemetry import Telemetry

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"


def create_app(
    settings: Settings | None = None,
    recorder: Recorder | None = None,
    torchserve_transport: httpx.AsyncBaseTransport | None = None,
    run_jobs: bool = True,
) -> FastAPI:
    """Build the application; nothing connects until it starts.

    ``recorder`` and ``torchserve_transport`` replace the real sinks and TorchServe (tests);
    ``run_jobs=False`` accepts jobs without running them here (another bridge process will).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = Router(settings.routing(), settings.torchserve_timeout_s, settings.max_connections,
                        transport=torchserve_transport)
        rec = recorder or build_recorder(settings)
        rec.start()
        # Two kept connections: a cache lookup or a job query does not start a PostgreSQL backend each time.
        database = Database(settings.pg_dsn, settings.pg_connect_timeout_s, call_timeout_s=settings.db_timeout_s,
                            keep_idle=2)
        cache = ResultCache(database, settings.cache_timeout_s) if settings.cache else None
        outbox = PointOutbox()
        keys = KeyRing(database, settings.api_keys, settings.keys_refresh_s, settings.rate_limit_bridges, outbox)
        if not await keys.refresh() and not settings.api_keys:
            logger.warning("API keys could not be read from PostgreSQL: until they are, the API asks for none")
        keys.start()
        rollouts = Rollouts(database, settings.rollout_refresh_s, settings.canary_check_s, outbox=outbox)
        captures = CaptureStore(settings.capture_dir, settings.capture_fraction, settings.capture_budget_bytes,
                                settings.capture_retention_s)
        predictions = PredictionService(
            client, rec, cache, rollouts, outbox, shadow_queue=settings.shadow_queue,
            shadow_concurrency=settings.shadow_concurrency, shadow_timeout_s=settings.shadow_timeout_s,
            captures=captures if captures.enabled else None, gate=PriorityGate(settings.priority_saturation),
        )
        captures.start()
        rollouts.start()
        predictions.shadow.start()
        job_store = JobStore(database)
        job_runner = JobRunner(
            database, job_store, predictions, settings.job_concurrency, settings.job_lease_s,
            backoff_base_s=settings.job_backoff_base_s, backoff_cap_s=settings.job_backoff_cap_s,
            idle_check_s=settings.job_idle_check_s, drain_s=settings.job_drain_s, listen_dsn=settings.pg_dsn,
        )
        app.state.keys = keys
        app.state.torchserve = client
        app.state.recorder = rec
        app.state.predictions = predictions
        app.state.rollouts = rollouts
        app.state.outbox = outbox
        app.state.captures = captures
        app.state.cache = cache
        app.state.database = database
        app.state.job_store = job_store
        app.state.job_runner = job_runner
        if run_jobs:
            job_runner.start()
        telemetry = None
        if settings.telemetry_interval_s > 0 and recorder is None:
            telemetry_sink = InfluxSink(
                settings.influx_host, settings.influx_port, settings.influx_database, settings.influx_timeout_s
            )
            telemetry = Telemetry(
                client, telemetry_sink.write_points,
                partial(bridge_stats, app), settings.telemetry_interval_s, outbox,
            )
            telemetry.start()
        app.state.telemetry = telemetry
        try:
            yield
        finally:
            if telemetry is not None:
                await telemetry.stop()
            await job_runner.stop()
            await keys.stop()
            await rollouts.stop()
            await predictions.shadow.stop()
            await asyncio.to_thread(captures.stop)
            rec.stop()
            database.close()
            await client.close()

    app = BridgeApp(
        title="Photo serving bridge",
        version="0.1.0",
        description=(
            "Mirrors TorchServe's inference API (`/predictions/{model}[/{version}]`) and records every "
            "inference in PostgreSQL and InfluxDB. Errors share one envelope: "
            "`{code, type, message, request_id}`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(v2.router)  # the Open Inference Protocol: its own error body, keys per route
    app.include_router(web.router)  # the web page at / (bridge/web/): no key, not in the OpenAPI document
    for api in (predictions, jobs, results, rollout_routes, feedback):
        app.include_router(api.router, dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
    _add_exception_handlers(app)
    return app


async def bridge_stats(app: FastAPI) -> dict[str, object]:
    """The bridge's own gauges and counters: recording backlog, cache, shadowing, captures, pending jobs."""
    stats: dict[str, object] = dict(app.state.recorder.health())
    stats.update(app.state.predictions.shadow.stats(), canaries_aborted=app.state.rollouts.aborted,
                 rollout_refresh_failures=app.state.rollouts.refresh_failures, points_outbox_dropped=app.state.outbox.dropped)
    stats.update(app.state.captures.stats())  # zeros while capture is off
    stats.update(app.state.keys.stats(), **app.state.predictions.gate.stats())
    cache = app.state.cache
    if cache is not None:
        stats.update(cache_hits=cache.hits, cache_misses=cache.misses)
    try:
        stats["jobs_pending"] = await app.state.database.call(app.state.job_store.pending)
    except BridgeError:
        pass  # the job queue being unavailable must not stop the other metrics
    return stats


def _error_response(request: Request, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    rid = request_id_of(request)
    return JSONResponse(
        envelope(status, kind, message, rid),
        status_code=status,
        headers={REQUEST_ID_HEADER: rid, **(headers or {})},
    )


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(BridgeError)
    async def bridge_error(request: Request, exc: BridgeError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s %s → %d: %s", request.method, request.url.path, exc.status, exc.message, exc_info=exc.__cause__)
        return _error_response(request, exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error_response(request, 400, "BadRequest", f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        headers = getattr(exc, "headers", None)
        message = str(exc.detail)
        if exc.status_code == 405:  # the documented methods of this path, not only its first route's
            starlette = [method.strip() for method in (headers or {}).get("Allow", "").split(",") if method.strip()]
            allowed = ", ".join(allowed_methods(request) or sorted(starlette))  # a path the document does not have
            headers, message = {**(headers or {}), "Allow": allowed}, f"{request.method} is not allowed here: {allowed}"
        return _error_response(request, exc.status_code, kind, message, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(request, 500, "InternalServerError", "internal error; see the bridge log")
