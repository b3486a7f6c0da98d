"""A new version's golden check, through TorchServe itself: golden photos and what their answers must be.

The cases come from the archive's spec (the build already gated the archive in a local worker; this repeats
the check on the version TorchServe actually loaded) or, for an archive built elsewhere around its own
handler, from the command line (``--golden PHOTO=EXPECTED``, :func:`parse_golden`), checked against any
JSON answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archive_scripts.golden import GoldenCase
from ops.errors import Refused, UsageError
from ops.torchserve import TorchServe

GoldenLookup = Callable[[str, str], tuple[GoldenCase, ...]]
PhotoLoader = Callable[[str], bytes]

# archive_scripts.photos.sample_photo's photos (scikit-image's and scikit-learn's), usable by name.
BUNDLED_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "china", "flower")
TOP = "top:"
REL_TOL, ABS_TOL = 1e-4, 1e-6  # how close a number of the answer must be to an expected one

GOLDEN_HELP = f"""\
PHOTO: a bundled photo's name ({', '.join(BUNDLED_PHOTOS)}; chelsea is a cat)
or else the path of an image file (./chelsea for a file of that name). EXPECTED, checked against the
answer (JSON):
  LABEL       LABEL is among the answer's labels: a key of its top-level object (the stock
              image_classifier answers {{"tabby": 0.41, ...}}) or a string anywhere in it
  top:LABEL   LABEL has the answer's highest score: among its {{"label": ..., "score": ...}} objects
              (ours), or else among its top-level object's numeric entries ({{label: score}})
  @FILE.json  the answer contains that JSON: each key of an object, recursively; lists element by element
              (same length); numbers within {REL_TOL:g} relative ({ABS_TOL:g} absolute); anything else equal"""


def spec_golden(model: str, version: str) -> tuple[GoldenCase, ...]:
    """The golden cases of ``model``'s archive spec (``archive_scripts.specs``)."""
    from archive_scripts.specs import find_spec  # imports torch: only when a deploy needs it

    try:
        cases = find_spec(model, version).golden
    except KeyError as exc:
        raise Refused(f"{exc.args[0]}: there are no golden inputs to check {model} {version} with; give them with "
                      f"--golden PHOTO=EXPECTED (e.g. --golden chelsea=tabby; `servingctl deploy --help`)") from exc
    if not cases:
        raise Refused(f"the spec of {model} declares no golden cases; give --golden PHOTO=EXPECTED to check "
                      f"{model} {version} with (not deploying an unchecked version)")
    return cases


def sample_photo(name: str) -> bytes:
    """A golden photo's bytes: a bundled photo as JPEG (``archive_scripts.photos``), or else the file ``name``."""
    if name in BUNDLED_PHOTOS:
        from archive_scripts.photos import sample_photo as load

        return load(name)
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the golden photo {name}: {exc.strerror or exc}") from exc


# --- expectations given on the command line (archive_scripts.golden.Expectation) -------------------------


