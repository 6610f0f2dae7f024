"""MLflow: the tracking store, the experiment, runs that always end, and model logging.

By default runs go to a SQLite store, `mlflow.db` at the project root, with artifacts in
`mlartifacts/` beside it. The root is `$DVC_ROOT` when DVC sets it: `dvc exp run --temp`
and `--queue` run stages in a temporary copy of the repo but point `DVC_ROOT` at the
original, so their runs land in the same store. `MLFLOW_TRACKING_URI` overrides all of it.

SQLite takes one writer at a time. Two stages at once (`dvc queue start -j 2`) are safe:
the first to open a new store creates its tables while holding a lock file beside it
(`mlflow.db.lock`), since MLflow's schema migration is not safe to run twice at once, and
every writer waits up to SQLITE_TIMEOUT_SECONDS for the other's write to end instead of
failing with "database is locked". Many machines, or many writers, need the tracking server
(README: Team mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import urllib.parse
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from mnist_optimizers.cli import Terminated
from mnist_optimizers.errors import ParamsError, PipelineError, shown
from mnist_optimizers.params import check_keys
from mnist_optimizers.paths import PROCESSED_DIR

if TYPE_CHECKING:
    import keras
    import numpy as np

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
HEALTH_TIMEOUT_SECONDS = 5
HOST_TAG, PID_TAG = "pipeline.host", "pipeline.pid"
# A task of the cluster runner (mnist_optimizers/cluster_task.py) names itself in this
# variable; its runs carry it as a tag, so that the runs of a dead attempt can be ended.
CLUSTER_TASK_ENV, CLUSTER_TASK_TAG = "PIPELINE_CLUSTER_TASK", "pipeline.cluster_task"
# Where a training or search run trained: "CPU", or "GPU:0 (<model>, compute capability 9.0)".
DEVICE_TAG = "train.device"
# How long a SQLite writer waits for another's write before "database is locked".
SQLITE_TIMEOUT_SECONDS = 60
# The experiment's kind in MLflow 3: model training, not GenAI. (MLflow 3.17's UI opens on
# its GenAI overview all the same unless the browser chose "Model training": README, MLflow.)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The MLflow dataset context of each split a run saw: training and validation in training,
# test in evaluate.
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}

log = logging.getLogger(__name__)


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def validate_mlflow(section: Any) -> str:
    """Check the `mlflow` section; return the experiment name."""
    check_keys(section, ("experiment_name",), "mlflow", ("experiment_name",))
    name = section["experiment_name"]
    if not isinstance(name, str) or not name.strip():
        raise ParamsError(f"mlflow.experiment_name: expected a non-empty string, got {shown(name)}")
    return name


def project_root() -> Path:
    """The project root that holds the default store: `$DVC_ROOT` or the working directory."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, or the SQLite store at the project root as an absolute URI.
    A server URI's credentials are taken out of it (``move_credentials``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / STORE_FILE}"
    return move_credentials(uri)


def move_credentials(uri: str) -> str:
    """``uri`` without the `user:password@` of an http(s) URI: they go to
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (unless those are set), which
    MLflow sends as basic authentication. So neither MLflow's own lines ("View run at") nor
    any run, param, tag or message of the pipeline ever holds the password."""
    parts = urllib.parse.urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if parts.scheme not in ("http", "https") or not at:
        return uri
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(password))
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    os.environ["MLFLOW_TRACKING_URI"] = clean  # for MLflow, and the processes it starts
    return clean


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (query string dropped), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def with_sqlite_timeout(uri: str) -> str:
    """A SQLite URI whose connections wait for other writers (sqlite3's `timeout`), unless
    it sets a timeout of its own; any other URI unchanged."""
    if sqlite_path(uri) is None or "timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_SECONDS}"


def init_sqlite_store(uri: str) -> None:
    """Create or upgrade the tables of a SQLite store, one process at a time; a file that
    is not a store, or one this user cannot write, is named with what to do."""
    path = sqlite_path(uri)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            mlflow.MlflowClient(uri).search_experiments(max_results=1)  # migrates if needed
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking store {path}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 and SQLAlchemy errors, OS errors
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if "not a database" in reason or "malformed" in reason:
            hint = "it is damaged: move it away to start a new store, or restore a backup"
        elif "readonly" in reason or isinstance(exc, PermissionError):
            hint = "this user cannot write it or its folder: fix the permissions"
        else:
            hint = "check the file, or point MLFLOW_TRACKING_URI at another store"
        raise TrackingError(f"MLflow tracking store {path}: {reason}; {hint}") from None


# The URI schemes of MLflow's tracking stores (mlflow/tracking/_tracking_service/utils.py).
STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                 "databricks")  # fmt: skip


def check_scheme(uri: str) -> None:
    """A URI MLflow can log to, else a TrackingError naming $MLFLOW_TRACKING_URI."""
    scheme = urllib.parse.urlsplit(uri).scheme.partition("+")[0]  # postgresql+psycopg
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI: {shown(uri)} is not a tracking store MLflow knows; use "
            "http(s)://host:port (a tracking server), sqlite:///path/mlflow.db or "
            "postgresql://..., or unset it to log to mlflow.db here"
        )


def check_tracking_server(uri: str) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    hint = (
        "start the server, point MLFLOW_TRACKING_URI at a running one, "
        f"or unset it to log to the local store {STORE_FILE}"
    )
    try:
        user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
        response = requests.get(
            f"{uri.rstrip('/')}/health",
            timeout=HEALTH_TIMEOUT_SECONDS,
            auth=(user, password or "") if user else None,
        )
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({type(exc).__name__} on /health "
            f"within {HEALTH_TIMEOUT_SECONDS} s); {hint}"
        ) from None
    if response.status_code != 200:
        raise TrackingError(
            f"MLflow tracking server {uri} answered HTTP {response.status_code} on /health; {hint}"
        )


