"""``servingctl`` (also ``python -m ops``): the command line over TorchServe's management API."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast

import httpx

from ops import commands, keys, replay, rollouts
from ops.commands import Context
from ops.errors import OpsError, UsageError
from ops.golden import GOLDEN_HELP, GoldenLookup, PhotoLoader, parse_goldens, sample_photo, spec_golden
from ops.history import ChangeSink, History, InfluxChanges, PostgresHistory
from ops.settings import Settings
from ops.torchserve import TorchServe
from stack.configuration import env_names
from stack.database.api_keys import SCOPES
from stack.database.rollouts import PAIR_SOURCES, CanaryLimits

DESCRIPTION = """\
Operate the models TorchServe serves: list and describe them, deploy a new version from the model store or
a .mar built elsewhere (checked on its golden inputs through TorchServe before it may become the default),
switch or roll back the default version, retire versions, scale workers. Every change is recorded in
PostgreSQL (model_changes; `history` prints it, `rollback` reads it) and, best effort, in InfluxDB
(model_changes).
"""

EPILOG = """\
examples:
  servingctl models
  servingctl describe resnet18
  servingctl deploy resnet18_v2.0.mar --set-default
  servingctl deploy ~/their.mar --golden chelsea=tabby --golden ./cup.jpg=top:coffee_mug
  servingctl rollback resnet18
  servingctl scale resnet18 --min 1 --max 1
  servingctl retire resnet18 2.0
  servingctl history resnet18
  servingctl shadow classifier 1.1 --fraction 0.5 && servingctl compare classifier 1.1
  servingctl canary classifier 1.1 --percent 5
  servingctl promote classifier 1.1
  servingctl replay classifier 1.1 --since 1h
  servingctl keys create "web shop" --publishable --origin https://shop.example.com --rate 5 --burst 20
  servingctl keys list && servingctl keys revoke k3x9q2ab

exit status:
  0 success, 1 other failure (e.g. TorchServe answered an error), 2 bad arguments, 3 TorchServe not
  reachable, 4 unknown model or version, 5 key rejected, 6 PostgreSQL history unreachable (nothing
  changed), 7 refused (e.g. retiring the default), 8 golden check failed (the new version was removed)

Global options may also follow the command (servingctl scale resnet18 --min 1 --max 1 --actor alice).
"""


@dataclass
class Dependencies:
    """What tests (and other callers) may replace: golden cases, photos, history, InfluxDB, TorchServe's transport."""

    golden: GoldenLookup = spec_golden
    photo: PhotoLoader = sample_photo
    history: Callable[[Settings], History] | None = None
    sink: Callable[[Settings], ChangeSink] | None = None
    transport: httpx.BaseTransport | None = None


