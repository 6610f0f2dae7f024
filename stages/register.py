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
from dataclasses import asdict
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mnist_optimizers import mlflow_store
from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import read_json, write_json_atomic
from mnist_optimizers.paths import CHAMPION_FILE, RUNS_FILE, TRAIN_METRICS_DIR, run_key
from mnist_optimizers.registry import ALIAS, MODEL_NAME, SELECTION_METRIC, Candidate, register

log = logging.getLogger(__name__)


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


def champion(run_ids: dict[str, str], runs: pd.DataFrame) -> dict[str, Any]:
    """Choose the best run, register it, and describe the outcome for reports/champion.json."""
    candidate = best_candidate(runs)
    summary: dict[str, Any] = {"model": MODEL_NAME, "alias": ALIAS, **asdict(candidate)}
    run_id = run_ids.get(candidate.key)
    if not run_id:
        raise PipelineError(f"{TRAIN_METRICS_DIR / candidate.key}.json names no MLflow run")
    summary["mlflow_run_id"] = run_id
    uri = mlflow_store.connect()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise mlflow_store.TrackingError(f"MLflow tracking store {uri}: {exc.message}") from None
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
        raise mlflow_store.TrackingError(f"MLflow model registry at {uri}: {exc.message}") from None
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
