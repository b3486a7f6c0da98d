"""A new version's golden check, through TorchServe itself: the archive's golden photos and expectations.

The build already gated the archive in a local worker; this repeats the check on the version TorchServe
actually loaded (its workers, its config), before it may become the default.
"""

from __future__ import annotations

from collections.abc import Callable

from archive_scripts.golden import GoldenCase
from ops.errors import Refused
from ops.torchserve import TorchServe

GoldenLookup = Callable[[str, str], tuple[GoldenCase, ...]]
PhotoLoader = Callable[[str], bytes]


def spec_golden(model: str, version: str) -> tuple[GoldenCase, ...]:
    """The golden cases of ``model``'s archive spec (``archive_scripts.specs``)."""
    from archive_scripts.specs import find_spec  # imports torch: only when a deploy needs it

    try:
        cases = find_spec(model, version).golden
    except KeyError as exc:
        raise Refused(f"{exc.args[0]}: there are no golden inputs to check {model} {version} with; not deploying") from exc
    if not cases:
        raise Refused(f"the spec of {model} declares no golden cases; not deploying an unchecked version")
    return cases


def sample_photo(name: str) -> bytes:
    """A bundled golden photo as JPEG bytes (``archive_scripts.photos``)."""
    from archive_scripts.photos import sample_photo as load

    return load(name)


def check_through_torchserve(
    torchserve: TorchServe, model: str, version: str, cases: tuple[GoldenCase, ...], photo: PhotoLoader
) -> list[str]:
    """Send each golden photo to ``/predictions/{model}/{version}``; return what was wrong (empty: passed)."""
    failures = []
    for case in cases:
        answer = torchserve.predict(model, version, photo(case.photo), dict(case.params))
        if answer.status != 200 or not isinstance(answer.body, dict):
            failures.append(f"{case.photo}: status {answer.status}: {answer.text[:200]}")
            continue
        served = (answer.body.get("model") or {}).get("version")
        if served is not None and str(served) != version:
            failures.append(f"{case.photo}: answered by version {served}, not {version}")
            continue
        problem = case.expect.failure(answer.body)
        if problem:
            failures.append(f"{case.photo}: {problem}")
    return failures
