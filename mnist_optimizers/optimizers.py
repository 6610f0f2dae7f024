"""The `optimizers` and `compare` sections: the catalog of Keras optimizers, checking an
entry, building it, and the learning rate as Keras holds it.

An entry's key names a Keras optimizer (any case) unless `class:` does; its other keys are
that optimizer's constructor arguments, checked against the constructor's signature.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from mnist_optimizers.errors import ParamsError, PipelineError, shown
from mnist_optimizers.files import read_json
from mnist_optimizers.params import selection
from mnist_optimizers.paths import tuned_file
from mnist_optimizers.sections.tune import RANGE_OF

CLASS_KEY = "class"
# What a full-space search (`tune.space: full`) tunes besides the learning rate, by Keras
# class, and the range of `tune.ranges` each is drawn from. Momentum is searched only where
# the entry sets one above 0: plain SGD and RMSprop stay the update rules they are (Choi et
# al.'s SGD within momentum within Adam). Ftrl, Adafactor and Muon: the learning rate alone.
SEARCHED = {
    "SGD": ("momentum",),
    "RMSprop": ("rho", "momentum", "epsilon"),
    "Adagrad": ("epsilon",),
    "Adadelta": ("rho", "epsilon"),
    "Adam": ("beta_1", "beta_2", "epsilon"),
    "AdamW": ("beta_1", "beta_2", "epsilon"),
    "Nadam": ("beta_1", "beta_2", "epsilon"),
    "Adamax": ("beta_1", "beta_2", "epsilon"),
    "Lamb": ("beta_1", "beta_2", "epsilon"),
    "Lion": ("beta_1", "beta_2"),
}
# Optimizers that wrap others or need per-variable structure: not usable from params alone.
NOT_STANDALONE = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}


def validate_optimizer_names(section: Any) -> dict[str, dict[str, Any]]:
    """Check that `optimizers` is a non-empty mapping of name -> dict of hyperparameters.

    Whether each name is a real Keras optimizer is checked by ``build_optimizer``."""
    if not isinstance(section, Mapping) or not section:
        raise ParamsError(
            "optimizers: expected at least one entry, e.g. `adam: {learning_rate: 0.001}`"
        )
    result = {}
    for name, spec in section.items():
        check_name(name)
        twin = next((other for other in result if other.lower() == name.lower()), None)
        if twin is not None:
            raise ParamsError(
                f"optimizers.{name}: differs from optimizers.{twin} only in case; their "
                "files would be one file on a case-insensitive disk"
            )
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise ParamsError(
                f"optimizers.{name}: expected a mapping of hyperparameters, got {shown(spec)}"
            )
        result[name] = dict(spec)
    return result


def check_name(name: Any) -> str:
    """An entry's name: 1 to 64 letters, digits or '_'. Not '-': it joins the name to the
    seed and the setting in run and file names (`adam-42-tuned`), so a name holding it
    (`adam-tuned`) would take another run's files."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise ParamsError(
            f"optimizers: {shown(name)} is not a valid name: use 1 to 64 letters, digits "
            "or '_' ('-' joins the name to the seed and setting in run and file names)"
        )
    return name


