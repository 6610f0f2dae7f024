"""dvc.yaml's code deps are derived from the code, not kept by hand: each stage lists
exactly the project modules its command imports (tests/imports.py). And the layout that
makes this worth having: stages that never import each other, short stage modules, and
no TensorFlow where nothing trains."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest

from . import imports

ROOT = imports.ROOT
STAGE_FILES = sorted(p for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py")
MAX_STAGE_LINES = 200  # a stage reads its section, calls the library, writes its outputs


def test_every_stage_lists_exactly_the_modules_its_command_imports() -> None:
    assert imports.dep_mismatches(imports.load_dvc_yaml()) == {}


def test_a_dep_missing_from_dvc_yaml_or_one_no_longer_imported_is_caught() -> None:
    config = imports.load_dvc_yaml()
    changed = copy.deepcopy(config)
    changed["stages"]["evaluate"]["do"]["deps"].remove("mnist_optimizers/stats.py")
    changed["stages"]["train"]["deps"].append("mnist_optimizers/registry.py")
    assert imports.dep_mismatches(changed) == {
        "evaluate": {"missing": ["mnist_optimizers/stats.py"], "not imported": []},
        "train": {"missing": [], "not imported": ["mnist_optimizers/registry.py"]},
    }


def test_imports_are_followed_through_modules_and_into_functions(tmp_path: Path) -> None:
    """The bug this check was made for: a stage importing a helper module that dvc.yaml did
    not list (evaluate and its statistics), found through a lazy import too."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "mnist_optimizers").mkdir()
    (tmp_path / "stages" / "evaluate.py").write_text(
        "from mnist_optimizers import tables\n\ndef main():\n    import mnist_optimizers.plots\n"
    )
    (tmp_path / "mnist_optimizers" / "tables.py").write_text(
        "from typing import TYPE_CHECKING\nfrom mnist_optimizers.stats import mean\n"
        "if TYPE_CHECKING:\n    from mnist_optimizers import model\n"
    )
    for name in ("stats", "plots", "model"):
        (tmp_path / "mnist_optimizers" / f"{name}.py").write_text("import numpy\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: python -m stages.evaluate\n"
        "    deps: [stages/evaluate.py, mnist_optimizers/tables.py, data/processed]\n"
    )
    config = imports.load_dvc_yaml(tmp_path / "dvc.yaml")
    assert imports.dep_mismatches(config, tmp_path) == {
        "evaluate": {
            # model.py is imported for type checkers only: it never runs, it is no dep.
            "missing": ["mnist_optimizers/plots.py", "mnist_optimizers/stats.py"],
            "not imported": [],
        }
    }


def test_package_init_files_hold_only_a_docstring() -> None:
    """They run on every import of their package, yet are not listed as deps: safe only
    while they hold no code."""
    inits = [init for package in imports.PACKAGES for init in (ROOT / package).rglob("__init__.py")]
    assert len(inits) >= 3  # stages, mnist_optimizers, mnist_optimizers.sections
    for init in inits:
        tree = ast.parse(init.read_text())
        assert all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            for node in tree.body
        ), f"{init.relative_to(ROOT)} holds code"


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.stem)
def test_a_stage_imports_no_other_stage_and_is_short(path: Path) -> None:
    names = imports.imported_names(path)
    others = sorted(n for n in names if n.startswith("stages") and n != f"stages.{path.stem}")
    assert others == [], f"{path.name} imports {others}: shared code belongs in the library"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_STAGE_LINES, f"{path.name}: {lines} lines; move library code out"


def test_every_stage_module_is_a_stage_of_dvc_yaml() -> None:
    run = set(imports.stage_modules(imports.load_dvc_yaml()).values())
    assert {f"stages.{p.stem}" for p in STAGE_FILES} == run


def test_stages_that_do_not_train_do_not_load_tensorflow() -> None:
    code = (
        "import sys\n"
        "import stages.download, stages.preprocess, stages.report, stages.register\n"
        "import mnist_optimizers.sections.download, mnist_optimizers.sections.evaluate\n"
        "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def library_imports() -> dict[str, set[str]]:
    """Each module of the library -> the project modules it imports."""
    graph = {}
    for path in sorted((ROOT / "mnist_optimizers").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        graph[name] = {n for n in imports.imported_names(path) if imports.module_path(n)}
    return graph


def test_the_library_imports_no_stage_and_has_no_import_cycle() -> None:
    graph = library_imports()
    assert {m: sorted(d) for m, d in graph.items() if any(n.startswith("stages") for n in d)} == {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep in graph and dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        visit(module, [module])
    assert cycles == [], cycles
