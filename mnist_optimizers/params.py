"""Load params.yaml and the generic checks every section's validation is built from.

Each section is validated next to the code that reads it (a stage, or the library module
of a section several stages share), into a typed dataclass that ``main()`` passes on.
Nothing here imports TensorFlow or MLflow, so validation is instant and runs before any
heavy work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mnist_optimizers.errors import ParamsError
from mnist_optimizers.paths import PARAMS_FILE

SECTIONS = (
    "download",
    "preprocess",
    "model",
    "train",
    "compare",
    "optimizers",
    "tune",
    "gd_variants",
    "trajectories",
    "mlflow",
    "evaluate",
)


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 (and DVC's ruamel) do."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where it is, then what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(part for part in what if part) or str(exc).splitlines()[0]
    return f"{where}: {text}"


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml; a missing file, a YAML error or an unknown section is a ParamsError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    try:
        params = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML{yaml_error_text(exc)}") from None
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
        raise ParamsError(f"{where}: expected a mapping, got {section!r}")
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
        raise ParamsError(f"{key}: expected a positive integer, got {value!r}")
    return value


def non_negative_int(value: Any, key: str) -> int:
    """Return ``value`` if it is an int >= 0, else raise a ParamsError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParamsError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def finite_number(value: Any, key: str) -> float:
    """Return ``value`` as a float if it is a finite number, else raise a ParamsError."""
    if not is_number(value) or not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def int_list(value: Any, key: str) -> tuple[int, ...]:
    """A non-empty list of positive integers, as a tuple."""
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key}: expected a non-empty list of positive integers, got {value!r}")
    return tuple(positive_int(v, f"{key}[{i}]") for i, v in enumerate(value))
