"""Docker on this machine: the daemon, base images made without a registry, and the project's two images.

``python -m stack.docker up|status|down|base|images``:

- ``up``: installs Debian's ``docker.io`` when ``dockerd`` is missing, starts ``dockerd`` when it is not answering,
  with host networking only (``--bridge=none --iptables=false --ip-masq=false``: no bridge network, so every
  container runs with ``--network host`` and binds 127.0.0.1, and so does every build: ``docker build --network
  host``; traffic never leaves loopback) and BuildKit as its default builder, its data root, config, pid file and
  log under the state dir (``SERVING_DOCKER_DIR``, default ``<checkout>/.state/docker``).
- ``base``: makes sure the base image a Dockerfile names exists. The official ``python:3.11-slim-bookworm`` is
  used when it is present (pulled, or loaded by the user); otherwise one is made from Debian's packages
  (debootstrap of bookworm with python3.11 + venv + pip, the host's CA bundle trusted by pip) and imported
  under a local name, once. Either way the base is also tagged ``serving-local/python:3.11-bookworm``, the root
  Dockerfile's default ``PYTHON_IMAGE``.
- ``images``: ``up`` + ``base`` + an image of torch wheels (made once from the host's pip, also tagged
  ``serving-local/torch-wheels:pinned``, the root Dockerfile's default ``TORCH_WHEELS_IMAGE``), then builds
  ``serving-api``, ``serving-model`` (the root ``Dockerfile``: after ``images``, ``docker build --network host .``
  builds it with no build argument), ``serving-ops`` (servingctl) and ``serving-balancer`` (nginx from Debian: the
  bridges' one address on a host).

Debian's CLI ``/usr/bin/docker`` (20.10) is used, not whatever ``docker`` is first on PATH: it builds with BuildKit
without the buildx plugin (``DOCKER_BUILDKIT=1``), which ``COPY --chmod`` and ``RUN --mount`` need.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_CLI = os.environ.get("SERVING_DOCKER_CLI", "/usr/bin/docker")
DOCKERD = "/usr/sbin/dockerd"
OFFICIAL_PYTHON = "python:3.11-slim-bookworm"
LOCAL_PYTHON = "serving-local/python:3.11-bookworm"
DEBIAN_SUITE = "bookworm"
# What the locally made base image holds: Debian's python3 (3.11 in bookworm, like the official image).
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/host-ca-bundle.crt"
LOCAL_TORCH_WHEELS = "serving-local/torch-wheels"
# The wheels of requirements.txt's current pins (or an empty wheelhouse), whichever ``images`` made last: the root
# Dockerfile's default TORCH_WHEELS_IMAGE.
PINNED_TORCH_WHEELS = f"{LOCAL_TORCH_WHEELS}:pinned"
MODEL_DOCKERFILE = "Dockerfile"  # the model server's, at the root: `docker build .` builds serving-model
API_IMAGE = "serving-api"
MODEL_IMAGE = "serving-model"
OPS_IMAGE = "serving-ops"  # servingctl, built from the model image's build stage
BALANCER_IMAGE = "serving-balancer"
START_TIMEOUT_S = 60.0
# dockerd's config: BuildKit by default, so that Debian's CLI builds with it without DOCKER_BUILDKIT=1 (the
# Dockerfiles' RUN --mount and COPY --chmod need it).
DAEMON_CONFIG = '{"features": {"buildkit": true}}\n'


class DockerError(Exception):
    """Docker could not be installed, started or used; the message says what to do."""


def state_dir() -> Path:
    """Where dockerd keeps its data root, pid file and log."""
    return Path(os.environ.get("SERVING_DOCKER_DIR", REPO_ROOT / ".state" / "docker"))


def say(message: str) -> None:
    """One progress line."""
    print(f"docker: {message}", flush=True)


def docker(*args: str, check: bool = True, capture: bool = True, env: dict[str, str] | None = None,
           timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run Debian's docker CLI."""
    result = subprocess.run(
        [DOCKER_CLI, *args], text=True, capture_output=capture, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip() if capture else "see above"
        raise DockerError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}): {detail}")
    return result