def _strings(value: Any) -> Iterator[str]:
    """Every string value in a JSON document, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _labels(body: dict[str, Any]) -> list[str]:
    """The answer's labels: its top-level keys, then its string values (each once, in order)."""
    return list(dict.fromkeys([*body, *_strings(body)]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scored_objects(value: Any) -> Iterator[tuple[str, float]]:
    """(label, score) of every ``{"label": str, "score": number}`` object in a JSON document."""
    if isinstance(value, dict):
        if isinstance(value.get("label"), str) and _is_number(value.get("score")):
            yield value["label"], float(value["score"])
        for item in value.values():
            yield from _scored_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scored_objects(item)


def _scores(body: dict[str, Any]) -> list[tuple[str, float]]:
    """The answer's scored labels: its ``{"label", "score"}`` objects if any, else its top-level numeric entries."""
    return list(_scored_objects(body)) or [(key, float(item)) for key, item in body.items() if _is_number(item)]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass(frozen=True)
class AnswerIsObject:
    """Only the answer's form: a non-empty JSON object."""

    def failure(self, body: dict[str, Any]) -> str | None:
        return None if isinstance(body, dict) and body else f"not a non-empty JSON object: {_short(body)}"

    def relaxed(self) -> AnswerIsObject:
        return self

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        return self.failure(body)


class _CommandLineExpectation:
    """A ``--golden`` expectation: a reduced-precision answer must meet it too; on other weights, the form only."""

    def failure(self, body: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def relaxed(self) -> AnswerIsObject:
        return AnswerIsObject()

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """The same expectation holds."""
        return self.failure(body)


@dataclass(frozen=True)
class HasLabel(_CommandLineExpectation):
    """``label`` is a key of the answer's top-level object or a string anywhere in it (``PHOTO=LABEL``)."""

    label: str

    def failure(self, body: dict[str, Any]) -> str | None:
        labels = _labels(body)
        return None if self.label in labels else f"{self.label!r} is not in the answer: {_short(body)}"


@dataclass(frozen=True)
class TopLabel(_CommandLineExpectation):
    """``label`` has the answer's highest score (``PHOTO=top:LABEL``); a tie for the top counts."""

    label: str

    def failure(self, body: dict[str, Any]) -> str | None:
        scores = _scores(body)
        if not scores:
            return f"no scored labels ({{label: score}} or {{\"label\", \"score\"}}) in the answer: {_short(body)}"
        best = max(score for _, score in scores)
        top = [label for label, score in scores if score == best]
        return None if self.label in top else f"top label {top[0]!r} ({best:g}), expected {self.label!r}"


def _mismatch(expected: Any, actual: Any, where: str) -> str | None:
    """Where ``actual`` does not contain ``expected`` (see GOLDEN_HELP), or None."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {_short(actual)}"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}: no key {key!r}"
            problem = _mismatch(value, actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{where}: expected a list of {len(expected)}, got {_short(actual)}"
        return next((p for i, (e, a) in enumerate(zip(expected, actual))
                     if (p := _mismatch(e, a, f"{where}[{i}]"))), None)
    if _is_number(expected):
        close = _is_number(actual) and math.isclose(expected, actual, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        return None if close else f"{where}: expected {expected}, got {_short(actual)}"
    if type(expected) is not type(actual) or expected != actual:
        return f"{where}: expected {_short(expected)}, got {_short(actual)}"
    return None


@dataclass(frozen=True)
class ContainsJson(_CommandLineExpectation):
    """The answer contains ``expected`` (``PHOTO=@FILE.json``): a subset match, see GOLDEN_HELP."""

    expected: Any
    source: str = "the expected JSON"

    def failure(self, body: dict[str, Any]) -> str | None:
        problem = _mismatch(self.expected, body, "answer")
        return None if problem is None else f"does not contain {self.source}: {problem}"


# --- --golden PHOTO=EXPECTED ---------------------------------------------------------------------------------


def _golden_usage(text: str, why: str) -> UsageError:
    return UsageError(f"--golden {text!r}: {why}; write --golden PHOTO=EXPECTED, e.g. --golden chelsea=tabby "
                      "(`servingctl deploy --help` lists the forms)")


def _photo(text: str, photo: str) -> str:
    if photo in BUNDLED_PHOTOS:
        return photo
    path = Path(photo).expanduser()
    if not path.is_file():
        raise _golden_usage(text, f"PHOTO {photo!r} is neither a bundled photo ({', '.join(BUNDLED_PHOTOS)}) "
                                  "nor an image file")
    return str(path)


def _expectation(text: str, expected: str) -> HasLabel | TopLabel | ContainsJson:
    if expected.startswith("@"):
        path = Path(expected[1:]).expanduser()
        try:
            return ContainsJson(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        except OSError as exc:
            raise _golden_usage(text, f"cannot read {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise _golden_usage(text, f"{path} is not JSON: {exc}") from exc
    if expected.startswith(TOP):
        label = expected.removeprefix(TOP)
        if not label:
            raise _golden_usage(text, "top: needs a label (top:LABEL)")
        return TopLabel(label)
    return HasLabel(expected)


def parse_golden(text: str) -> GoldenCase:
    """One ``--golden PHOTO=EXPECTED`` (split at the first ``=``) as a golden case; UsageError when malformed."""
    photo, equals, expected = text.partition("=")
    if not equals or not photo or not expected:
        raise _golden_usage(text, "PHOTO and EXPECTED must both be given")
    return GoldenCase(_photo(text, photo), _expectation(text, expected))


def parse_goldens(texts: Sequence[str] | None) -> tuple[GoldenCase, ...]:
    """Every ``--golden`` given (empty: none, the archive's spec supplies them)."""
    return tuple(parse_golden(text) for text in texts or ())


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
        stated = answer.body.get("model")  # ours say which version answered; another handler's may not
        served = stated.get("version") if isinstance(stated, dict) else None
        if served is not None and str(served) != version:
            failures.append(f"{case.photo}: answered by version {served}, not {version}")
            continue
        problem = case.expect.failure(answer.body)
        if problem:
            failures.append(f"{case.photo}: {problem}")
    return failures
