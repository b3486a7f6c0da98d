"""``python -m archive_scripts new NAME --like KIND``: a spec (and for a new kind, a handler) that builds as written.

Each test runs the command in a copy of archive_scripts/ and handlers/ (the lead's uncommitted files included, none
of the real checkout's own models), so the checkout's models/ is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archive_scripts import new_model
from archive_scripts.specs import REPO_ROOT

PYTHON = sys.executable
KINDS = {"classifier": "classifier_handler.py", "price": "price_handler.py", "similar": "similar_handler.py"}


def run(copy: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the copy, as a user runs it from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run([PYTHON, *args], check=False, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """archive_scripts/ and handlers/ as git sees them (tracked and new files), without any model of the checkout's."""
    root = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "archive_scripts", "handlers"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        if not source.is_file() or (name.startswith("archive_scripts/models/") and name != "archive_scripts/models/__init__.py"):
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / name)
    shutil.copyfile(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")  # ruff's settings
    return root


@pytest.fixture(scope="module")
def written(copy: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """`new` run once for each kind: model "my<kind>"."""
    return {like: run(copy, "-m", "archive_scripts", "new", f"my{like}", "--like", like) for like in [*KINDS, "json"]}


def test_each_kind_writes_a_spec_the_catalogue_picks_up(copy: Path, written: dict[str, subprocess.CompletedProcess[str]]) -> None:
    for like, result in written.items():
        assert result.returncode == 0, result.stderr
        assert (copy / "archive_scripts" / "models" / f"my{like}.py").is_file()
        out = result.stdout
        assert f"Wrote archive_scripts/models/my{like}.py" in out and "TODO" in out
        for step in (f"-m archive_scripts my{like} ", "-m archive_scripts.deploy_config ", "make up"):
            assert step in out, out
    assert (copy / "handlers" / "myjson_handler.py").is_file()
    assert not any((copy / "handlers" / f"my{like}_handler.py").exists() for like in KINDS)

    probe = (
        "import json\n"
        "from archive_scripts.specs import SPECS, find_spec\n"
        "print(json.dumps({s.name: [s.handler, s.spec_file.name if s.spec_file else None, s.architecture, s.engine]"
        " for s in SPECS}))\n"
    )
    result = run(copy, "-c", probe)
    assert result.returncode == 0, result.stderr
    specs = json.loads(result.stdout.splitlines()[-1])
    for like, handler in {**KINDS, "json": "myjson_handler.py"}.items():
        assert specs[f"my{like}"][:2] == [handler, f"my{like}.py"]
    assert list(specs)[:4] == ["classifier", "resnet18", "similar", "price"]  # ours first, yours after


def test_the_new_kind_s_handler_answers_each_row_as_numbers(copy: Path, written: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert written["json"].returncode == 0, written["json"].stderr
    probe = (
        "import sys, json, torch\n"
        "sys.path.insert(0, 'handlers')\n"
        "import myjson_handler as m\n"
        "handler = m.MyjsonHandler()\n"
        "print(json.dumps([handler.kind, handler.oip_outputs == m.JSON_ANSWER,"
        " handler.postprocess_batch(torch.tensor([[1.0, -2.5], [0.25, 3.0]]), [None, None])]))\n"
    )
    result = run(copy, "-c", probe)
    assert result.returncode == 0, result.stderr
    kind, generic, answers = json.loads(result.stdout.splitlines()[-1])
    assert kind == "myjson" and generic  # one JSON text per photo over /v2 until it declares typed outputs
    assert answers == [{"outputs": [1.0, -2.5]}, {"outputs": [0.25, 3.0]}]


def test_the_written_files_are_lint_clean(copy: Path, written: dict[str, subprocess.CompletedProcess[str]]) -> None:
    ruff = Path(PYTHON).parent / "ruff"
    files = [str(copy / "archive_scripts" / "models" / f"my{like}.py") for like in written]
    handler = str(copy / "handlers" / "myjson_handler.py")
    result = subprocess.run([str(ruff), "check", *files, handler], check=False, cwd=copy, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_a_taken_or_invalid_name_is_refused_and_nothing_written(copy: Path, written: dict[str, subprocess.CompletedProcess[str]]) -> None:
    before = sorted(str(p) for p in copy.rglob("*.py"))
    refusals = {
        "myjson": re.escape("a model named 'myjson' exists already (archive_scripts/models/myjson.py)"),
        "price": re.escape("a model named 'price' exists already (archive_scripts/specs.py)"),
        "My-Model": "cannot name a model: use a lowercase letter .* e.g. 'mymodel'",
        "my_model": "Kubernetes names no '_'",
        "2fast": "cannot name a model",
        "a" * 41: "at most 40",
        "new": "is a command of `python -m archive_scripts`",
    }
    probe = (  # the command as `python -m archive_scripts new NAME` runs it, for each name in one process
        "import contextlib, io, json, sys\n"
        "from archive_scripts.__main__ import main\n"
        "answers = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "        answers[name] = [main(['new', name, '--like', 'classifier']), err.getvalue()]\n"
        "print(json.dumps(answers))\n"
    )
    result = run(copy, "-c", probe, json.dumps(list(refusals)))
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.splitlines()[-1])
    for name, message in refusals.items():
        status, stderr = answers[name]
        assert status == 2 and re.search(message, stderr), (name, stderr)
    (copy / "handlers" / "mine_handler.py").write_text('"""Someone\'s handler."""\n')
    result = run(copy, "-m", "archive_scripts", "new", "mine", "--like", "json")
    assert result.returncode == 2 and "handlers/mine_handler.py exists already" in result.stderr
    (copy / "handlers" / "mine_handler.py").unlink()
    assert sorted(str(p) for p in copy.rglob("*.py")) == before


def test_the_checkout_s_own_models_refuse_their_names_in_process() -> None:
    for name in ("classifier", "resnet18"):
        with pytest.raises(new_model.Refused, match="exists already"):
            new_model.check_name(name)


def test_a_generated_classifier_and_a_new_kind_build_and_pass_their_gates(
    copy: Path, written: dict[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """As written: the classifier on its spec's engine (exported, gated against the eager twin); the new kind eager."""
    result = run(copy, "-m", "archive_scripts", "myclassifier", "--store", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(copy, "-m", "archive_scripts", "myjson", "--engine", "eager", "--store", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"myclassifier_v1.0.mar", "myjson_v1.0.mar"}
    assert manifest["myclassifier_v1.0.mar"]["engine"]["name"] == "onnxruntime"
    assert manifest["myclassifier_v1.0.mar"]["trained"] is False  # the seeded default, and it says so
