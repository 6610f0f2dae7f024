"""Every path the pipeline reads or writes, and the name of one training run.

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
DATA_SUMMARY_FILE = PROCESSED_DIR / "data.json"
MODELS_DIR = Path("models")
TRAIN_METRICS_DIR = Path("metrics/train")
HISTORY_DIR = Path("metrics/history")
TUNE_DIR = Path("metrics/tune")
# The rate each search chose, alone: train_tuned depends on it, not on the whole search
# (seconds, run ids), so a search rerun that chooses the same rate trains nothing again.
TUNED_RATE_DIR = Path("metrics/tuned_rate")
# The headline (`dvc metrics show`, `dvc exp show`): mean test accuracy per setting and
# optimizer; the rest (intervals, losses, seconds) in SUMMARY_FILE.
EVALUATE_METRICS_FILE = Path("metrics/evaluate.json")
SUMMARY_FILE = Path("reports/summary.json")
REPORTS_DIR = Path("reports")
FIGURES_DIR = REPORTS_DIR / "figures"  # evaluate's figures
CONFUSION_DIR = REPORTS_DIR / "confusion"  # evaluate's confusion data, for `dvc plots`
RUNS_FILE = REPORTS_DIR / "runs.csv"  # one row per trained model, written by evaluate
REPORT_DIR = REPORTS_DIR / "report"  # the report stage's page and figures
GD_VARIANTS_FILE = REPORTS_DIR / "gd_variants.csv"
TRAJECTORIES_DIR = REPORTS_DIR / "trajectories"
CHAMPION_FILE = REPORTS_DIR / "champion.json"
# Epoch checkpoints of interrupted trainings (train.resume): not DVC outputs, not in git.
CHECKPOINTS_DIR = Path(".checkpoints")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def run_key(optimizer: str, seed: int, tuned: bool = False) -> str:
    """The name of one training run, as DVC names its stage (`train@adam-42`) and as its
    files are named (models/adam-42.keras; models/adam-42-tuned.keras with the tuned rate)."""
    return f"{optimizer}-{seed}-tuned" if tuned else f"{optimizer}-{seed}"
