"""The numbers of README.md and docs/: every marked block equals what the committed results
give (mnist_optimizers/doc_numbers.py), and a number edited by hand fails the check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mnist_optimizers import doc_numbers

from .conftest import PROJECT_ROOT

RESULTS = ["params.yaml", "reports", "metrics/evaluate", "results"]


def test_every_marked_block_of_readme_and_docs_is_what_the_committed_results_give() -> None:
    stale = doc_numbers.stale_pages(PROJECT_ROOT)
    assert not stale, "numbers that differ from the results (python -m mnist_optimizers." + (
        "doc_numbers writes them):\n" + "\n".join(diff for _, diff in stale.values())
    )


def test_the_readme_holds_the_headline_of_every_workload_and_the_scores() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    for block in ("results-setup", "per-workload", "profile-scores", "across-workloads",
                  "full-space"):  # fmt: skip
        assert f"<!-- numbers: {block} -->" in readme
    assert len(readme.splitlines()) <= 250
    results = (PROJECT_ROOT / "docs" / "results.md").read_text()
    for block in ("results-default", "results-tuned", "verdicts", "full-space-details"):
        assert f"<!-- numbers: {block} -->" in results


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """README, docs and the committed results in a folder of their own."""
    for name in ["README.md", "docs", *RESULTS]:
        source = PROJECT_ROOT / name
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return tmp_path


def test_a_number_edited_by_hand_fails_and_writing_puts_it_back(copy: Path, monkeypatch) -> None:
    readme = copy / "docs" / "results.md"
    original = readme.read_text()
    block = original.split("<!-- numbers: results-default -->\n")[1].split("<!-- /numbers -->")[0]
    row = next(line for line in block.splitlines() if line.startswith("| adam "))
    test_percent = row.split(" | ")[3]  # optimizer, validation, tutorial, test
    edited = row.replace(test_percent, "99.99 ± 0.01")
    readme.write_text(original.replace(row, edited))

    stale = doc_numbers.stale_pages(copy)
    assert list(stale) == [readme]
    fixed, diff = stale[readme]
    assert f"-{edited}" in diff and f"+{row}" in diff and fixed == original

    monkeypatch.chdir(copy)
    assert doc_numbers.main(["--check"]) == 1
    assert doc_numbers.main([]) == 0
    assert readme.read_text() == original
    assert doc_numbers.main(["--check"]) == 0


def test_a_block_the_results_do_not_know_is_an_error(copy: Path) -> None:
    page = copy / "docs" / "new.md"
    page.write_text("<!-- numbers: nosuch -->\n<!-- /numbers -->\n")
    with pytest.raises(SystemExit, match="unknown numbers block 'nosuch'"):
        doc_numbers.stale_pages(copy)
