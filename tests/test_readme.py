"""The README's Python blocks run as written (so they cannot go stale), and the documents'
relative links point at files of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import real_data_dir

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.real_data
def test_every_python_block_of_the_readme_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = real_data_dir("ml-100k")  # the tour reads ML-100K with pandas
    monkeypatch.setenv("FEATREC_DATA_DIR", str(folder.parent.resolve()))
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README shows the Python API"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    recs = namespace["recs"]  # the tour's last request
    assert (
        len(recs.items) == 10 and (tmp_path / "runs" / "my-data" / "final_metrics.json").is_file()
    )


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"{path.name} links to missing files: {missing}"


def test_no_document_cites_the_design_note_outside_the_repository() -> None:
    sources = [*ROOT.glob("featrec/**/*.py"), *ROOT.glob("tests/*.py"), *DOCUMENTS]
    citing = [str(p.relative_to(ROOT)) for p in sources
              if re.search(r"(?<![/\w])DESIGN\.md", p.read_text(encoding="utf-8"))]  # fmt: skip
    assert not citing, f"cite docs/design.md instead: {citing}"
