"""What the stages log into MLflow runs besides params and metrics: the model, the datasets,
and files and metrics added to a finished run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException

from mnist_optimizers.paths import processed_dir
from mnist_optimizers.mlflow_store import project_root

if TYPE_CHECKING:
    import keras
    import numpy as np

# The MLflow dataset context of each split a run saw: training and validation in training,
# test in evaluate.
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}

log = logging.getLogger(__name__)


class KerasFlavor:
    """`mlflow.keras`, with the model directory created before MLflow writes the input
    example into it (mlflow.keras.log_model fails otherwise: mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_requirements() -> list[str]:
    """Pinned requirements for the logged model, without MLflow's slow inference subprocess:
    MLflow, Keras and the backend it was trained on (TensorFlow's CPU or CUDA build, JAX)."""
    import keras

    on_tensorflow = keras.backend.backend() == "tensorflow"
    dists = ("tensorflow-cpu", "tensorflow") if on_tensorflow else ("jax",)
    backend = dists[-1]
    for dist in dists:
        try:
            backend = f"{dist}=={metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    return [f"mlflow=={mlflow.__version__}", f"keras=={metadata.version('keras')}", backend]


def log_model(model: keras.Model, example: np.ndarray) -> None:
    """Log ``model`` to the active run as `model/`, with its signature and an input example.
    MLflow checks the example by predicting it with Keras' default verbosity: its progress
    bars are kept off the log unless stdout is a terminal. Not by Keras' switch
    (disable_interactive_logging): it holds for the calling thread only, and on JAX Keras
    draws the bars from a callback thread."""
    from mlflow.models import infer_signature

    terminal = sys.stdout.isatty()
    bars = contextlib.nullcontext() if terminal else contextlib.redirect_stdout(io.StringIO())
    with bars:
        mlflow.models.Model.log(
            artifact_path=None,
            name="model",
            flavor=KerasFlavor,
            flavor_name="mlflow.keras",
            model=model,
            signature=infer_signature(example, model.predict(example, verbose=0)),
            input_example=example,
            pip_requirements=model_requirements(),
        )


def datasets(data: dict[str, np.ndarray], data_summary: dict[str, Any]) -> list[tuple[Any, str]]:
    """Each split in ``data`` (arrays keyed `x_train`, `y_train`, ... as
    `files.load_training_data` returns them) as an MLflow dataset and its context, for the
    run's Dataset column: named by data set, split and image count (`mnist-train-54000`), its
    source the processed file (of the workload the summary names), its digest that of the downloaded files' SHA-256, the preprocessing
    settings and the images taken (so runs on different subsets or data differ at a glance,
    without hashing the arrays)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.numpy_dataset import from_numpy

    # MLflow registers its local-file source twice (for `file:` and plain paths), and warns
    # that a path "can be interpreted in multiple ways" when left to choose: choose for it.
    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    inputs = []
    for split, context in DATASET_CONTEXTS.items():
        if f"x_{split}" not in data:
            continue
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        identity = {
            "sha256": data_summary["sha256"],
            "subset": data_summary["subset"],
            "val_fraction": data_summary["val_fraction"],
            "split": split,
            "images": len(x),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        folder = processed_dir(data_summary["workload"])
        source = local._resolve((project_root() / folder / f"x_{split}.npy").as_uri())
        name = f"{data_summary['dataset']}-{split}-{len(x)}"
        dataset = from_numpy(x, targets=y, source=source, name=name, digest=digest)
        inputs.append((dataset, context))
    return inputs


def log_datasets(inputs: list[tuple[Any, str]], run_id: str | None = None) -> None:
    """Log ``inputs`` (from `datasets`) into the active run, or into the finished ``run_id``.
    Two stages at once may log one dataset at once; the tracking server then inserts it twice
    and one of them fails on the table's unique key (seen in CI, PostgreSQL's
    UniqueViolation). Logged again, the dataset is found and reused, so one retry."""
    try:
        _log_datasets(inputs, run_id)
    except MlflowException as exc:
        if not any(key in str(exc) for key in ("UniqueViolation", "UNIQUE constraint")):
            raise
        log.warning("MLflow: a dataset was logged by another stage at once; logging again")
        _log_datasets(inputs, run_id)


def _log_datasets(inputs: list[tuple[Any, str]], run_id: str | None) -> None:
    if run_id is None:
        for dataset, context in inputs:
            mlflow.log_input(dataset, context=context)
        return
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    mlflow.MlflowClient().log_inputs(
        run_id,
        datasets=[
            DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            for dataset, context in inputs
        ],
    )


def log_to_run(
    label: str,
    run_id: str,
    metrics: dict[str, float],
    artifacts: dict[Path, str],
    tags: dict[str, str] | None = None,
) -> bool:
    """Log ``metrics`` (at step 0), ``artifacts`` (file -> artifact folder) and ``tags`` into
    the finished run ``run_id``. A run missing from the current store (trained against another
    one, restored from DVC's run cache) is skipped with a warning naming ``label``; return
    whether it was logged."""
    from mlflow.entities import Metric, RunTag
    from mlflow.utils.time import get_current_time_millis

    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException:
        log.warning(
            "%s: MLflow run %s is not in %s; not logging to it",
            label, run_id, mlflow.get_tracking_uri(),
        )  # fmt: skip
        return False
    now = get_current_time_millis()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    for path, folder in artifacts.items():
        client.log_artifact(run_id, str(path), folder)
    return True
