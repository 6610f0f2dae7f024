"""Load params.yaml and the generic checks every section's validation is built from.

Each section is validated next to the code that reads it (a stage, or the library module
of a section several stages share), into a typed dataclass that ``main()`` passes on.
Nothing here imports TensorFlow or MLflow, so validation is instant and runs before any
heavy work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.paths import PARAMS_FILE

SECTIONS = (
    "download",
    "datasets",
    "workloads",
    "compare_workloads",
    "preprocess",
    "train",
    "compare",
    "optimizers",
    "tune",
    "gd_variants",
    "trajectories",
    "mlflow",
    "evaluate",
)


# What a params file may expand to through YAML aliases (`*name` repeats the value of
# `&name`): params.yaml has about 300 values; an alias bomb has billions.
MAX_VALUES = 100_000


def parse_yaml(text: str, where: str) -> Any:
    """Parse ``text`` exactly as DVC parses params.yaml (ruamel.yaml, YAML 1.2: `010` is 10,
    `yes` is a string, `1e-3` a number; a duplicate key is an error), so that the stages
    train with the values dvc.lock and `dvc params diff` show."""
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML{yaml_error_text(exc)}") from None
    if count_values(data) > MAX_VALUES:
        written = sum(1 for _ in walk(data))  # each value once, however many aliases name it
        if written <= MAX_VALUES:
            raise ParamsError(
                f"{where}: expands to more than {MAX_VALUES:,} values through YAML aliases "
                "(*name); write the values out"
            )
        key, count = largest_list(data)
        raise ParamsError(
            f"{where}: {key} holds {count:,} entries; a params file holds at most "
            f"{MAX_VALUES:,} values (params.yaml has about 300)"
        )
    return data


def walk(node: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every value of ``node`` once (a node that aliases name twice is walked once)."""
    seen = set() if seen is None else seen
    yield node
    if isinstance(node, (dict, list)) and id(node) not in seen:
        seen.add(id(node))
        for child in [*node.keys(), *node.values()] if isinstance(node, dict) else node:
            yield from walk(child, seen)


def largest_list(data: Any, key: str = "") -> tuple[str, int]:
    """The dotted key of the longest list or mapping in ``data``, and its length."""
    best = (key or "params", len(data) if isinstance(data, (dict, list)) else 0)
    children = data.items() if isinstance(data, dict) else []
    for name, child in children:
        found = largest_list(child, f"{key}.{name}" if key else str(name))
        best = max(best, found, key=lambda pair: pair[1])
    return best


def count_values(data: Any, limit: int = MAX_VALUES) -> int:
    """How many values ``data`` holds once its aliases are expanded, counting up to just past
    ``limit`` (aliases share one object, so the walk memoises by identity)."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) not in sizes:
            sizes[id(node)] = limit + 1  # a node that contains itself is unbounded
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            total = 1
            for child in children:
                total = min(total + size(child), limit + 1)
            sizes[id(node)] = total
        return sizes[id(node)]

    return size(data)


def yaml_error_text(exc: YAMLError) -> str:
    """A YAML error on one line: where it is, then what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(str(part) for part in what if part) or str(exc).splitlines()[0]
    return f"{where}: {text[:200]}"


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml; a missing file, a YAML error or an unknown section is a ParamsError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read it: {exc}") from None
    params = parse_yaml(text, str(path))
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections {', '.join(SECTIONS)}")
    check_keys(params, SECTIONS, str(path), required=SECTIONS)
    return params


def check_keys(
    section: Mapping[str, Any],
    allowed: tuple[str, ...],
    where: str,
    required: tuple[str, ...] = (),
) -> None:
    """A mapping with no key outside ``allowed`` and every key of ``required``."""
    if not isinstance(section, Mapping):
        raise ParamsError(f"{where}: expected a mapping, got {shown(section)}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"expected: {', '.join(allowed)}"
        )
    missing = [key for key in required if key not in section]
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any, key: str) -> int:
    """Return ``value`` if it is an int > 0, else raise a ParamsError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ParamsError(f"{key}: expected a positive integer, got {shown(value)}")
    return value


# NumPy's and TensorFlow's random seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1


def seed(value: Any, key: str) -> int:
    """Return ``value`` if it is an int from 0 to MAX_SEED, else raise a ParamsError."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ParamsError(
            f"{key}: expected a seed, an integer from 0 to {MAX_SEED}, got {shown(value)}"
        )
    return value


def finite_number(value: Any, key: str) -> float:
    """Return ``value`` as a float if it is a finite number, else raise a ParamsError."""
    if not is_number(value) or not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {shown(value)}")
    return float(value)


def int_list(value: Any, key: str, empty: bool = False) -> tuple[int, ...]:
    """A list of positive integers, as a tuple; non-empty unless ``empty``."""
    if not isinstance(value, list) or not (value or empty):
        what = "a list" if empty else "a non-empty list"
        raise ParamsError(f"{key}: expected {what} of positive integers, got {shown(value)}")
    return tuple(positive_int(v, f"{key}[{i}]") for i, v in enumerate(value))


def selection(value: Any, catalog: Mapping[str, Any], key: str, where: str, kind: str) -> list[str]:
    """Check ``value`` (params key ``key``): a non-empty list of distinct entries of
    ``catalog`` (params section ``where``), each a ``kind``; return it."""
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key}: expected a non-empty list of {kind} names, got {shown(value)}")
    unknown = [name for name in value if name not in catalog]
    if unknown:
        raise ParamsError(
            f"{key}: {', '.join(map(str, unknown))} not in `{where}`; "
            f"entries: {', '.join(catalog)}"
        )
    if len(set(value)) != len(value):
        raise ParamsError(f"{key}: each {kind} once, got {shown(value)}")
    return list(value)