def optimizer_spec(specs: Mapping[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The entry ``name`` of the checked `optimizers` section, or a ParamsError."""
    if name not in specs:
        raise ParamsError(f"optimizers.{name}: no such entry; entries: {', '.join(specs)}")
    return specs[name]


def validate_compare(section: Any, optimizers: Mapping[str, Any]) -> list[str]:
    """Check `compare`: a non-empty list of distinct entries of `optimizers`."""
    return selection(section, optimizers, "compare", "optimizers", "optimizer")


def optimizer_classes() -> dict[str, type[keras.optimizers.Optimizer]]:
    """Every standalone optimizer class in `keras.optimizers`, by class name."""
    return {
        name: cls
        for name, cls in vars(keras.optimizers).items()
        if isinstance(cls, type)
        and issubclass(cls, keras.optimizers.Optimizer)
        and name not in NOT_STANDALONE
    }


# Constructor arguments whose default is None, by what else they take (the rest: a number).
WHOLE_OR_NONE = {"ema_overwrite_frequency", "gradient_accumulation_steps"}
NAMES_OR_NONE = {"exclude_layers"}
FLOAT32_MAX, FLOAT32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)


def check_number(value: Any, key: str) -> Any:
    """A real number that float32, in which Keras computes, holds: not a string, a bool,
    NaN or inf, nor so large it is inf there (1e39) or so small it is 0 (1e-50)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{key}: expected a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {shown(value)}")
    if abs(value) > FLOAT32_MAX or 0 < abs(value) < FLOAT32_TINY:
        raise ParamsError(
            f"{key}: {value:g} is {'inf' if abs(value) > 1 else '0'} in float32, in which "
            f"Keras computes: expected 0 or a size from {FLOAT32_TINY:.1e} to {FLOAT32_MAX:.1e}"
        )
    return value


def check_argument(value: Any, default: Any, key: str) -> Any:
    """``value`` for the constructor argument ``key`` whose default is ``default``, of the
    type that default means: YAML 1.2 reads `no` as the string 'no', which Keras would take
    as true."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {shown(value)}")
        return value
    if default is None and value is None:
        return None
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(default, int) or leaf in WHOLE_OR_NONE:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected a whole number, got {shown(value)}")
        return check_number(value, key)
    if leaf in NAMES_OR_NONE:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ParamsError(f"{key}: expected a list of layer names or null, got {shown(value)}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {shown(value)}")
        return value
    return check_number(value, key)


def build_optimizer(name: str, spec: dict[str, Any]) -> keras.optimizers.Optimizer:
    """Build the Keras optimizer that `optimizers.<name>` describes; ParamsError if it
    names no Keras optimizer or passes an argument that optimizer does not take."""
    classes = optimizer_classes()
    by_lower = {cls_name.lower(): cls for cls_name, cls in classes.items()}
    hyperparameters = dict(spec)
    class_name = hyperparameters.pop(CLASS_KEY, name)
    cls = classes.get(class_name) or by_lower.get(str(class_name).lower())
    if cls is None:
        where = f"optimizers.{name}.{CLASS_KEY}" if CLASS_KEY in spec else f"optimizers.{name}"
        raise ParamsError(
            f"{where}: {shown(class_name)} is not a Keras optimizer; valid names: "
            f"{', '.join(sorted(classes))} (any case), or set `{CLASS_KEY}:` to one of them"
        )
    signature = inspect.signature(cls.__init__)
    accepted = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "name") and p.kind is not p.VAR_KEYWORD
    }
    for key, value in hyperparameters.items():
        where = f"optimizers.{name}.{key}"
        if key not in accepted:
            raise ParamsError(
                f"{where}: {cls.__name__} takes no argument {shown(key)}; it takes: "
                f"{', '.join(accepted)}"
            )
        hyperparameters[key] = check_argument(value, accepted[key], where)
    learning_rate = hyperparameters.get("learning_rate")
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ParamsError(
            f"optimizers.{name}.learning_rate: expected > 0, got {shown(learning_rate)}"
        )
    try:
        return cls(**hyperparameters)
    except (ValueError, TypeError) as exc:
        raise ParamsError(
            f"optimizers.{name}: {cls.__name__} rejected {hyperparameters}: {exc}"
        ) from None


def float32_text(value: float) -> str:
    """A rate as Keras holds it (float32), written the way it reads in params: 0.001, not
    0.0010000000474974513."""
    return str(np.float32(value))


def logged_config(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    """The optimizer's config as Keras built it (defaults included), without its name, the
    learning rate as ``float32_text``."""
    config = optimizer.get_config()
    if isinstance(config.get("learning_rate"), float):
        config["learning_rate"] = float32_text(config["learning_rate"])
    config.pop("name", None)
    return config


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimizer's learning rate as Keras holds it, as the number it reads as: 0.001."""
    return float(float32_text(optimizer.get_config()["learning_rate"]))


def searched_arguments(optimizer: keras.optimizers.Optimizer, spec: dict[str, Any]) -> tuple:
    """The constructor arguments besides the learning rate that a full-space search tunes
    for ``optimizer`` built from ``spec`` (SEARCHED)."""
    arguments = SEARCHED.get(type(optimizer).__name__, ())
    return tuple(a for a in arguments if a != "momentum" or spec.get("momentum", 0) > 0)


def tuned_hyperparameters(workload: str, name: str) -> dict[str, float]:
    """The hyperparameters `tune@<workload>-<name>` chose (the learning rate, and for a
    full-space search the others it tuned), checked where they are read: a hand-edited file
    is named, not `optimizers.<name>`."""
    path = tuned_file(workload, name)
    chosen = read_json(path, "learning_rate")
    chosen.pop("optimizer", None)
    for key, value in chosen.items():
        if key not in ("learning_rate", *RANGE_OF):
            raise PipelineError(
                f"{path}: {shown(key)} is no hyperparameter a search tunes (learning_rate, "
                f"{', '.join(RANGE_OF)}); rerun the search: "
                f"dvc repro --force tune@{workload}-{name}"
            )
        positive = key == "learning_rate"  # a decay or epsilon may be 0
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise PipelineError(
                f"{path}: {key}: expected a {'positive' if positive else 'non-negative'} "
                f"number, got {shown(value)}; rerun the search: "
                f"dvc repro --force tune@{workload}-{name}"
            )
    return chosen
