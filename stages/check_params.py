"""Stage `check_params`: validate the whole of params.yaml before any other stage runs.

Each stage checks the sections it reads, but only when it runs: a misspelled key in a
section no stale stage reads (`train.epoch: 5` while everything is up to date, a section
`trian:`) would pass unseen. This stage depends on params.yaml as a whole file, so any edit
reruns it, first: every other stage depends on its output, params.checked.

That output never changes (its text is fixed), so the stages after it rerun for the params
they read and nothing else: a comment edited in params.yaml reruns this stage alone.

    python -m stages.check_params     # what `dvc repro` runs after any edit of params.yaml
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import logging
from typing import Any

from mnist_optimizers import mlflow_store, stats
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import write_text_atomic
from mnist_optimizers.fit import validate_train
from mnist_optimizers.optimizers import build_optimizer, validate_compare, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import PARAMS_CHECKED_FILE
from mnist_optimizers.sections.download import validate_datasets, validate_download
from mnist_optimizers.sections.evaluate import validate_evaluate
from mnist_optimizers.sections.gd_variants import validate_gd
from mnist_optimizers.sections.preprocess import validate_preprocess
from mnist_optimizers.sections.trajectories import validate_trajectories
from mnist_optimizers.sections.tune import validate_tune
from mnist_optimizers.workloads import validate_workload, validate_workloads

log = logging.getLogger(__name__)

CHECKED = (
    "params.yaml passed every section's checks (stages/check_params.py). This text never\n"
    "changes, so that the stages after this one rerun only for the params they read.\n"
)


def check_params(params: dict[str, Any]) -> None:
    """Every section, as the stage that reads it checks it; every optimizer entry built by
    Keras, and each compared one at every learning rate of the tuning grid."""
    validate_download(params["download"])
    datasets = validate_datasets(params["datasets"])
    compared = validate_workloads(params["workloads"], params["compare_workloads"], datasets)
    for name in params["workloads"].keys() - {w.name for w in compared}:  # the catalog's others
        validate_workload(name, params["workloads"][name], datasets)
    validate_preprocess(params["preprocess"])
    validate_train(params["train"])
    mlflow_store.validate_mlflow(params["mlflow"])
    optimizers = validate_optimizer_names(params["optimizers"])
    compared = validate_compare(params["compare"], optimizers)
    validate_gd(params["gd_variants"], optimizers, params["workloads"])
    validate_trajectories(params["trajectories"], optimizers)
    validate_evaluate(params["evaluate"])
    tune = validate_tune(params["tune"])
    for name, spec in optimizers.items():
        build_optimizer(name, spec)
    for name in compared:
        for rate in stats.log_grid(tune.low, tune.high, tune.points):
            build_optimizer(name, optimizers[name] | {"learning_rate": rate})


def main(argv: list[str]) -> None:
    check_params(load_params())
    write_text_atomic(PARAMS_CHECKED_FILE, CHECKED)
    log.info("params.yaml: every section checked")


if __name__ == "__main__":
    run_stage(main)
