"""What each servingctl command does, given a :class:`Context` (TorchServe client, history, output).

A model scaled out to several boxes (stack.routing replicas) is changed box by box: each command runs on one
box, then the next, each change recorded with its box; a deploy that fails its golden check on one box is
undone on the boxes already done, so the model never stays half rolled out.
"""

from __future__ import annotations

import filecmp
import functools
import json
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from archive_scripts.golden import GoldenCase
from ops.errors import GoldenCheckFailed, NotFound, OpsError, Refused, TorchServeDown, UsageError
from ops.golden import GoldenLookup, PhotoLoader, check_through_torchserve
from ops.history import Change, ChangeSink, History, rollback_target
from ops.settings import Settings
from ops.torchserve import ModelInfo, TorchServe, VersionInfo
from stack import models as catalogue


@dataclass
class Context:
    """Everything a command needs; the history is opened (and migrated) on first use."""

    settings: Settings
    torchserve: TorchServe
    open_history: Callable[[], History]
    sink: ChangeSink
    golden: GoldenLookup
    photo: PhotoLoader
    out: TextIO
    err: TextIO
    box: str | None = None  # the box this context's calls go to, when the model has several
    _history: History | None = field(default=None, repr=False)

    def history(self) -> History:
        """The change history (PostgreSQL), reached before anything is changed."""
        if self._history is None:
            self._history = self.open_history()
        return self._history

    def close(self) -> None:
        """Release the history's and TorchServe's connections."""
        self.torchserve.close()
        if self._history is not None:
            self._history.close()

    def record(self, change: Change) -> Change:
        """Record a change in the history, then (best effort) in InfluxDB."""
        stored = self.history().record(change)
        warning = self.sink.write(stored)
        if warning:
            self.warn(warning)
        return stored

    def change(self, model: str, version: str | None, action: str, before: str | None, after: str | None,
               **kwargs: Any) -> Change:
        """A change by this invocation's actor."""
        if self.box is not None:
            kwargs["detail"] = {**kwargs.get("detail", {}), "box": self.box}
        return Change(model=model, version=version, action=action, from_value=before, to_value=after,
                      actor=self.settings.actor, **kwargs)

    def say(self, text: str = "") -> None:
        """A line on standard output."""
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        """A warning on standard error (the command still succeeds)."""
        print(f"servingctl: warning: {text}", file=self.err, flush=True)


def each_box(ctx: Context, model: str) -> list[Context]:
    """One context per box serving ``model``, each pinned to its box; just ``ctx`` when one box serves it."""
    replicas = ctx.torchserve.replicas(model)
    if len(replicas) == 1:
        return [ctx]
    ctx.history()  # opened once, before anything changes, and shared by every box's context
    return [replace(ctx, torchserve=ctx.torchserve.on(box), box=box.name) for box in replicas]


def box_by_box(command: Callable[..., int]) -> Callable[..., int]:
    """Run ``command(ctx, model, ...)`` on each of the model's boxes in turn (stops at the first that fails)."""

    @functools.wraps(command)
    def run(ctx: Context, model: str, *args: Any, **kwargs: Any) -> int:
        views = each_box(ctx, model)
        for view in views:
            if len(views) > 1:
                ctx.say(f"[box {view.box}]")
            status = command(view, model, *args, **kwargs)
            if status:
                return status
        return 0

    return run


# --- reading ---------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _info_json(info: ModelInfo) -> dict[str, Any]:
    return {"model": info.name, "default": info.default, "versions": [asdict(v) for v in info.versions]}


def models(ctx: Context, as_json: bool = False) -> int:
    """One row per registered version of every model (per box when there are several): its kind of answer (the
    catalogue's; ``json`` for a model built elsewhere), default, workers, batch."""
    boxes = ctx.torchserve.boxes()
    infos: list[tuple[str, ModelInfo]] = []
    for box in boxes:
        view = ctx.torchserve.on(box)
        try:
            infos += [(box.name, view.describe(name)) for name in view.list_models()]
        except TorchServeDown as exc:
            if len(boxes) == 1:
                raise
            # One box down (or a benchmark-only box not started) must not hide the others.
            ctx.warn(f"box {box.name}: {exc.message}")
    if as_json:
        ctx.say(json.dumps([{**_info_json(i), "kind": catalogue.describe(i.name).kind, "box": name}
                            for name, i in infos], indent=2))
        return 0
    several = len(boxes) > 1
    rows: list[tuple[str, ...]] = [(("BOX",) if several else ()) + (
        "MODEL", "KIND", "VERSION", "DEFAULT", "WORKERS ready/total", "MIN-MAX", "BATCH", "DELAY ms", "TIMEOUT s")]
    for name, info in infos:
        for v in info.versions:
            rows.append(((name,) if several else ()) + (
                info.name, catalogue.describe(info.name).kind, v.version, "*" if v.version == info.default else "", f"{v.ready}/{len(v.workers)}",
                f"{v.min_workers}-{v.max_workers}", str(v.batch_size), str(v.max_batch_delay_ms),
                str(v.response_timeout_s)))
    _table(ctx, rows)
    if not infos:
        ctx.say("(no models registered)")
    return 0


