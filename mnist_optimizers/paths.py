"""Every path the pipeline reads or writes, and the name of one training run.

Each workload (params `workloads`) has its own folder in each of them: data/processed/mnist_mlp/,
models/mnist_mlp/adam-42.keras, reports/mnist_mlp/comparison.md; a workload's stages read and
write only its own, so adding or changing one reruns nothing of another.

Paths are relative to the working directory: DVC runs every stage from the project root
(or from the root of a temporary copy for `dvc exp run --temp` / `--queue`).
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
# Written by check_params once params.yaml passed; every stage depends on it (its text is fixed).
PARAMS_CHECKED_FILE = Path("data/params.checked")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
DATA_SUMMARY_NAME = "data.json"  # in each workload's processed folder
MODELS_DIR = Path("models")
TRAIN_METRICS_DIR = Path("metrics/train")
HISTORY_DIR = Path("metrics/history")
TUNE_DIR = Path("metrics/tune")
# The rate each search chose, alone: train_tuned depends on it, not on the whole search
# (seconds, run ids), so a search rerun that chooses the same rate trains nothing again.
TUNED_DIR = Path("metrics/tuned")
# The headline (`dvc metrics show`, `dvc exp show`): metrics/evaluate/<workload>.json, mean
# test accuracy per setting and optimizer; the rest (intervals, losses, seconds) in
# reports/workloads/<workload>/summary.json.
EVALUATE_METRICS_DIR = Path("metrics/evaluate")
REPORTS_DIR = Path("reports")
SUMMARY_NAME = "summary.json"
FIGURES_NAME = "figures"  # evaluate's figures
CONFUSION_NAME = "confusion"  # evaluate's confusion data, for `dvc plots`
RUNS_NAME = "runs.csv"  # one row per trained model, written by evaluate
REPORT_DIR = REPORTS_DIR / "report"  # the report stage's page and figures, across workloads
GD_VARIANTS_FILE = REPORTS_DIR / "gd_variants.csv"
TRAJECTORIES_DIR = REPORTS_DIR / "trajectories"
CHAMPION_NAME = "champion.json"  # register@<workload>'s, in the workload's reports folder
# Epoch checkpoints of interrupted trainings (train.resume): not DVC outputs, not in git.
CHECKPOINTS_DIR = Path(".checkpoints")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def run_key(optimizer: str, seed: int, tuned: bool = False) -> str:
    """The name of one training run in its workload's folders (models/mnist_cnn/adam-42.keras;
    models/mnist_cnn/adam-42-tuned.keras with the tuned rate)."""
    return f"{optimizer}-{seed}-tuned" if tuned else f"{optimizer}-{seed}"


def stage_item(workload: str, *parts: object) -> str:
    """A stage's item as DVC names it from its matrix: `mnist_cnn-adam-42` of
    `train@mnist_cnn-adam-42`, `mnist_cnn-adam` of `tune@mnist_cnn-adam`."""
    return "-".join(map(str, (workload, *parts)))


def raw_dir(workload: str) -> Path:
    return RAW_DIR / workload


def processed_dir(workload: str) -> Path:
    return PROCESSED_DIR / workload


def data_summary_file(workload: str) -> Path:
    return processed_dir(workload) / DATA_SUMMARY_NAME


WORKLOAD_REPORTS_DIR = REPORTS_DIR / "workloads"  # the report stage reads all of it


def reports_dir(workload: str) -> Path:
    """evaluate@<workload>'s tables and figures, and register@<workload>'s champion."""
    return WORKLOAD_REPORTS_DIR / workload


def runs_file(workload: str) -> Path:
    return reports_dir(workload) / RUNS_NAME


def evaluate_metrics_file(workload: str) -> Path:
    return EVALUATE_METRICS_DIR / f"{workload}.json"


def model_file(workload: str, key: str) -> Path:
    return MODELS_DIR / workload / f"{key}.keras"


def train_metrics_file(workload: str, key: str) -> Path:
    return TRAIN_METRICS_DIR / workload / f"{key}.json"


def history_file(workload: str, key: str) -> Path:
    return HISTORY_DIR / workload / f"{key}.csv"


def tune_file(workload: str, optimizer: str) -> Path:
    return TUNE_DIR / workload / f"{optimizer}.json"


def tuned_file(workload: str, optimizer: str) -> Path:
    return TUNED_DIR / workload / f"{optimizer}.json"
