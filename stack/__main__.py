"""``python -m stack up|down|status``: the whole local stack, idempotently."""

from __future__ import annotations

import subprocess
import sys
import time

from stack.services import REPO_ROOT, StackError, all_services
from stack.settings import StackSettings


def build_archives() -> None:
    """Regenerate what repeats the specs (a new spec: its catalogue entry, its place in load_models, ...), then build
    (or confirm up to date) every archive before TorchServe loads them."""
    for step, what in ((["archive_scripts.deploy_config"], "regenerating the files that repeat the specs"),
                       (["archive_scripts"], "building the model archives")):
        result = subprocess.run([sys.executable, "-m", *step], cwd=REPO_ROOT, check=False)
        if result.returncode != 0:
            raise StackError(f"{what} failed (see above)")


def up(settings: StackSettings) -> int:
    """Start whatever is not running, wait until healthy, say where to send a photo."""
    started_at = time.monotonic()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    print("Model catalogue and archives ...", flush=True)
    build_archives()
    for service in all_services(settings):
        step = time.monotonic()
        print(f"{service.name}: starting ...", flush=True)
        started = service.up()
        state = "started" if started else "already running"
        print(f"{service.name}: {state} ({time.monotonic() - step:.1f} s)", flush=True)
    print(
        f"\nStack is up ({time.monotonic() - started_at:.1f} s). Send a photo:\n"
        "  curl -T photo.jpg http://127.0.0.1:8000/predictions/classifier       # category (top-5 labels)\n"
        "  curl -T photo.jpg http://127.0.0.1:8000/predictions/price            # price + 80% interval\n"
        "  curl -T photo.jpg 'http://127.0.0.1:8000/predictions/similar?k=3'    # nearest catalogue items\n"
        "  curl --data-binary @photo.jpg http://127.0.0.1:8000/v1/jobs          # all three, async (202 + job id)\n"
        "Health: curl http://127.0.0.1:8000/ping   API docs: http://127.0.0.1:8000/docs\n"
        f"Logs: {settings.state_dir / 'logs'}   Stop: make down"
    )
    return 0


def down(settings: StackSettings) -> int:
    """Stop, in reverse order, what `up` started."""
    for service in reversed(all_services(settings)):
        stopped = service.down()
        print(f"{service.name}: {'stopped' if stopped else 'not started by the stack; left as is'}", flush=True)
    return 0


def status(settings: StackSettings) -> int:
    """One line per service."""
    for service in all_services(settings):
        print(f"{service.name}: {'up' if service.is_up() else 'down'}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point."""
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print("usage: python -m stack up|down|status", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](StackSettings())
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
