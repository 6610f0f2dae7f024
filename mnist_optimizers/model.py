"""A workload's model: build it (mnist_optimizers/architecture.py checks its entry), save it,
load it safely, test it."""

from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import atomic_path
from mnist_optimizers.architecture import ModelConfig
from mnist_optimizers.paths import model_file, run_key, train_metrics_file

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, input_shape: tuple[int, ...]) -> keras.Sequential:
    """The CNN: per block, Conv2D layers then a max pool; then dense layers and a softmax.
    Without conv blocks it is a multilayer perceptron (DeepOBS' mnist_mlp: dense units
    1000, 500, 100), and without dense layers either, multinomial logistic regression.

    Layers compute in the global dtype policy (see `fit.effective_precision`); the softmax
    always outputs float32, as Keras' mixed-precision guide advises."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape)]
    for filters in config.conv_blocks:
        layers += [keras.layers.Conv2D(f, config.kernel_size, activation="relu") for f in filters]
        layers.append(keras.layers.MaxPooling2D(config.pool_size))
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation="relu") for units in config.dense_units]
    layers.append(keras.layers.Dense(config.num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name="mnist_cnn")


# A member of the .keras archive that Keras does not read: which training made the model.
IDENTITY_MEMBER = "pipeline_identity.json"


def save_model(model: keras.Model, path: Path, identity: dict[str, str]) -> None:
    """Save ``model`` in the `.keras` format, atomically, with its ``identity`` (its run,
    MLflow run and configuration digest) inside."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(IDENTITY_MEMBER, json.dumps(identity, sort_keys=True))


def check_identity(path: Path, metrics_path: Path, metrics: dict[str, Any]) -> None:
    """The model at ``path`` must be the one its metrics file describes (same MLflow run
    and configuration): a model file swapped for another's, or checked out from a
    hand-edited dvc.lock, is named, not evaluated as this run."""
    if not zipfile.is_zipfile(path):  # missing or damaged: load_model names it
        return
    retrain = f"retrain it: dvc repro --force {training_stage(path)}"
    try:
        with zipfile.ZipFile(path) as archive:
            identity = json.loads(archive.read(IDENTITY_MEMBER))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        raise PipelineError(
            f"{path}: carries no identity of this pipeline's (a model from elsewhere, or "
            f"damaged); {retrain}"
        ) from None
    for key in ("mlflow_run_id", "configuration"):
        if identity.get(key) != metrics.get(key):
            raise PipelineError(
                f"{path} and {metrics_path} do not belong together: the model is of "
                f"{identity.get('run')} ({key} {identity.get(key)}), the metrics say "
                f"{metrics.get(key)}; {retrain}"
            )


def training_stage(path: Path) -> str:
    """The stage that writes a model file (models/<workload>/<run>.keras, paths.model_file):
    train@mnist_cnn-adam-42, train_tuned@mnist_cnn-adam-42."""
    stem, workload = path.stem, path.parent.name
    if stem.endswith("-tuned"):
        return f"train_tuned@{workload}-{stem.removesuffix('-tuned')}"
    return f"train@{workload}-{stem}"


def load_model(path: Path) -> keras.Model:
    """Load a trained model in Keras' safe mode: a model file that would run Python code
    (a Lambda layer, a pickled function) is refused with a clear error, never executed."""
    if not path.exists():
        raise PipelineError(f"{path}: not found; run its training stage (dvc repro)")
    retrain = f"retrain it: dvc repro --force {training_stage(path)}"
    if not zipfile.is_zipfile(path):  # a .keras file is a zip archive
        raise PipelineError(f"{path}: not a Keras model file (damaged or cut short); {retrain}")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" not in str(exc) and "unsafe" not in str(exc).lower():
            raise PipelineError(f"{path}: does not load ({str(exc)[:200]}); {retrain}") from None
        raise PipelineError(
            f"{path}: refused: it holds Python code, which Keras' safe mode does not run "
            f"(this pipeline never saves such a model); {retrain}"
        ) from None
    except (OSError, KeyError, zipfile.BadZipFile) as exc:  # a damaged archive member
        raise PipelineError(f"{path}: does not load ({str(exc)[:200]}); {retrain}") from None