# --- the daemon ------------------------------------------------------------------------------------------------


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise DockerError(f"installing {' '.join(packages)} needs root: sudo apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"installing {' '.join(packages)} from Debian's packages ...")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                    *packages]):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            raise DockerError(f"{' '.join(command[:2])} failed (see above)")


def installed() -> bool:
    """Whether Debian's dockerd and CLI are installed."""
    return Path(DOCKERD).exists() and Path(DOCKER_CLI).exists()


def answering() -> bool:
    """Whether a daemon answers ``docker info``."""
    if not Path(DOCKER_CLI).exists():
        return False
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def up() -> int:
    """Install and start dockerd when needed; wait until it answers."""
    if not installed():
        _apt_install(["docker.io"])
    if answering():
        say("dockerd is running")
        return 0
    state = state_dir()
    (state / "data").mkdir(parents=True, exist_ok=True)
    (state / "daemon.json").write_text(DAEMON_CONFIG)
    log = (state / "dockerd.log").open("ab")
    say(f"starting dockerd (host networking only; data root {state / 'data'}, log {state / 'dockerd.log'}) ...")
    started = time.monotonic()
    process = subprocess.Popen(
        [DOCKERD, "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
         "--config-file", str(state / "daemon.json"),
         "--data-root", str(state / "data"), "--pidfile", str(state / "dockerd.pid")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    while not answering():
        if process.poll() is not None:
            raise DockerError(f"dockerd exited ({process.returncode}); see {state / 'dockerd.log'}")
        if time.monotonic() - started > START_TIMEOUT_S:
            raise DockerError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s; see {state / 'dockerd.log'}")
        time.sleep(0.5)
    say(f"dockerd is up (pid {process.pid}, {time.monotonic() - started:.1f} s)")
    return 0


def _our_pid() -> int | None:
    try:
        pid = int((state_dir() / "dockerd.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def down() -> int:
    """Stop the dockerd this module started (found by its pid file); leave any other alone."""
    pid = _our_pid()
    if pid is None:
        say("no dockerd started from this state dir is running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            say("dockerd stopped")
            return 0
        time.sleep(0.5)
    raise DockerError(f"dockerd (pid {pid}) did not stop within 30 s")


def status() -> int:
    """One line: installed, running, whose."""
    if not installed():
        say("not installed (python -m stack.docker up installs Debian's docker.io)")
        return 1
    if not answering():
        say("installed, dockerd not running")
        return 1
    pid = _our_pid()
    say(f"dockerd is running ({f'pid {pid}, started from {state_dir()}' if pid else 'not started by the stack'})")
    return 0


# --- base images -------------------------------------------------------------------------------------------------


def image_exists(name: str) -> bool:
    """Whether the daemon has an image of that name."""
    return docker("image", "inspect", "--format", "{{.Id}}", name, check=False).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt on this host uses (read at run time, never written into a file)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.sources")), *sorted(sources.glob("*.list"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822: paragraphs of fields
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", paragraph, re.MULTILINE))
                if DEBIAN_SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if match and match.group(2) == DEBIAN_SUITE:
                    return match.group(1)
    raise DockerError(f"no apt source for Debian {DEBIAN_SUITE} on this host; cannot make a base image")


def make_local_python_base(name: str = LOCAL_PYTHON) -> None:
    """debootstrap bookworm with python3 + venv + pip, trust the host's CA bundle, ``docker import`` it as name."""
    if shutil.which("debootstrap") is None:
        _apt_install(["debootstrap"])
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="serving-base-", dir=state_dir()) as tmp:
        root = Path(tmp) / "root"
        say(f"making {name}: debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror} ...")
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(root),
             mirror], stdout=subprocess.DEVNULL, check=False,
        )
        if result.returncode != 0:
            raise DockerError(f"debootstrap failed ({result.returncode}); see {root / 'debootstrap/debootstrap.log'}")
        # Package registries are reached through this host's TLS setup: only this locally made base trusts it.
        shutil.copyfile(HOST_CA_BUNDLE, root / IMAGE_CA_BUNDLE.lstrip("/"))
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        say(f"importing {name} ...")
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"ENV PIP_CERT={IMAGE_CA_BUNDLE}",
            f"ENV REQUESTS_CA_BUNDLE={IMAGE_CA_BUNDLE}",
            'CMD ["python3"]',
        ]
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        args = [DOCKER_CLI, "import", *(arg for change in changes for arg in ("--change", change)), "-", name]
        imported = subprocess.run(args, stdin=tar.stdout, stdout=subprocess.DEVNULL, check=False)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise DockerError(f"docker import of {name} failed")
    say(f"{name} made ({time.monotonic() - started:.0f} s)")


def python_base() -> str:
    """The Python base image to build from: the official one when present here, else the local one (made once).

    Either way it is (also) tagged LOCAL_PYTHON, the root Dockerfile's default PYTHON_IMAGE, so that a plain
    ``docker build`` there uses the same base as ``images``.
    """
    if image_exists(OFFICIAL_PYTHON):
        docker("tag", OFFICIAL_PYTHON, LOCAL_PYTHON)
        return OFFICIAL_PYTHON
    if not image_exists(LOCAL_PYTHON):
        say(f"{OFFICIAL_PYTHON} is not here and no registry is reachable: making a base from Debian's packages")
        make_local_python_base()
    return LOCAL_PYTHON


# --- the torch wheels and the images --------------------------------------------------------------------------


def _torch_pins() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if re.match(r"^(torch|torchvision)==", line.strip())]


def _image_from(directory: str, name: str) -> None:
    """``docker build`` an image holding ``directory``'s files at / (no base, no RUN: no network needed)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    built = subprocess.run([DOCKER_CLI, "build", "--quiet", "--tag", name, "--file", "-", directory],
                           input="FROM scratch\nCOPY . /\n", text=True, env=env, stdout=subprocess.DEVNULL, check=False)
    if built.returncode != 0:
        raise DockerError(f"building {name} failed (see above)")


def torch_wheels_image() -> str:
    """An image holding the pinned torch/torchvision wheels and their dependencies' at /, made once from this host's pip.

    The host's pip finds them in local file indexes (``pip config list``), so the model-server build installs
    gigabytes of CUDA wheels without downloading them, and, the wheels being an image rather than part of the build
    context, an unchanged build does not send them to the daemon again. Returns "scratch" (no wheels: the build
    uses TORCH_INDEX_URL) when the host's pip cannot get them. Tags PINNED_TORCH_WHEELS, the root Dockerfile's
    default, as the same image, or as an empty wheelhouse when there are no wheels (the build then uses the index).
    """
    name = _torch_wheels_image()
    if name != "scratch":
        docker("tag", name, PINNED_TORCH_WHEELS)
    else:
        with tempfile.TemporaryDirectory(prefix="no-wheels-", dir=state_dir()) as empty:
            Path(empty, "NO-WHEELS").write_text("no torch wheels: the model-server build uses TORCH_INDEX_URL\n")
            _image_from(empty, PINNED_TORCH_WHEELS)
    return name


def _torch_wheels_image() -> str:
    pins = _torch_pins()
    name = f"{LOCAL_TORCH_WHEELS}:{'-'.join(pin.split('==')[1] for pin in pins)}"
    if image_exists(name):
        return name
    say(f"making {name}: {' '.join(pins)} and their dependencies' wheels from the host's pip ...")
    started = time.monotonic()
    state_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torch-wheels-", dir=state_dir()) as wheels:
        downloaded = subprocess.run(
            # This host is what the image is (Linux x86_64, CPython 3.11, glibc of bookworm), so no --platform.
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", wheels, *pins],
            stderr=subprocess.DEVNULL, check=False,
        )
        if downloaded.returncode != 0:
            say("the host's pip could not get them; the model-server build will use TORCH_INDEX_URL")
            return "scratch"
        size = sum(wheel.stat().st_size for wheel in Path(wheels).glob("*.whl"))
        _image_from(wheels, name)
    say(f"{name} made: {size / 1e9:.1f} GB of wheels ({time.monotonic() - started:.0f} s)")
    return name


@dataclass(frozen=True)
class Image:
    """One image this repository builds."""

    name: str
    dockerfile: str
    target: str | None = None  # the Dockerfile's stage; None: its last


IMAGES = (
    Image(API_IMAGE, "docker/api.Dockerfile"),
    Image(MODEL_IMAGE, MODEL_DOCKERFILE),
    Image(OPS_IMAGE, MODEL_DOCKERFILE, target="servingctl"),
    Image(BALANCER_IMAGE, "docker/balancer.Dockerfile"),
)


def build(image: Image, base: str, extra_args: Sequence[str] = ()) -> float:
    """Build one image (BuildKit, host network for the package registries); return seconds taken."""
    started = time.monotonic()
    say(f"building {image.name} from {image.dockerfile} (base {base}) ...")
    env = {**os.environ, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
    result = docker(
        # PYTHON_IMAGE for the Python images, BASE_IMAGE (Debian) for the balancer: the base is Debian bookworm.
        "build", "--network", "host", "--file", str(REPO_ROOT / image.dockerfile),
        "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", f"BASE_IMAGE={base}",
        *(["--target", image.target] if image.target else []),
        *extra_args, "--tag", image.name, str(REPO_ROOT), check=False, capture=False, env=env,
    )
    if result.returncode != 0:
        raise DockerError(f"building {image.name} failed (see above)")
    seconds = time.monotonic() - started
    size = docker("image", "inspect", "--format", "{{.Size}}", image.name).stdout.strip()
    say(f"{image.name} built ({seconds:.0f} s, {int(size) / 1e6:.0f} MB)")
    return seconds


def images(names: Sequence[str] = ()) -> int:
    """Docker up, base image, torch wheels, then the images (all, or those named)."""
    up()
    base = python_base()
    for image in IMAGES:
        if names and image.name not in names:
            continue
        uses_torch = image.dockerfile == MODEL_DOCKERFILE
        extra = ["--build-arg", f"TORCH_WHEELS_IMAGE={torch_wheels_image()}"] if uses_torch else []
        build(image, base, extra)
    return 0


def base() -> int:
    """Print the Python base image a build would use (made here when needed)."""
    up()
    print(python_base())
    return 0


def main(argv: list[str]) -> int:
    """Entry point."""
    commands = {"up": up, "down": down, "status": status, "base": base}
    try:
        if argv and argv[0] == "images":
            return images(argv[1:])
        if len(argv) == 1 and argv[0] in commands:
            return commands[argv[0]]()
    except DockerError as exc:
        print(f"docker: error: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m stack.docker up|status|down|base|images [serving-api|serving-model|serving-ops|serving-balancer ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
