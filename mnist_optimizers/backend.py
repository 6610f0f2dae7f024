"""The Keras backend a stage runs on, `train.backend` in params.yaml: TensorFlow (the default)
or JAX. Keras reads $KERAS_BACKEND once, when it is first imported, so a stage sets it from
params.yaml before that (mnist_optimizers.quiet) and checks afterwards that Keras runs on the
backend its params name (a notebook or a test may have imported Keras first).

What Keras leaves to the backend is here too, one function each: making ops deterministic and
listing the GPUs a model trains on. Nothing here imports TensorFlow or JAX at module level.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.paths import PARAMS_FILE

BACKENDS = ("tensorflow", "jax")
DEFAULT = "tensorflow"
ENV = "KERAS_BACKEND"
# XLA's flag for deterministic reductions and convolutions on a GPU (JAX's counterpart of
# TensorFlow's enable_op_determinism); read when JAX first starts its GPU backend.
XLA_DETERMINISM = "--xla_gpu_deterministic_ops=true"

log = logging.getLogger(__name__)


def validate_backend(value: Any) -> str:
    """``value`` if it names a backend this pipeline runs on, else a ParamsError."""
    if value not in BACKENDS:
        expected = ", ".join(BACKENDS)
        raise ParamsError(f"train.backend: expected one of {expected}, got {shown(value)}")
    return value


def requested(path: Path = PARAMS_FILE) -> str | None:
    """`train.backend` of the params file at ``path``, or None where the file is missing or
    cannot be read as params (the stage's own checks then say what is wrong)."""
    from mnist_optimizers.params import load_params

    try:
        train = load_params(path).get("train")
    except ParamsError:
        return None
    value = train.get("backend", DEFAULT) if isinstance(train, dict) else None
    return value if value in BACKENDS else None


def select(path: Path = PARAMS_FILE) -> None:
    """Before Keras loads: set $KERAS_BACKEND to the params file's `train.backend`, which wins
    over a $KERAS_BACKEND set by hand (DVC tracks the param, not the environment). Where
    Keras is already loaded, its backend is fixed: ``check`` then names the mismatch."""
    wanted = requested(path)
    if wanted is None or "keras" in sys.modules:
        return
    if os.environ.get(ENV, wanted) != wanted:
        print(f"backend: train.backend is {wanted} in {path}; ${ENV}={os.environ[ENV]} is "
              "ignored", file=sys.stderr)  # fmt: skip  # before logging is set up
    os.environ[ENV] = wanted
    if wanted == "jax":
        try:
            import jax  # noqa: F401  Keras would fail on it with a traceback
        except ImportError:
            raise SystemExit("train.backend: jax, but JAX is not installed here: pip install "
                             "-r requirements.txt (jax[cpu]; requirements-gpu.txt: jax[cuda12])")
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_DETERMINISM}".strip()


def name() -> str:
    """The backend Keras runs on in this process (loading Keras if it is not yet loaded)."""
    import keras

    return keras.backend.backend()


def check(wanted: str) -> str:
    """``wanted`` if Keras runs on it in this process, else a ParamsError saying why not."""
    running = name()
    if running != wanted:
        raise ParamsError(
            f"train.backend: {wanted}, but Keras already runs on {running} in this process "
            f"(${ENV} or an earlier import chose it); run the stage in a new process"
        )
    return running


def deterministic_ops() -> None:
    """Ops give the same result on every run: TensorFlow's op determinism; on JAX, XLA's
    CPU ops are deterministic and ``select`` sets XLA's GPU flag (checked here)."""
    if name() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif gpus() and "xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
        log.warning("backend: XLA_FLAGS does not make JAX's GPU ops deterministic: runs "
                    "may differ in the last bits (set %s before JAX starts)",
                    XLA_DETERMINISM)  # fmt: skip


def gpus() -> list:
    """The GPUs the backend trains on (CUDA_VISIBLE_DEVICES decides which it sees)."""
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    import jax

    return [device for device in jax.devices() if device.platform in ("gpu", "cuda", "rocm")]


def gpu_name(gpu: Any) -> str:
    """``gpu``'s name, the same on both backends: `GPU:0` (TensorFlow's without its
    `/physical_device:` prefix; JAX's own spelling would be `cuda:0`)."""
    if name() == "tensorflow":
        return gpu.name.removeprefix("/physical_device:")
    return f"GPU:{gpu.id}"


def gpu_details(gpu: Any) -> dict[str, Any]:
    """The backend's facts about ``gpu``: `device_name` and `compute_capability` (a tuple)."""
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_device_details(gpu)
    capability = getattr(gpu, "compute_capability", None)  # "9.0" on CUDA
    details: dict[str, Any] = {"device_name": gpu.device_kind}
    if capability:
        details["compute_capability"] = tuple(int(part) for part in str(capability).split("."))
    return details
