"""Generated regions inside hand-written files: the text between ``>>> generated: NAME`` and ``<<< generated: NAME``.

Lets a file keep its hand-written comments and structure while the parts that repeat the specs are written by
``python -m archive_scripts.deploy_config`` (deploy/compose.yaml, the README's table of models).
"""

from __future__ import annotations

BEGIN, END = ">>> generated: {name}", "<<< generated: {name}"


def replace_region(text: str, name: str, body: str, comment: tuple[str, str] = ("#", "")) -> str:
    """``text`` with region ``name``'s lines replaced by ``body``; the marker lines (and their indent) stay."""
    lines = text.splitlines(keepends=True)
    begin, end = (f"{comment[0]} {m.format(name=name)}" for m in (BEGIN, END))
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(begin)]
    ends = [i for i, line in enumerate(lines) if line.strip().startswith(end)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"expected one region '{begin} ... {end}' in order; found {len(starts)} and {len(ends)} markers")
    return "".join(lines[: starts[0] + 1]) + body + "".join(lines[ends[0]:])

