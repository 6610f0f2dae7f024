"""MLflow's model registry: register a workload's trained model under the workload's name
(`mnist-cnn` for mnist_cnn) and keep the alias `champion` on the best one by validation
accuracy (never test accuracy: test stays an unbiased estimate)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import run_key

ALIAS = "champion"
SELECTION_METRIC = "val_accuracy"
VAL_SET_TAG, VAL_IMAGES_TAG = "val_set", "val_images"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One trained model: which run of the pipeline, and its validation accuracy."""

    workload: str
    optimizer: str
    seed: int
    setting: str  # "default" or "tuned" learning rate
    learning_rate: float
    val_accuracy: float

    @property
    def key(self) -> str:
        return run_key(self.optimizer, self.seed, self.setting == "tuned")

    @property
    def model_name(self) -> str:
        return model_name(self.workload)


def model_name(workload: str) -> str:
    """A workload's name in the registry: mnist_cnn -> mnist-cnn."""
    return workload.replace("_", "-")


@dataclass(frozen=True)
class ValidationSet:
    """The validation images a model was chosen on: accuracies compare only on the same."""

    digest: str  # of data/processed/data.json: the sources, the subset, the split
    images: int

    @classmethod
    def of(cls, data_summary: dict) -> ValidationSet:
        text = json.dumps(data_summary, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return cls(digest, int(data_summary["counts"]["val"]))


def logged_model_uri(run: Run) -> str:
    """The `models:/<id>` URI of the model the training run logged."""
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise PipelineError(
            f"MLflow run {run.info.run_id} ({run.info.run_name}) logged no model to register"
        )
    return f"models:/{outputs[-1].model_id}"


def version_tags(candidate: Candidate, run: Run, val_set: ValidationSet) -> dict[str, str]:
    """What a user filtering the registry needs: where the version came from."""
    experiment = run.data.tags.get("dvc.experiment") or os.environ.get("DVC_EXP_NAME")
    return {
        VAL_SET_TAG: val_set.digest,
        VAL_IMAGES_TAG: str(val_set.images),
        "workload": candidate.workload,
        "optimizer": candidate.optimizer,
        "setting": candidate.setting,
        "seed": str(candidate.seed),
        "learning_rate": repr(candidate.learning_rate),
        SELECTION_METRIC: repr(candidate.val_accuracy),
        "mlflow.run_id": run.info.run_id,
        "run_name": run.info.run_name,
        # "workspace": trained by a plain `dvc repro`, not inside a DVC experiment.
        "dvc.experiment": experiment or "workspace",
        "dvc.stage": run.data.tags.get("dvc.stage", ""),
        "git.commit": run.data.tags.get("mlflow.source.git.commit", ""),
    }


def existing_version(client: mlflow.MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of model ``name`` already made from ``run_id``, if any."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def current_champion(client: mlflow.MlflowClient, name: str) -> ModelVersion | None:
    """The version of model ``name`` the alias points to, or None before the first one."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in exc.message.lower():
            return None
        raise


def keeps_alias(current: ModelVersion, candidate: Candidate, val_set: ValidationSet) -> bool:
    """Whether the champion ``current`` stays: on the same validation set, when its accuracy
    is higher (a quick `dvc exp run -S train.epochs=1` must not dethrone a real one); on
    another, where the accuracies do not compare, when it was validated on more images (a
    `preprocess.subset: 10` run at 100% of one image must not block every real model)."""
    held = float(current.tags.get(SELECTION_METRIC, "nan"))
    if current.tags.get(VAL_SET_TAG) == val_set.digest:
        keeps = held > candidate.val_accuracy
        why = (f"its validation accuracy {held:.4f} beats this pipeline's best, "
               f"{candidate.val_accuracy:.4f}")  # fmt: skip
    else:
        images = int(current.tags.get(VAL_IMAGES_TAG, 0))
        keeps = images > val_set.images
        why = (f"it was validated on {images} images, this pipeline on {val_set.images} "
               "others: the accuracies do not compare")  # fmt: skip
    if keeps:
        log.warning(
            "@%s stays on %s version %s: %s. To move it anyway: MlflowClient()"
            ".set_registered_model_alias(%r, %r, <version>)",
            ALIAS, candidate.model_name, current.version, why, candidate.model_name, ALIAS,
        )  # fmt: skip
    return keeps


def register(
    candidate: Candidate, run: Run, val_set: ValidationSet
) -> tuple[ModelVersion, bool, ModelVersion]:
    """Register the candidate's model (unless a version from its run exists) and move the
    alias to it unless the current champion keeps it (``keeps_alias``). Return the version,
    whether it is new, and the version the alias points to afterwards."""
    client, name = mlflow.MlflowClient(), candidate.model_name
    version = existing_version(client, name, run.info.run_id)
    created = version is None
    if version is None:
        version = mlflow.register_model(
            logged_model_uri(run), name, tags=version_tags(candidate, run, val_set)
        )
    current = current_champion(client, name)
    if current is not None and int(current.version) == int(version.version):
        return version, created, current
    if current is not None and keeps_alias(current, candidate, val_set):
        return version, created, current
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version, created, client.get_model_version_by_alias(name, ALIAS)