def connect() -> str:
    """Point MLflow at the tracking store, checked reachable; return its URI."""
    uri = with_sqlite_timeout(tracking_uri())
    check_scheme(uri)
    check_tracking_server(uri)
    init_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def setup_experiment(name: str) -> str:
    """Point MLflow at the tracking store and return the id of experiment ``name``
    (or `$MLFLOW_EXPERIMENT_NAME`), creating it (artifacts beside a local store) if needed."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or name
    uri = connect()
    client = mlflow.MlflowClient()
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted: "
                f"restore it (mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}, or in the UI), or set mlflow.experiment_name in "
                "params.yaml to a new name"
            )
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the kind was set
                client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                )
            return experiment.experiment_id
        location = None
        if sqlite_path(uri) is not None:
            location = (project_root() / ARTIFACTS_DIR).as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            # Another stage (`dvc queue start -j 2`) created it first.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking store {uri}: {exc.message}") from None


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to its DVC stage, git commit and DVC experiment, and to the
    process that logs it (so a later run can tell it was orphaned: end_orphaned_runs)."""
    tags = {
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = exp_name
    if task := os.environ.get(CLUSTER_TASK_ENV):
        tags[CLUSTER_TASK_TAG] = task
    return tags


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process of this machine running a pipeline stage."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the number may have been reused by another program since
        return b"stages." in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def end_orphaned_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED the runs of ``stage`` still RUNNING whose process on this machine is gone
    (killed with SIGKILL, or the machine lost power): nothing else will ever end them.
    Runs of other machines, or of live processes (a parallel experiment), are left alone.
    Return the ids of the runs ended."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        f"tags.`dvc.stage` = '{stage}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    ended = []
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if process_alive(int(tags[PID_TAG])):
            continue
        client.set_tag(run.info.run_id, "pipeline.end_reason", "its process died (found later)")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        ended.append(run.info.run_id)
        log.warning(
            "MLflow run %s (%s) was left RUNNING by process %s, which is gone: marked FAILED",
            run.info.run_id, run.info.run_name, tags[PID_TAG],
        )  # fmt: skip
    return ended


def _end_run_quietly(status: RunStatus) -> None:
    """End the active run (MLflow drops it from its stack first); if the store itself is
    what failed, the run stays RUNNING there, and the next run of the stage ends it."""
    try:
        mlflow.end_run(RunStatus.to_string(status))
    except Exception:  # noqa: BLE001 - the store is down: nothing more can be recorded
        log.warning("could not mark the MLflow run %s", RunStatus.to_string(status))


@contextlib.contextmanager
def tracked_run(
    experiment_id: str, run_name: str, tags: dict[str, str], nested: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run (a child of the active one when ``nested``); end it FINISHED,
    KILLED on Ctrl-C or SIGTERM, or FAILED on any error. A top-level run first ends the
    orphaned runs of its stage. If the store stops answering mid-run, the stage fails with
    a TrackingError: it never succeeds with its run missing from MLflow."""
    if not nested:
        end_orphaned_runs(experiment_id, tags["dvc.stage"])
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested)
    try:
        yield run
    except (KeyboardInterrupt, Terminated):
        _end_run_quietly(RunStatus.KILLED)
        raise
    except MlflowException as exc:
        _end_run_quietly(RunStatus.FAILED)
        raise TrackingError(
            f"MLflow tracking store {mlflow.get_tracking_uri()} failed during run "
            f"{run.info.run_id} ({run_name}): {exc.message}; nothing was written. "
            "Rerun when it answers, or point MLFLOW_TRACKING_URI elsewhere."
        ) from None
    except BaseException:
        _end_run_quietly(RunStatus.FAILED)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


class KerasFlavor:
    """`mlflow.keras`, with the model directory created before MLflow writes the input
    example into it (mlflow.keras.log_model fails otherwise: mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_requirements() -> list[str]:
    """Pinned requirements for the logged model, without MLflow's slow inference subprocess."""
    backend = "tensorflow"
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            backend = f"{dist}=={metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    return [f"mlflow=={mlflow.__version__}", f"keras=={metadata.version('keras')}", backend]


def log_model(model: keras.Model, example: np.ndarray) -> None:
    """Log ``model`` to the active run as `model/`, with its signature and an input example.
    MLflow checks the example by predicting it with Keras' default verbosity: its progress
    bars are kept off the log unless stdout is a terminal."""
    import keras
    from mlflow.models import infer_signature

    bars = sys.stdout.isatty()
    if not bars:
        keras.utils.disable_interactive_logging()  # progress lines go to absl's log instead
    try:
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
    finally:
        if not bars:
            keras.utils.enable_interactive_logging()


def datasets(data: dict[str, np.ndarray], data_summary: dict[str, Any]) -> list[tuple[Any, str]]:
    """Each split in ``data`` (arrays keyed `x_train`, `y_train`, ... as
    `files.load_training_data` returns them) as an MLflow dataset and its context, for the
    run's Dataset column: named by split and image count (`mnist-train-54000`), its source
    the processed file, its digest that of the downloaded files' SHA-256, the preprocessing
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
        source = local._resolve((project_root() / PROCESSED_DIR / f"x_{split}.npy").as_uri())
        dataset = from_numpy(
            x, targets=y, source=source, name=f"mnist-{split}-{len(x)}", digest=digest
        )
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