def describe(ctx: Context, model: str, as_json: bool = False) -> int:
    """Every version of one model with its workers (id, status, memory, pid) and batch settings, box by box."""
    views = each_box(ctx, model)
    if as_json:
        infos = [{**_info_json(v.torchserve.describe(model)), **({"box": v.box} if v.box else {})} for v in views]
        ctx.say(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
        return 0
    for view in views:
        if view.box is not None:
            ctx.say(f"[box {view.box}]")
        _describe_text(view, model)
    return 0


def _describe_text(ctx: Context, model: str) -> None:
    info = ctx.torchserve.describe(model)
    ctx.say(f"{info.name}: default version {info.default}; versions {', '.join(v.version for v in info.versions)}")
    for v in info.versions:
        ctx.say(f"\n  version {v.version}{' (default)' if v.version == info.default else ''}  [{v.url}]")
        ctx.say(f"    batchSize {v.batch_size}   maxBatchDelay {v.max_batch_delay_ms} ms   "
                f"workers min {v.min_workers} / max {v.max_workers}   responseTimeout {v.response_timeout_s} s")
        if not v.workers:
            ctx.say("    no workers")
        for w in v.workers:
            ctx.say(f"    worker {w.id:<6} {w.status:<10} {_mib(w.memory_bytes):>9}   pid {w.pid if w.pid else '-'}")


def history(ctx: Context, model: str, limit: int | None = None, as_json: bool = False) -> int:
    """The recorded changes of one model, newest first."""
    changes = ctx.history().changes(model, limit)
    if as_json:
        ctx.say(json.dumps([{**asdict(c), "changed_at": c.changed_at.isoformat() if c.changed_at else None}
                            for c in changes], indent=2))
        return 0
    if not changes:
        ctx.say(f"no changes of {model} recorded")
        return 0
    rows: list[tuple[str, ...]] = [("ID", "WHEN", "WHO", "ACTION", "VERSION", "FROM → TO")]
    for c in changes:
        when = c.changed_at.strftime("%Y-%m-%d %H:%M:%S %z") if c.changed_at else "?"
        what = f"{c.from_value or '-'} → {c.to_value or '-'}"
        if c.reverts:
            what += f"  (undoes #{c.reverts})"
        rows.append((str(c.id), when, c.actor, c.action, c.version or "-", what))
    _table(ctx, rows)
    return 0


def _table(ctx: Context, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        ctx.say("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# --- changing ------------------------------------------------------------------------------------------


MAR_SUFFIX = ".mar"
# A model or version name TorchServe's archiver (^[A-Za-z0-9][A-Za-z0-9_\-.]*$) and the bridge's paths both take.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,123}\.mar")  # a file name TorchServe's url= takes as is


def _bare(archive: str) -> bool:
    return "/" not in archive and "\\" not in archive


def _same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes."""
    return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def _in_store(store: Path, path: Path) -> bool:
    return path.resolve().parent == store.resolve()


def archive_in_store(store: Path, archive: str) -> Path:
    """The archive file ``archive`` (a bare file name) inside the model store."""
    if not archive or not _bare(archive) or ".." in archive or archive.startswith("."):
        raise UsageError(
            f"ARCHIVE must be a file name in the model store ({store}), e.g. resnet18_v2.0.mar; got {archive!r} "
            "(paths, '/' and '..' are refused: TorchServe only registers archives from its model store)"
        )
    if not archive.endswith(MAR_SUFFIX):
        raise UsageError(f"ARCHIVE must be a .mar file in the model store, got {archive!r}")
    path = store / archive
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in store.glob("*.mar"))) or "none"
        raise UsageError(f"no archive {archive} in the model store {store}; archives there: {present} "
                         "(build one with `python -m archive_scripts MODEL --version V`)")
    return path


def locate_archive(store: Path, archive: str) -> Path:
    """The ``.mar`` file to deploy: a bare name in the model store, else a path (relative to the current directory).

    A bare name is the model store's file when there is one; when ``./NAME`` exists too and differs, the
    choice is left to the operator.
    """
    if not archive.endswith(MAR_SUFFIX):
        raise UsageError(f"ARCHIVE must be a .mar file (a torch-model-archiver archive), got {archive!r}")
    here = Path(archive).expanduser()
    if _bare(archive) and (store / archive).is_file():
        stored = archive_in_store(store, archive)
        if here.is_file() and here.resolve() != stored.resolve() and not _same_file(here, stored):
            raise UsageError(
                f"{archive} is both in the model store ({store}) and in the current directory, and they differ: "
                f"deploy the model store's as {stored}, or give yours another file name (e.g. its model_vVERSION.mar)"
            )
        return stored
    if not here.is_file():
        present = ", ".join(sorted(p.name for p in store.glob("*.mar"))) or "none"
        raise UsageError(f"no archive {archive}: it is not a file, nor one of the model store's ({store}): "
                         f"{present} (build one with `python -m archive_scripts MODEL --version V`, or give the path "
                         "of a .mar built with torch-model-archiver)")
    return here


def archive_identity(path: Path) -> tuple[str, str]:
    """Model name and version, from the archive's own MAR-INF/MANIFEST.json."""
    try:
        with zipfile.ZipFile(path) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        return str(manifest["model"]["modelName"]), str(manifest["model"]["modelVersion"])
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UsageError(f"{path} is not a model archive: no readable MAR-INF/MANIFEST.json with model.modelName and "
                         f"model.modelVersion ({reason}); build it with torch-model-archiver") from exc


def check_identity(path: Path, model: str, version: str) -> None:
    """Refuse a model name or version TorchServe or the bridge would not take (UsageError)."""
    for what, value in (("model name", model), ("version", version)):
        if not NAME.fullmatch(value) or ".." in value:
            raise UsageError(
                f"{path}'s {what} {value!r} (MAR-INF/MANIFEST.json) is not one TorchServe and the bridge take: "
                "1-128 letters, digits, '_', '-' or '.', starting with a letter or digit, no '..'; rebuild it "
                "with torch-model-archiver --model-name NAME --version VERSION"
            )


def store_name(path: Path, model: str, version: str) -> str:
    """The bare name TorchServe registers ``path`` under: its own when plain, else ``MODEL_vVERSION.mar``."""
    name = path.name
    return name if STORE_NAME.fullmatch(name) and ".." not in name else f"{model}_v{version}{MAR_SUFFIX}"


def _copy_new(source: Path, dest: Path) -> bool:
    """Copy ``source`` to ``dest`` unless an identical file is there (False); Refused when a different one is."""
    try:
        with source.open("rb") as src, dest.open("xb") as out:  # "x": never overwrites
            try:
                shutil.copyfileobj(src, out)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        return True
    except FileExistsError:
        if _same_file(source, dest):
            return False
        raise Refused(
            f"the model store already has a different {dest.name} ({dest}); not overwriting it: rename your archive "
            f"(e.g. MODEL_vVERSION.mar), or retire the version it holds and remove it first"
        ) from None
    except OSError as exc:
        raise OpsError(f"cannot copy {source} into the model store as {dest}: {exc.strerror or exc}") from exc


@contextmanager
def staged(ctx: Context, path: Path, model: str, version: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The archive's bare name in the model store (copied there when it is elsewhere) and what to record of it.

    A copy this deploy made is removed again when the deploy fails: TorchServe unpacked it at registration,
    so nothing registered needs it, and leaving it would block a corrected archive of the same name.
    """
    store = ctx.settings.model_store
    if _in_store(store, path):
        yield path.resolve().name, {}
        return
    name = store_name(path, model, version)
    dest = store / name
    copied = _copy_new(path, dest)
    ctx.say(f"copied {path} → {dest}" if copied else f"{dest} is already there (the same bytes as {path})")
    try:
        yield name, {"copied_from": str(path.resolve())}
    except BaseException:
        if copied:
            dest.unlink(missing_ok=True)
            ctx.say(f"  removed {dest} again (copied for this deploy)")
        raise


def _describe_or_none(ctx: Context, model: str) -> ModelInfo | None:
    try:
        return ctx.torchserve.describe(model)
    except NotFound:
        return None


def _version_or_404(info: ModelInfo, version: str) -> VersionInfo:
    found = info.version(version)
    if found is None:
        known = ", ".join(v.version for v in info.versions)
        raise NotFound(f"model {info.name!r} has no version {version!r}; registered versions: {known}")
    return found


def _require_ready(info: ModelInfo, version: VersionInfo) -> None:
    if version.ready == 0:
        raise Refused(
            f"{info.name} {version.version} has no READY worker ({version.workers_text()}); it cannot serve as the "
            f"default: `servingctl scale {info.name} --version {version.version} --min 1 --max 1` first"
        )


def deploy(ctx: Context, archive: str, set_default: bool = False, workers: int = 1,
           overrides: dict[str, int] | None = None, golden: tuple[GoldenCase, ...] = ()) -> int:
    """Register an archive, check its golden inputs through TorchServe, maybe make it the default.

    ``archive`` is a file name in the model store, or the path of a ``.mar`` built elsewhere (copied into the
    store first, and removed again if the deploy fails). ``golden`` (``--golden``) replaces the spec's cases.
    A version that fails its golden check is unregistered again and the default is left as it was. On a model
    with several boxes this happens box by box; a failure on one box undoes the boxes already done.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if any(v < 0 for v in overrides.values()) or workers < 0:
        raise UsageError(f"--workers and the batch settings must not be negative: {overrides}")
    path = locate_archive(ctx.settings.model_store, archive)
    model, version = archive_identity(path)
    check_identity(path, model, version)
    cases = golden or ctx.golden(model, version)  # before anything changes: no golden cases, no deploy
    views = each_box(ctx, model)
    ctx.history()  # reachable before the model store or TorchServe is touched
    with staged(ctx, path, model, version) as (name, origin):
        detail = {**origin, **({"golden": "command line"} if golden else {})}
        done: list[tuple[Context, str | None]] = []
        for view in views:
            if view.box is not None:
                ctx.say(f"[box {view.box}]")
            try:
                done.append((view, _deploy_on_box(view, name, model, version, cases, set_default, workers, overrides,
                                                  detail)))
            except BaseException:
                for earlier, default_before in reversed(done):
                    _undo_deploy(earlier, model, version, default_before)
                raise
    return 0


def _undo_deploy(ctx: Context, model: str, version: str, default_before: str | None) -> None:
    """Put a box back as it was before this deploy (another box failed it)."""
    ctx.say(f"[box {ctx.box}] undoing: {model} {version} failed on another box")
    try:
        if default_before is not None and ctx.torchserve.describe(model).default != default_before:
            ctx.torchserve.set_default(model, default_before)
            ctx.record(ctx.change(model, default_before, "rollback", version, default_before,
                                  detail={"via": "deploy failed on another box"}))
            ctx.say(f"  {model} default: {version} → {default_before}")
    except OpsError as exc:
        ctx.warn(f"could not restore {model}'s default {default_before} on {ctx.box}: {exc.message}")
    _unregister_quietly(ctx, model, version)


def _deploy_on_box(ctx: Context, archive: str, model: str, version: str, cases: tuple[GoldenCase, ...],
                   set_default: bool, workers: int, overrides: dict[str, int],
                   detail: dict[str, str] | None = None) -> str | None:
    """Deploy on one box; returns the default version before (None: the model was not there)."""
    started = time.monotonic()
    ctx.history()
    before = _describe_or_none(ctx, model)
    if before is not None and before.version(version) is not None:
        raise Refused(f"{model} {version} is already registered (default {before.default}); use `servingctl "
                      f"set-default {model} {version}`, or retire it first to deploy it again")
    shown = "".join(f", {k}={v}" for k, v in overrides.items())
    ctx.say(f"registering {archive} ({model} {version}{shown}) ...")
    status = ctx.torchserve.register(model, archive, workers, overrides)
    try:
        registered = _version_or_404(ctx.torchserve.describe(model), version)
        ctx.say(f"  {status} ({registered.workers_text()}, {time.monotonic() - started:.1f} s)")
        ctx.say(f"checking {len(cases)} golden input(s) through TorchServe (/predictions/{model}/{version}) ...")
        failures = check_through_torchserve(ctx.torchserve, model, version, cases, ctx.photo)
    except BaseException:
        _unregister_quietly(ctx, model, version)
        raise
    if failures:
        _unregister_quietly(ctx, model, version)
        ctx.record(ctx.change(model, version, "deploy-rejected", None, None,
                              detail={"archive": archive, **(detail or {}), "failures": failures}))
        kept = (f"the default stays {before.default}" if before is not None
                else f"{model} is not served (it had no other version)")
        raise GoldenCheckFailed(
            f"{model} {version} failed its golden check through TorchServe; it was unregistered and {kept}:\n"
            + "\n".join(f"  - {f}" for f in failures)
        )
    ctx.record(ctx.change(model, version, "deploy", None, version,
                          detail={"archive": archive, **(detail or {}), "golden_cases": len(cases),
                                  "workers": registered.workers_text(),
                                  "batch_size": registered.batch_size,
                                  "max_batch_delay_ms": registered.max_batch_delay_ms, "overrides": overrides}))
    ctx.say(f"  all {len(cases)} golden input(s) answered correctly")
    if before is None:
        ctx.say(f"{model} {version} is the default (the model's first version)")
    elif set_default:
        ctx.torchserve.set_default(model, version)
        ctx.record(ctx.change(model, version, "set-default", before.default, version, detail={"via": "deploy"}))
        ctx.say(f"{model} default: {before.default} → {version}")
    else:
        ctx.say(f"{model} default stays {before.default}; make {version} the default with "
                f"`servingctl set-default {model} {version}`")
    ctx.say(f"deployed {model} {version} in {time.monotonic() - started:.1f} s")
    return before.default if before is not None else None


def _unregister_quietly(ctx: Context, model: str, version: str) -> None:
    try:
        ctx.torchserve.unregister(model, version)
        ctx.say(f"  unregistered {model} {version}")
    except OpsError as exc:
        ctx.warn(f"could not unregister {model} {version}: {exc.message}; retire it with "
                 f"`servingctl retire {model} {version}`")


@box_by_box
def set_default(ctx: Context, model: str, version: str) -> int:
    """Make a registered version the one ``/predictions/{model}`` serves."""
    started = time.monotonic()
    ctx.history()
    info = ctx.torchserve.describe(model)
    target = _version_or_404(info, version)
    if info.default == version:
        ctx.say(f"{model} {version} is already the default; nothing changed")
        return 0
    _require_ready(info, target)
    ctx.torchserve.set_default(model, version)
    ctx.record(ctx.change(model, version, "set-default", info.default, version))
    ctx.say(f"{model} default: {info.default} → {version} ({time.monotonic() - started:.1f} s)")
    return 0


@box_by_box
def rollback(ctx: Context, model: str) -> int:
    """Go back to the default before the current one, as recorded in the history."""
    started = time.monotonic()
    info = ctx.torchserve.describe(model)
    undo = rollback_target(model, ctx.history().changes(model), info.default)
    previous = str(undo.from_value)
    target = info.version(previous)
    if target is None:
        raise Refused(f"the previous default of {model}, {previous} (before change #{undo.id}), is no longer "
                      f"registered; deploy it again or choose with `servingctl set-default`")
    _require_ready(info, target)
    ctx.torchserve.set_default(model, previous)
    ctx.record(ctx.change(model, previous, "rollback", info.default, previous, reverts=undo.id))
    ctx.say(f"{model} default: {info.default} → {previous} (undoes change #{undo.id} by {undo.actor}; "
            f"{time.monotonic() - started:.1f} s)")
    return 0


@box_by_box
def retire(ctx: Context, model: str, version: str) -> int:
    """Unregister a version that is not the default."""
    started = time.monotonic()
    ctx.history()
    info = ctx.torchserve.describe(model)
    target = _version_or_404(info, version)
    if version == info.default:
        raise Refused(f"{model} {version} is the default version: make another version the default first "
                      f"(`servingctl set-default` or `servingctl rollback`), then retire it")
    ctx.torchserve.unregister(model, version)
    ctx.record(ctx.change(model, version, "retire", version, None, detail={"workers": target.workers_text()}))
    ctx.say(f"retired {model} {version} ({time.monotonic() - started:.1f} s); default stays {info.default}")
    return 0


@box_by_box
def scale(ctx: Context, model: str, min_workers: int, max_workers: int, version: str | None = None) -> int:
    """Set a version's worker range (the default version unless --version), wait, report its workers."""
    if min_workers < 0 or max_workers < 1 or min_workers > max_workers:
        raise UsageError(f"need 0 <= --min <= --max and --max >= 1; got --min {min_workers} --max {max_workers}")
    started = time.monotonic()
    ctx.history()
    info = ctx.torchserve.describe(model)
    target = _version_or_404(info, version or info.default)
    if target.version == info.default and min_workers < 1:
        raise Refused(f"--min 0 would leave {model}'s default version {target.version} without workers")
    ctx.torchserve.scale(model, version, min_workers, max_workers)
    after = _version_or_404(ctx.torchserve.describe(model), target.version)
    ctx.record(ctx.change(model, target.version, "scale", target.workers_text(), after.workers_text()))
    ctx.say(f"{model} {target.version}: {target.workers_text()} → {after.workers_text()} "
            f"({time.monotonic() - started:.1f} s)")
    for w in after.workers:
        ctx.say(f"  worker {w.id:<6} {w.status:<10} {_mib(w.memory_bytes):>9}   pid {w.pid if w.pid else '-'}")
    return 0
