"""MLflow's model registry: register a trained model as `mnist-cnn` and keep the alias
`champion` on the best one by validation accuracy (never test accuracy: test stays an
unbiased estimate)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import run_key

MODEL_NAME = "mnist-cnn"
ALIAS = "champion"
SELECTION_METRIC = "val_accuracy"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One trained model: which run of the pipeline, and its validation accuracy."""

    optimizer: str
    seed: int
    setting: str  # "default" or "tuned" learning rate
    learning_rate: float
    val_accuracy: float

    @property
    def key(self) -> str:
        return run_key(self.optimizer, self.seed, self.setting == "tuned")


def logged_model_uri(run: Run) -> str:
    """The `models:/<id>` URI of the model the training run logged."""
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise PipelineError(
            f"MLflow run {run.info.run_id} ({run.info.run_name}) logged no model to register"
        )
    return f"models:/{outputs[-1].model_id}"


def version_tags(candidate: Candidate, run: Run) -> dict[str, str]:
    """What a user filtering the registry needs: where the version came from."""
    experiment = run.data.tags.get("dvc.experiment") or os.environ.get("DVC_EXP_NAME")
    return {
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


def existing_version(client: mlflow.MlflowClient, run_id: str) -> ModelVersion | None:
    """The version of MODEL_NAME already made from ``run_id``, if any."""
    versions = client.search_model_versions(f"name = '{MODEL_NAME}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def current_champion(client: mlflow.MlflowClient) -> ModelVersion | None:
    """The version the alias points to, or None before the first registration."""
    try:
        return client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in exc.message.lower():
            return None
        raise


def register(candidate: Candidate, run: Run) -> tuple[ModelVersion, bool, ModelVersion]:
    """Register the candidate's model (unless a version from its run exists) and move the
    alias to it unless the current champion has a higher validation accuracy (a quick
    `dvc exp run -S train.epochs=1` must not dethrone a real one). Return the version,
    whether it is new, and the version the alias points to afterwards."""
    client = mlflow.MlflowClient()
    version = existing_version(client, run.info.run_id)
    created = version is None
    if version is None:
        version = mlflow.register_model(
            logged_model_uri(run), MODEL_NAME, tags=version_tags(candidate, run)
        )
    current = current_champion(client)
    if current is not None and int(current.version) == int(version.version):
        return version, created, current
    if current is not None:
        held = float(current.tags.get(SELECTION_METRIC, "nan"))
        if held > candidate.val_accuracy:
            log.warning(
                "@%s stays on %s version %s: its validation accuracy %.4f beats this "
                "pipeline's best, %.4f. To move it anyway: MlflowClient()"
                ".set_registered_model_alias(%r, %r, %s)",
                ALIAS, MODEL_NAME, current.version, held, candidate.val_accuracy,
                MODEL_NAME, ALIAS, version.version,
            )  # fmt: skip
            return version, created, current
    client.set_registered_model_alias(MODEL_NAME, ALIAS, version.version)
    return version, created, client.get_model_version_by_alias(MODEL_NAME, ALIAS)
