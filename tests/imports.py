"""The project modules a stage's command imports, found from the code: what its `deps` in
dvc.yaml must list.

    python -m tests.imports            # each stage of dvc.yaml and the modules it imports
    python -m tests.imports OTHER/     # the same for another checkout of the project

Imports are read with `ast` from every project module the stage's module reaches, imports
inside functions included, so a lazily imported module counts too. A package's
`__init__.py` counts as no dependency: the tests check that each holds only a docstring.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "mnist_optimizers")
COMMAND = re.compile(r"\bpython -m ([\w.]+)")


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module ``name`` (`mnist_optimizers.fit`) under ``root``, or None
    for a package or a module outside the project."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = root.joinpath(*parts).with_suffix(".py")
    return path if path.is_file() else None


class _Imports(ast.NodeVisitor):
    """Collects the module names a file imports at run time: `import a.b`, and
    `from a import b` as both `a` and `a.b`. Imports under `if TYPE_CHECKING:` only serve
    type checkers and never run, so they are left out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names |= {alias.name for alias in node.names}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            raise ValueError(f"{self.path}:{node.lineno}: relative import; use the full name")
        self.names.add(node.module or "")
        self.names |= {f"{node.module}.{alias.name}" for alias in node.names}


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports at run time, at the top or inside functions."""
    visitor = _Imports(path)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor.names


def module_closure(module: str, root: Path = ROOT) -> set[str]:
    """The project files (relative to ``root``) that ``module`` imports, itself included,
    transitively."""
    start = module_path(module, root)
    if start is None:
        raise ValueError(f"{module}: not a module of {', '.join(PACKAGES)}")
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [p for name in imported_names(path) if (p := module_path(name, root)) is not None]
    return {path.relative_to(root).as_posix() for path in seen}


def stage_modules(dvc_yaml: dict[str, Any]) -> dict[str, str]:
    """Stage name -> the module its command runs (`python -m stages.train ...`)."""
    modules = {}
    for name, stage in dvc_yaml["stages"].items():
        cmd = (stage.get("do") or stage)["cmd"]
        match = COMMAND.search(cmd)
        if match is None:
            raise ValueError(f"dvc.yaml: stage {name}: no `python -m <module>` in {cmd!r}")
        modules[name] = match.group(1)
    return modules


def listed_code_deps(stage: dict[str, Any]) -> set[str]:
    """The Python files among a stage's deps."""
    deps = (stage.get("do") or stage).get("deps", [])
    return {dep for dep in deps if dep.endswith(".py")}


def dep_mismatches(dvc_yaml: dict[str, Any], root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """Per stage whose deps are wrong: the imported files its deps miss, and the listed
    files it does not import."""
    problems = {}
    for name, module in stage_modules(dvc_yaml).items():
        needed = module_closure(module, root)
        listed = listed_code_deps(dvc_yaml["stages"][name])
        if needed != listed:
            problems[name] = {
                "missing": sorted(needed - listed),
                "not imported": sorted(listed - needed),
            }
    return problems


def load_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> dict[str, Any]:
    """dvc.yaml as data."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    config = load_dvc_yaml(root / "dvc.yaml")
    for stage, module in stage_modules(config).items():
        print(f"{stage}:")
        print("\n".join(f"  - {path}" for path in sorted(module_closure(module, root))))
    problems = dep_mismatches(config, root)
    for stage, problem in problems.items():
        print(f"dvc.yaml: {stage}: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