@dataclass(frozen=True)
class Evaluation:
    """One model's results on the test set."""

    test_accuracy: float
    test_loss: float
    per_class_accuracy: np.ndarray  # (num_classes,)
    confusion: np.ndarray  # (num_classes, num_classes), rows = actual, columns = predicted
    predictions: np.ndarray  # (n,) predicted digit per test image

    @classmethod
    def diverged(cls, num_classes: int) -> Evaluation:
        """A model whose training diverged: not evaluated, no number (NaN), no prediction."""
        nan = np.full(num_classes, np.nan)
        zeros = np.zeros((num_classes, num_classes), np.int64)
        return cls(math.nan, math.nan, nan, zeros, np.empty(0, np.int64))

    @property
    def is_diverged(self) -> bool:
        return self.predictions.size == 0

    def metrics(self) -> dict[str, float]:
        """Test accuracy and loss, and the accuracy on each digit, as MLflow metrics."""
        if self.is_diverged:
            return {}
        digits = {
            f"test_accuracy_digit_{d}": float(a) for d, a in enumerate(self.per_class_accuracy)
        }
        return {"test_accuracy": self.test_accuracy, "test_loss": self.test_loss} | digits


def evaluate_model(
    model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, where: str = "the model"
) -> Evaluation:
    """Accuracy, loss, per-class accuracy and confusion matrix of ``model`` (named ``where``
    in errors) on (x, y)."""
    takes, classes = tuple(model.input_shape[1:]), model.output_shape[-1]
    if takes != x.shape[1:] or y.max() >= classes:
        raise PipelineError(
            f"{where}: takes images of shape {takes} into {classes} classes; the test set has "
            f"{x.shape[1:]}, labels up to {y.max()}: retrain it on this data (dvc repro)"
        )
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(y, probabilities)
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    confusion = np.bincount(
        y.astype(np.int64) * num_classes + predictions, minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    support = confusion.sum(axis=1)
    per_class = np.divide(
        confusion.diagonal(), support, out=np.full(num_classes, np.nan), where=support > 0
    )
    return Evaluation(
        test_accuracy=float((predictions == y).mean()),
        test_loss=float(np.mean(keras.ops.convert_to_numpy(loss))),
        per_class_accuracy=per_class,
        confusion=confusion,
        predictions=predictions,
    )


def evaluate_models(
    workload: str, keys: list[tuple[str, int, bool]], train_metrics: dict, x_test, y_test,
    config, num_classes: int,
) -> dict[tuple[str, int, bool], Any]:  # fmt: skip
    """Each run's test evaluation (of ``workload``'s models); a tuned run that reused its
    default run (one MLflow run, one model) is evaluated once, a run that diverged not at all."""
    by_run_id: dict[str, Any] = {}
    evaluations = {}
    for k in keys:
        run_id = train_metrics[k]["mlflow_run_id"]
        path = model_file(workload, run_key(*k))
        check_identity(path, train_metrics_file(workload, run_key(*k)), train_metrics[k])
        if train_metrics[k].get("diverged"):  # its model holds NaN: nothing to measure
            evaluations[k] = Evaluation.diverged(num_classes)
            log.warning("%s: diverged in training: not evaluated", run_key(*k))
            continue
        if run_id not in by_run_id:
            model = load_model(path)
            by_run_id[run_id] = evaluate_model(model, x_test, y_test, config.batch_size, str(path))
            keras.backend.clear_session()
        evaluations[k] = by_run_id[run_id]
        log.info("%s: test accuracy %.4f", run_key(*k), evaluations[k].test_accuracy)
    return evaluations
