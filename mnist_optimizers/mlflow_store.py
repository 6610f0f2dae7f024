"""The MLflow tracking store: where runs go, its credentials, its health, the experiment.

By default runs go to a SQLite store, `mlflow.db` at the project root, with artifacts in
`mlartifacts/` beside it. The root is `$DVC_ROOT` when DVC sets it: `dvc exp run --temp`
and `--queue` run stages in a temporary copy of the repo but point `DVC_ROOT` at the
original, so their runs land in the same store. `MLFLOW_TRACKING_URI` overrides all of it.

SQLite takes one writer at a time. Several stages at once (DVC's queue, the parallel runner
on one machine) are safe: the first to open a new store creates its tables while holding a
lock file beside it (`mlflow.db.lock`), since MLflow's schema migration is not safe to run
twice at once, and every writer waits up to SQLITE_TIMEOUT_SECONDS for the other's write to
end instead of failing with "database is locked". Many machines need the tracking server
(docs/team.md).
"""

from __future__ import annotations

import fcntl
import os
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException

from mnist_optimizers.errors import ParamsError, PipelineError, shown
from mnist_optimizers.params import check_keys

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
HEALTH_TIMEOUT_SECONDS = 5
# How long a SQLite writer waits for another's write before "database is locked".
SQLITE_TIMEOUT_SECONDS = 60
# The experiment's kind in MLflow 3: model training, not GenAI. (MLflow 3.17's UI opens on
# its GenAI overview all the same unless the browser chose "Model training": docs/mlflow.md.)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def validate_mlflow(section: Any) -> str:
    """Check the `mlflow` section; return the experiment name."""
    check_keys(section, ("experiment_name",), "mlflow", ("experiment_name",))
    return check_experiment_name(section["experiment_name"], "mlflow.experiment_name")


def check_experiment_name(name: Any, where: str) -> str:
    """A name a person can read in the MLflow UI: not blank, no space at either end, no
    control or invisible character (NUL, a newline, a right-to-left mark)."""
    if not isinstance(name, str) or not name.strip():
        raise ParamsError(f"{where}: expected a non-empty string, got {shown(name)}")
    if name != name.strip():
        raise ParamsError(f"{where}: {name!r} begins or ends with a space; remove it")
    hidden = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")]
    if hidden:
        raise ParamsError(
            f"{where}: {name!r} holds a control or invisible character "
            f"(U+{ord(hidden[0]):04X}), which the MLflow UI shows blank or garbled; "
            "use printable characters"
        )
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
    if variable := os.environ.get("MLFLOW_EXPERIMENT_NAME"):  # set but empty: unset
        name = check_experiment_name(variable, "$MLFLOW_EXPERIMENT_NAME")
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


def client() -> mlflow.MlflowClient:
    """A client of the store this process logs to (``tracking_uri``)."""
    return mlflow.MlflowClient(tracking_uri())