def _global_options(parser: argparse.ArgumentParser, environ: Mapping[str, str], hidden: bool) -> None:
    group = parser.add_argument_group("settings (flag, else environment variable, else default)")
    try:
        now = {} if hidden else dict(Settings.from_values({}, environ))
    except ValueError:  # a bad value in the environment: shown as it is here, reported when a command runs
        now = {}
    for name, field in Settings.model_fields.items():
        flag, envs = "--" + name.replace("_", "-"), env_names(Settings, name)
        kind = cast(Callable[[str], Any], field.annotation or str)  # str, int, float or Path: argparse checks it
        if hidden:
            # Repeated on every command so they may follow it; SUPPRESS keeps the main parser's value.
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            continue
        shown = now.get(name, next((environ[env] for env in envs if environ.get(env)), "?"))
        group.add_argument(flag, dest=name, type=kind, default=None, metavar=envs[0].split("_", 1)[1],
                           help=f"{field.description} [env {' else '.join(envs)}; now: {shown}]")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser (defaults shown in --help are resolved from ``environ``)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="servingctl", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, env, hidden=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, details: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=f"{summary}\n\n{details}",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="Global settings (servingctl --help) may follow the command too.")
        _global_options(p, env, hidden=True)
        return p

    p = command("models", "list every model and version: default, workers ready/total, batch settings",
                "One row per registered version (GET /models, GET /models/{m}/all). The default version, the one "
                "/predictions/{model} serves, is marked *.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("describe", "one model in detail: versions, default, workers (id, status, memory, pid), batching",
                "Shows batchSize, maxBatchDelay, minWorkers/maxWorkers and responseTimeout per version, and each "
                "worker's id, status, memory and pid (GET /models/{m}/all; the default from GET /models/{m}).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("deploy", "register an archive as a new version, gated on its golden inputs",
                "ARCHIVE is a file name in the model store (e.g. resnet18_v2.0.mar), or the path of a .mar built\n"
                "elsewhere with torch-model-archiver around any handler (e.g. TorchServe's stock image_classifier).\n"
                "A path is checked (MAR-INF/MANIFEST.json names the model and version) and copied into the model\n"
                "store under its own file name (MODEL_vVERSION.mar when that is not a plain name); a different file\n"
                "of that name there is never overwritten, and the copy is removed again if the deploy fails.\n"
                "The version is registered (POST /models?url=ARCHIVE&initial_workers=N&synchronous=true), then each\n"
                "golden photo is sent through TorchServe (POST /predictions/{m}/{v}): the cases of the model's\n"
                "archive spec, or those given with --golden (required for a model without a spec; for a model with\n"
                "one they replace the spec's cases). If any answer is wrong the version is unregistered again, the\n"
                "default is unchanged, and the exit status is 8.\n"
                "With --set-default a version that passed becomes the default (PUT /models/{m}/{v}/set-default).\n"
                "--batch-size / --max-batch-delay / --response-timeout override the archive's model-config.yaml\n"
                "for this version. Note: in TorchServe 0.12 the archive's minWorkers/maxWorkers override --workers;\n"
                "use `servingctl scale` afterwards.\n\n"
                "--golden PHOTO=EXPECTED (repeatable; split at the first '='):\n" + GOLDEN_HELP)
    p.add_argument("archive", metavar="ARCHIVE",
                   help="file name in the model store (e.g. resnet18_v2.0.mar) or path of a .mar built elsewhere")
    p.add_argument("--golden", action="append", metavar="PHOTO=EXPECTED",
                   help="a golden case (repeatable), replacing the spec's; required for a model without a spec")
    p.add_argument("--set-default", action="store_true",
                   help="make the version the default once its golden check passed")
    p.add_argument("--workers", type=int, default=1, help="initial_workers to ask for (default: 1)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="batchSize for this version (default: the archive's model-config.yaml)")
    p.add_argument("--max-batch-delay", type=int, metavar="MS",
                   help="maxBatchDelay in ms for this version (default: model-config.yaml)")
    p.add_argument("--response-timeout", type=int, metavar="S",
                   help="responseTimeout in s for this version (default: model-config.yaml)")

    p = command("set-default", "make a registered version the default (what /predictions/{model} serves)",
                "Refused when the version has no READY worker. Recorded in the history (rollback undoes it).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")

    p = command("rollback", "make the previous default version the default again (from the history)",
                "Undoes the newest recorded default change not undone yet: rollbacks stack (after 1.0→2.0→3.0, two\n"
                "rollbacks lead back to 1.0). Refused when the history has no earlier default, when the current\n"
                "default was set outside servingctl, or when the previous default has been retired.")
    p.add_argument("model", metavar="MODEL")

    p = command("retire", "unregister a version (DELETE /models/{m}/{v}); refused for the default version", "")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")

    p = command("scale", "set a version's min/max workers and wait until TorchServe has scaled it",
                "PUT /models/{m}[/{v}]?min_worker=N&max_worker=M&synchronous=true, then the resulting workers are\n"
                "shown. Applies to the default version unless --version is given. Keep workers x handler.threads\n"
                "within the machine's cores.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--min", dest="min_workers", type=int, required=True, metavar="N", help="minimum workers")
    p.add_argument("--max", dest="max_workers", type=int, required=True, metavar="M", help="maximum workers")
    p.add_argument("--version", help="the version to scale (default: the default version)")

    p = command("shadow", "send a fraction of a model's live requests to a candidate version as well",
                "Every bridge copies the sampled requests that name no version to VERSION off the request path (a\n"
                "bounded queue: a slow or failing candidate is dropped and counted, never waited for) and records its\n"
                "answers beside the live ones (results and reports never count them). VERSION must be registered with\n"
                "a READY worker and not be the default. Replaces the model's active rollout, if any.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--fraction", type=float, default=1.0, help="share of live requests copied, (0, 1] (default: 1)")

    limits = CanaryLimits()
    p = command("canary", "answer a percentage of a model's clients from a candidate version",
                "Clients are chosen by a hash of their X-Client-Id (else API key, else address): the same clients\n"
                "throughout, and still the same ones when the percentage grows (run canary again with a larger one).\n"
                "The bridges compare the candidate's served answers with the live version's over a window and abort\n"
                "the canary themselves (audited as canary-abort) when its 5xx rate or its p99 latency exceeds the\n"
                "live one's by the margins below.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--percent", type=float, required=True, help="share of clients answered by VERSION, (0, 100]")
    p.add_argument("--max-error-rate-delta", type=float, default=limits.max_error_rate_delta, metavar="D",
                   help=f"abort when its 5xx rate exceeds the live one's by more than D (default {limits.max_error_rate_delta})")
    p.add_argument("--max-p99-ratio", type=float, default=limits.max_p99_ratio, metavar="R",
                   help=f"abort when its p99 exceeds R × the live one's (default {limits.max_p99_ratio})")
    p.add_argument("--window", type=float, default=limits.window_s, metavar="S",
                   help=f"seconds of traffic judged (default {limits.window_s:g})")
    p.add_argument("--min-requests", type=int, default=limits.min_requests, metavar="N",
                   help=f"requests the candidate needs in the window before it is judged (default {limits.min_requests})")

    p = command("compare", "a candidate's answers against the live answers to the same photos",
                "Pairs recorded by shadowing and replay, compared per kind of answer (classifier: top-1 agreement,\n"
                "top-5 overlap; price: relative difference, live price inside the candidate's interval; similar:\n"
                "Jaccard of the k nearest; others: equal answers), server errors and latency, with 95 % intervals,\n"
                "and whether the promote gate would pass. The same figures as GET /v1/reports/compare.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION", nargs="?", help="default: the model's active rollout's version")
    p.add_argument("--since", help="30m, 1h, 2d or an ISO time (default: the start of the version's latest rollout)")
    p.add_argument("--source", choices=tuple(PAIR_SOURCES), default="all", help="which pairs (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("promote", "make a candidate the default once its comparison passes the promote gate",
                "Refused (exit 7, recorded as promote-refused) unless the comparison since the version's latest\n"
                "rollout (or --since) holds at least --promote-min-samples photos and meets the thresholds of its kind\n"
                "(--promote-thresholds), the 5xx margin and the p99 ratio. Then the default is set box by box as\n"
                "set-default does (rollback undoes it) and the version's rollout ends as promoted.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--since", help="30m, 1h, 2d or an ISO time (default: the start of the version's latest rollout)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded as promote-forced)")

    p = command("stop-rollout", "end a model's shadow or canary: the live version answers everything again", "")
    p.add_argument("model", metavar="MODEL")

    p = command("history", "every recorded change of a model: who, what, when, from → to (newest first)",
                "Read from PostgreSQL's model_changes table (created by stack/database/migrations/0002_model_changes.sql).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--limit", type=int, help="only the newest N changes")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("replay", "send captured photos to a candidate version and compare it with the live answers",
                "The bridges keep a sampled fraction of the photos sent (BRIDGE_CAPTURE_FRACTION; off by default) in\n"
                "the capture directory (--capture-dir). The served requests of MODEL since --since whose photo is\n"
                "there (newest first, up to --limit) are replayed: each distinct photo is sent once to VERSION\n"
                "(POST /predictions/MODEL/VERSION), and its answer recorded beside every live request that carried it,\n"
                "as shadowing records it (source replay). The comparison is printed as `compare` prints it, and the\n"
                "replay recorded in the history: a version judged before any live traffic reaches it. Refused (exit 7)\n"
                "when nothing was captured in the window or VERSION has no READY worker; exit 4 when it is not\n"
                "registered.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--since", default="1h", help="30m, 1h, 2d or an ISO time (default: 1h)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many live requests, newest first (default: 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("keys", "the bridge's API keys: create, list, revoke (stored hashed in PostgreSQL)",
                "Keys are required on the bridge's API once one exists (here or in BRIDGE_API_KEYS). A publishable key\n"
                "(pk_…) may only predict and submit jobs, and only from the browser origins it lists: safe in a web\n"
                "page. A secret key (sk_…) has every scope by default; keep it on servers. Every bridge reads the\n"
                "keys twice a second: a new key works, and a revoked one is refused, everywhere within a second.")
    keys_sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def keys_action(name: str, summary: str) -> argparse.ArgumentParser:
        action = keys_sub.add_parser(name, help=summary, description=summary,
                                     epilog="Global settings (servingctl --help) may follow the command too.")
        _global_options(action, env, hidden=True)
        return action

    p = keys_action("create", "create a key and print it (the only time it is shown: only its hash is kept)")
    p.add_argument("name", metavar="NAME", help="what the key is for, e.g. 'web shop' or 'nightly import'")
    p.add_argument("--publishable", action="store_true",
                   help="a publishable key (predict, jobs; for browsers) instead of a secret one")
    p.add_argument("--scope", dest="scopes", action="append", choices=tuple(SCOPES), metavar="SCOPE",
                   help=f"repeatable; default: all a kind may have. Scopes: {', '.join(SCOPES)}")
    p.add_argument("--origin", dest="origins", action="append", metavar="ORIGIN",
                   help="repeatable, publishable keys only: a web page's origin, e.g. https://shop.example.com")
    p.add_argument("--rate", type=float, metavar="PER_S", help="sustained requests per second (default: no limit)")
    p.add_argument("--burst", type=int, metavar="N", help="requests allowed at once above the rate (default: the rate)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = keys_action("list", "the keys: id, kind, name, scopes, rate, created, state (never a secret)")
    p.add_argument("--all", action="store_true", help="revoked keys too")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = keys_action("revoke", "revoke a key: every bridge refuses it within a second")
    p.add_argument("key", metavar="ID", help="the key's id (pk_<id>_…), or the whole key")
    return parser


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Dispatch one parsed command."""
    match args.command:
        case "models":
            return commands.models(ctx, args.json)
        case "describe":
            return commands.describe(ctx, args.model, args.json)
        case "deploy":
            overrides = {"batch_size": args.batch_size, "max_batch_delay": args.max_batch_delay,
                         "response_timeout": args.response_timeout}
            golden = parse_goldens(args.golden)
            return commands.deploy(ctx, args.archive, args.set_default, args.workers, overrides, golden)
        case "set-default":
            return commands.set_default(ctx, args.model, args.version)
        case "rollback":
            return commands.rollback(ctx, args.model)
        case "retire":
            return commands.retire(ctx, args.model, args.version)
        case "scale":
            return commands.scale(ctx, args.model, args.min_workers, args.max_workers, args.version)
        case "shadow":
            return rollouts.shadow(ctx, args.model, args.version, args.fraction)
        case "canary":
            limits = CanaryLimits(args.max_error_rate_delta, args.max_p99_ratio, args.window, args.min_requests)
            return rollouts.canary(ctx, args.model, args.version, args.percent, limits)
        case "compare":
            return rollouts.compare_command(ctx, args.model, args.version, args.since, args.source, args.json)
        case "promote":
            return rollouts.promote(ctx, args.model, args.version, args.since, args.force)
        case "stop-rollout":
            return rollouts.stop_rollout(ctx, args.model)
        case "history":
            return commands.history(ctx, args.model, args.limit, args.json)
        case "replay":
            return replay.replay(ctx, args.model, args.version, args.since, args.limit, args.json)
        case "keys":
            if args.keys_command == "create":
                return keys.create(ctx, args.name, args.publishable, args.scopes, args.origins, args.rate, args.burst,
                                   args.json)
            if args.keys_command == "list":
                return keys.show(ctx, args.all, args.json)
            return keys.revoke(ctx, args.key)
    raise UsageError(f"unknown command {args.command!r}")


def main(
    argv: Sequence[str] | None = None,
    deps: Dependencies | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Parse ``argv``, run the command, print a clear message and return the exit status on failure."""
    deps = deps or Dependencies()
    out, err = stdout or sys.stdout, stderr or sys.stderr
    env = os.environ if environ is None else environ
    parser = build_parser(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    try:
        settings = Settings.from_values(vars(args), env)
    except ValueError as exc:
        print(f"servingctl: error: bad setting in the environment: {exc}", file=err)
        return UsageError.exit_code
    open_history = deps.history or (lambda s: PostgresHistory(s.pg_dsn))
    sink = (deps.sink or (lambda s: InfluxChanges(s.influx_host, s.influx_port, s.influx_database, s.influx_timeout)))
    ctx = Context(
        settings=settings, torchserve=TorchServe(settings, deps.transport), open_history=lambda: open_history(settings),
        sink=sink(settings), golden=deps.golden, photo=deps.photo, out=out, err=err,
    )
    try:
        return run(args, ctx)
    except OpsError as exc:
        print(f"servingctl: error: {exc.message}", file=err, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("servingctl: interrupted", file=err)
        return 130
    finally:
        ctx.close()
