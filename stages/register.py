"""Stage `register@<workload>`: promote the workload's best model to MLflow's model registry.

After evaluate, the model with the highest validation accuracy (never test accuracy: test
stays an unbiased estimate) among every optimizer, seed and setting in
reports/workloads/<workload>/runs.csv whose MLflow run FINISHED is registered under the workload's
name (`mnist-cnn` for mnist_cnn, `mnist-mlp`), and the alias `champion` is moved
to it, unless the version the alias holds has a higher validation accuracy on the same
validation set (on another, the one validated on more images keeps it). The accuracy in
runs.csv, the run's metrics file and its MLflow run must agree. The version is tagged with
its optimizer, setting, seed, learning rate, validation accuracy and set, MLflow run and DVC
experiment.
Registering the same run again adds no version: the existing one is reused.

    dvc repro register@mnist_cnn
    mlflow models serve -m models:/mnist-cnn@champion --env-manager local

It writes reports/workloads/<workload>/champion.json: which run won, and the version the alias
points to.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mnist_optimizers import mlflow_store
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import read_json, write_json_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import (CHAMPION_NAME, data_summary_file, reports_dir, run_key,
                                    runs_file, train_metrics_file)  # fmt: skip
from mnist_optimizers.registry import (ALIAS, SELECTION_METRIC, Candidate, ValidationSet,
                                       model_name, register)  # fmt: skip

log = logging.getLogger(__name__)


def ranked_candidates(workload: str, runs: pd.DataFrame) -> list[Candidate]:
    """Every run with a validation accuracy, best first; on a tie the first in the table's
    order (default before tuned, then `compare` order, then seed)."""
    missing = {"setting", "optimizer", "seed", "learning_rate", SELECTION_METRIC} - set(runs)
    if missing:
        raise PipelineError(
            f"{runs_file(workload)}: missing columns {', '.join(sorted(missing))}"
        )
    ranked = runs.dropna(subset=[SELECTION_METRIC]).sort_values(
        SELECTION_METRIC, ascending=False, kind="stable"
    )
    if ranked.empty:
        raise PipelineError(
            f"{runs_file(workload)}: no run with a {SELECTION_METRIC} to choose from"
        )
    return [
        Candidate(
            workload=workload,
            optimizer=str(row["optimizer"]),
            seed=int(row["seed"]),
            setting=str(row["setting"]),
            learning_rate=float(row["learning_rate"]),
            val_accuracy=float(row[SELECTION_METRIC]),
        )
        for _, row in ranked.iterrows()
    ]


def check_agrees(candidate: Candidate, metrics: dict[str, Any], run: Run) -> None:
    """The validation accuracy reports/runs.csv, the run's metrics file and its MLflow run
    give must be one number: else the files do not belong together."""
    path = train_metrics_file(candidate.workload, candidate.key)
    values = {
        str(runs_file(candidate.workload)): candidate.val_accuracy,
        str(path): metrics.get(SELECTION_METRIC),
        f"MLflow run {run.info.run_id}": run.data.metrics.get(SELECTION_METRIC),
    }
    if len({repr(v) for v in values.values()}) > 1:
        said = "; ".join(f"{where}: {value!r}" for where, value in values.items())
        raise PipelineError(
            f"{candidate.key}: the {SELECTION_METRIC} of its files and of its MLflow run "
            f"differ ({said}): they do not belong together; rerun the stages that wrote "
            f"them (dvc repro --force {run.data.tags.get('dvc.stage')} "
            f"evaluate@{candidate.workload})"
        )


def fetch_run(client: mlflow.MlflowClient, uri: str, run_id: str) -> Run | None:
    """The MLflow run, or None where this store does not hold it."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise mlflow_store.TrackingError(
                f"MLflow tracking store {uri}: {exc.message}"
            ) from None
        return None


def champion(
    workload: str, metrics: dict[str, dict[str, Any]], runs: pd.DataFrame,
    val_set: ValidationSet,
) -> dict[str, Any]:  # fmt: skip
    """Register the best run of ``workload`` whose MLflow run FINISHED (``metrics``: each
    run's metrics file, by key) and describe the outcome for its champion.json."""
    uri = mlflow_store.connect()
    client = mlflow.MlflowClient()
    candidates = ranked_candidates(workload, runs)
    name = model_name(workload)
    for candidate in candidates:
        summary: dict[str, Any] = {"model": name, "alias": ALIAS, **asdict(candidate)}
        run_id = metrics.get(candidate.key, {}).get("mlflow_run_id")
        if not run_id:
            raise PipelineError(
                f"{train_metrics_file(workload, candidate.key)} names no MLflow run"
            )
        summary["mlflow_run_id"] = run_id
        run = fetch_run(client, uri, run_id)
        if run is None:  # trained elsewhere and restored from DVC's run cache
            log.warning(
                "%s: MLflow run %s is not in %s (trained against another tracking store?); "
                "not registering it. Point MLFLOW_TRACKING_URI at the store it was logged to.",
                candidate.key, run_id, uri,
            )  # fmt: skip
            return summary | {"registered": False}
        if run.info.status != "FINISHED":
            log.warning(
                "%s: its MLflow run %s ended %s: not a champion", candidate.key, run_id,
                run.info.status,
            )  # fmt: skip
            continue
        check_agrees(candidate, metrics[candidate.key], run)
        return summary | registered(candidate, run, val_set, uri)
    log.warning("no run of this pipeline FINISHED in MLflow: nothing registered")
    return {"model": name, "alias": ALIAS, "registered": False}


def registered(
    candidate: Candidate, run: Run, val_set: ValidationSet, uri: str
) -> dict[str, Any]:
    """Register ``candidate``; what champion.json says of it."""
    try:
        version, created, holder = register(candidate, run, val_set)
    except MlflowException as exc:
        raise mlflow_store.TrackingError(f"MLflow model registry at {uri}: {exc.message}") from None
    log.info(
        "%s %s (validation accuracy %.4f) as %s version %s; @%s is version %s",
        "registered" if created else "already registered", candidate.key,
        candidate.val_accuracy, candidate.model_name, version.version, ALIAS, holder.version,
    )  # fmt: skip
    return {
        "registered": True,
        "version": int(version.version),
        "champion": int(holder.version) == int(version.version),
        "champion_version": int(holder.version),
        "model_uri": f"models:/{candidate.model_name}@{ALIAS}",
    }


def main(argv: list[str]) -> None:
    (workload,) = stage_args("register", argv, ("workload",), load_params())
    if not runs_file(workload).exists():
        raise PipelineError(
            f"{runs_file(workload)} is missing: run its evaluate stage first "
            f"(dvc repro evaluate@{workload})"
        )
    runs = pd.read_csv(runs_file(workload))
    keys = {run_key(str(r.optimizer), int(r.seed), r.setting == "tuned") for r in runs.itertuples()}
    metrics = {k: read_json(train_metrics_file(workload, k), "mlflow_run_id") for k in keys}
    val_set = ValidationSet.of(read_json(data_summary_file(workload)))
    out = reports_dir(workload) / CHAMPION_NAME
    write_json_atomic(out, champion(workload, metrics, runs, val_set))


if __name__ == "__main__":
    run_stage(main)
