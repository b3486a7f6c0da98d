"""``python -m stack.browser``: the browser the web page's tests drive — Debian's Chromium and its WebDriver.

``make test`` runs this when ``/usr/bin/chromedriver`` is missing (tests/integration/test_web_page.py drives the page
at / with selenium). Nothing is downloaded but Debian's packages: selenium is given both paths, so its own driver
manager never looks for a browser build of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack.services.base import StackError, apt_install, log

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = {CHROMEDRIVER: "chromium-driver", CHROMIUM: "chromium"}  # chromium-driver brings chromium with it


def missing() -> list[Path]:
    """The executables that are not there."""
    return [path for path in PACKAGES if not path.exists()]


def ensure() -> str:
    """Install what is missing; the driver's version line."""
    for path in missing():
        if not path.exists():  # installing the driver may have brought the browser
            apt_install(PACKAGES[path])
    still = missing()
    if still:
        raise StackError(f"{', '.join(map(str, still))} still missing after installing {', '.join(PACKAGES.values())}")
    result = subprocess.run([str(CHROMEDRIVER), "--version"], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise StackError(f"{CHROMEDRIVER} --version failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result.stdout.strip()


def main() -> int:
    try:
        version = ensure()
    except StackError as exc:
        print(f"the web page's browser: {exc}", file=sys.stderr)
        return 1
    log(f"the web page's browser: {version} ({CHROMIUM}, {CHROMEDRIVER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
