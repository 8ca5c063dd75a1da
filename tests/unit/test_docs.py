"""The documentation ships with the project: every relative link in README.md and docs/
resolves inside the repository, nothing points outside it (../shared), every serve flag is
documented, and every Markdown table row sits inside its table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_docs_exist() -> None:
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"quickstart.md", "serving.md", "offline.md", "models.md", "gpu.md", "metrics.md", "benchmarks.md",
            "architecture.md", "features.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repo(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an in-page anchor
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_table_rows_sit_in_their_tables(doc: Path) -> None:
    lines = doc.read_text().splitlines()
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("|"):
            continue
        starts_table = i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1])
        assert starts_table or lines[i - 1].startswith("|"), f"{doc.name}:{i + 1} is a row outside a table"
        columns = _cells(line)
        header = next(lines[j] for j in range(i, -1, -1) if not lines[j - 1].startswith("|"))
        assert columns == _cells(header), f"{doc.name}:{i + 1} has {columns} cells, its table {_cells(header)}"


def _cells(row: str) -> int:
    # A | inside `code` still splits a GitHub table cell, so it is counted too.
    return row.count("|") - row.count("\\|") - 1


def test_every_serve_flag_is_documented() -> None:
    from pagedlm.entrypoints.cli import make_serve_parser

    serving = (ROOT / "docs" / "serving.md").read_text()
    from pagedlm.arg_utils import VLLM_DEST

    for action in make_serve_parser()._actions:
        if action.dest.startswith(VLLM_DEST):  # vLLM's flags for what pagedlm lacks: one section names the tables
            continue
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-") and flag != "--help":
                assert f"`{flag}`" in serving or f"`{flag} " in serving, f"{flag} is not in docs/serving.md"
