"""Stage `register`: promote the best model to MLflow's model registry.

After evaluate, the model with the highest validation accuracy (never test accuracy: test
stays an unbiased estimate) among every optimizer, seed and setting in reports/runs.csv is
registered as `mnist-cnn`, and the alias `champion` is moved to it, unless the version the
alias holds has a higher validation accuracy. The version is tagged with its optimizer,
setting, seed, learning rate, validation accuracy, MLflow run and DVC experiment.
Registering the same run again adds no version: the existing one is reused.

    dvc repro register
    mlflow models serve -m models:/mnist-cnn@champion --env-manager local

It writes reports/champion.json: which run won, and the version the alias points to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from stages import tracking
from stages.common import (
    REPORTS_DIR,
    TRAIN_METRICS_DIR,
    PipelineError,
    read_json,
    run_key,
    run_stage,
    write_json_atomic,
)

MODEL_NAME = "mnist-cnn"
ALIAS = "champion"
RUNS_FILE = REPORTS_DIR / "runs.csv"
CHAMPION_FILE = REPORTS_DIR / "champion.json"
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


def best_candidate(runs: pd.DataFrame) -> Candidate:
    """The run with the highest validation accuracy; on a tie the first in the table's
    order (default before tuned, then `compare` order, then seed)."""
    missing = {"setting", "optimizer", "seed", "learning_rate", SELECTION_METRIC} - set(runs)
    if missing:
        raise PipelineError(f"{RUNS_FILE}: missing columns {', '.join(sorted(missing))}")
    if runs.empty or runs[SELECTION_METRIC].isna().all():
        raise PipelineError(f"{RUNS_FILE}: no run with a {SELECTION_METRIC} to choose from")
    row = runs.loc[runs[SELECTION_METRIC].idxmax()]
    return Candidate(
        optimizer=str(row["optimizer"]),
        seed=int(row["seed"]),
        setting=str(row["setting"]),
        learning_rate=float(row["learning_rate"]),
        val_accuracy=float(row[SELECTION_METRIC]),
    )


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


def champion(run_ids: dict[str, str], runs: pd.DataFrame) -> dict[str, Any]:
    """Choose the best run, register it, and describe the outcome for reports/champion.json."""
    candidate = best_candidate(runs)
    summary: dict[str, Any] = {"model": MODEL_NAME, "alias": ALIAS, **asdict(candidate)}
    run_id = run_ids.get(candidate.key)
    if not run_id:
        raise PipelineError(f"{TRAIN_METRICS_DIR / candidate.key}.json names no MLflow run")
    summary["mlflow_run_id"] = run_id
    uri = tracking.connect()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise tracking.TrackingError(f"MLflow tracking store {uri}: {exc.message}") from None
        # Trained elsewhere and restored from DVC's run cache: its run is in another store.
        log.warning(
            "%s: MLflow run %s is not in %s (trained against another tracking store?); "
            "not registering it. Point MLFLOW_TRACKING_URI at the store it was logged to.",
            candidate.key,
            run_id,
            uri,
        )
        return summary | {"registered": False}
    try:
        version, created, holder = register(candidate, run)
    except MlflowException as exc:
        raise tracking.TrackingError(f"MLflow model registry at {uri}: {exc.message}") from None
    log.info(
        "%s %s (validation accuracy %.4f) as %s version %s; @%s is version %s",
        "registered" if created else "already registered",
        candidate.key,
        candidate.val_accuracy,
        MODEL_NAME,
        version.version,
        ALIAS,
        holder.version,
    )
    return summary | {
        "registered": True,
        "version": int(version.version),
        "champion": int(holder.version) == int(version.version),
        "champion_version": int(holder.version),
        "model_uri": f"models:/{MODEL_NAME}@{ALIAS}",
    }


def main(argv: list[str]) -> None:
    if not RUNS_FILE.exists():
        raise PipelineError(f"{RUNS_FILE} is missing: run the evaluate stage first")
    runs = pd.read_csv(RUNS_FILE)
    keys = {run_key(str(r.optimizer), int(r.seed), r.setting == "tuned") for r in runs.itertuples()}
    run_ids = {k: read_json(TRAIN_METRICS_DIR / f"{k}.json").get("mlflow_run_id") for k in keys}
    write_json_atomic(CHAMPION_FILE, champion(run_ids, runs))


if __name__ == "__main__":
    run_stage(main)
