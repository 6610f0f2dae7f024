"""Fixtures: tiny MNIST-like IDX files the tests make themselves, params that point at them,
and a project folder per test with its own MLflow store."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import keras  # before any stage module: the suite runs on $KERAS_BACKEND's backend, not params.yaml's
import numpy as np
import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from mnist_optimizers import runtime
from mnist_optimizers.params import load_params, parse_yaml
from mnist_optimizers.paths import MNIST_FILES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = MNIST_FILES


# The modules that take longest, longest first (CI on a fresh 2-core machine): the test
# processes take whole modules in this order (pyproject: --dist loadscope
# --no-loadscope-reorder), so that none starts a long one near the end. The rest follow in
# file order. test_evaluate comes early: the process that takes it builds the evaluated
# template, which test_diverged, test_report and test_register would otherwise wait for.
SLOWEST_FIRST = [
    "test_pipeline",
    "test_parallel",
    "test_faults",
    "test_pipeline_changes",  # it waits for test_pipeline's `reproduced` at first
    "test_backends",  # the unit tests again on JAX, and an experiment on JAX
    "test_evaluate",
    "test_train",
    "test_team",
    "test_tune",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images a CNN can tell apart: a bright bar whose position encodes the label."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=False):
        image[2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images


def write_mirror(folder: Path, contents: dict[str, bytes]) -> dict[str, str]:
    """Gzip each file's content into ``folder``; return the SHA-256 of each content."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / name).write_bytes(gzip.compress(content, mtime=0))
    return {name: hashlib.sha256(content).hexdigest() for name, content in contents.items()}


def tiny_mnist_contents(n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, bytes]:
    """IDX contents of a tiny MNIST: ``n_train`` training and ``n_test`` test images."""
    rng = np.random.default_rng(seed)
    y_train = rng.integers(0, 10, n_train, dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test, dtype=np.uint8)
    return {
        TRAIN_IMAGES: idx_bytes(digit_images(y_train, rng)),
        TRAIN_LABELS: idx_bytes(y_train),
        TEST_IMAGES: idx_bytes(digit_images(y_test, rng)),
        TEST_LABELS: idx_bytes(y_test),
    }


def pytest_report_header() -> str:
    return f"keras backend: {keras.backend.backend()} (set $KERAS_BACKEND to run on another)"


@pytest.fixture(scope="session", autouse=True)
def backend_threads() -> None:
    """Size the backend's threads as a stage does, before any test runs an op: a process can
    size them only once, and the in-process stage tests expect the stages' setting."""
    os.environ.pop(runtime.JOBS_ENV, None)
    runtime.configure_threads()
    keras.ops.zeros(1)  # start the backend: from here on its threads are fixed for this process


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A local mirror folder holding a tiny MNIST, and the SHA-256 of each file."""
    folder = tmp_path_factory.mktemp("mirror")
    return folder, write_mirror(folder, tiny_mnist_contents())


# The workload the tests train (the tutorial's CNN): each test that adds one says so.
WORKLOAD = "mnist_cnn"


def tiny_params(sha256: dict[str, str]) -> dict[str, Any]:
    """The project's params.yaml, pointed at tiny data: 1 epoch, small batches."""
    params = copy.deepcopy(load_params(PROJECT_ROOT / "params.yaml"))
    params["datasets"]["mnist"] = {"mirrors": [], "sha256": dict(sha256)}
    params["compare_workloads"] = [WORKLOAD]
    params["train"]["epochs"] = 1
    params["train"]["batch_size"] = 32
    params["train"]["seeds"] = [42]
    params["train"]["backend"] = keras.backend.backend()
    params["tune"] |= {"low": 0.001, "high": 0.1, "points": 3, "images": 100, "epochs": 2}
    params["gd_variants"] |= {"images": 64, "epochs": 1, "mini_batch": 16}
    params["evaluate"]["batch_size"] = 64
    params["trajectories"]["steps"] = 20
    return params


def random_images(train: int, val: int) -> dict[str, np.ndarray]:
    """Seeded random 28x28 images and labels, split as the stages' data is: a model's input
    where what it learns does not matter."""
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((train, 28, 28, 1), dtype=np.float32),
        "y_train": rng.integers(0, 10, train),
        "x_val": rng.random((val, 28, 28, 1), dtype=np.float32),
        "y_val": rng.integers(0, 10, val),
    }


def write_params(folder: Path, params: dict[str, Any]) -> Path:
    """Write ``params`` as folder/params.yaml."""
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def set_key(params: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` (`tune.low`, `optimizers.adam.learning_rate`) in ``params``;
    a part that names an existing key with dots in it (`train-images-idx3-ubyte.gz`) is
    taken whole. For docs/errors.md's rows, which type a key as a user would in the file:
    DVC's override grammar (edit_params) cannot name a key with dots in it."""
    node, rest = params, key
    while True:
        if rest in node or "." not in rest:
            node[rest] = value
            return
        part = next(
            (p for p in sorted(node, key=len, reverse=True) if rest.startswith(f"{p}.")),
            rest.split(".")[0],
        )
        node = node.setdefault(part, {})
        rest = rest[len(part) + 1 :]


def edit_params(changes: dict[str, Any], folder: Path = Path(".")) -> dict[str, Any]:
    """Change folder/params.yaml as `dvc exp run -S` does (DVC's own apply_overrides): each
    dotted key of ``changes`` set to its value (`{"tune.low": 0.1, "compare": ["sgd"]}`).
    Return the params now in the file, as the stages read them."""
    path = folder / "params.yaml"
    apply_overrides(path, [f"++{key}={json.dumps(value)}" for key, value in changes.items()])
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))


def enter_project(patch: pytest.MonkeyPatch, root: Path, mirror: Path) -> None:
    """Work in ``root`` as a stage does: it is the working directory, MNIST comes from
    ``mirror``, MLflow logs to root/mlflow.db, and no DVC or MLflow variable of the
    developer's leaks in."""
    import mlflow

    patch.chdir(root)
    patch.setenv("MNIST_MIRROR", str(mirror))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    # MLflow's own choice for the process, which outranks the variable: a stage run in
    # process, or an earlier test, set it to another store.
    mlflow.set_tracking_uri(uri)
    for name in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_EXPERIMENT_NAME"):
        patch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_mirror) -> Path:
    """An empty project folder as the working directory, with tiny params, the tiny mirror
    in MNIST_MIRROR and its own SQLite MLflow store."""
    mirror, sha256 = tiny_mirror
    enter_project(monkeypatch, tmp_path, mirror)
    write_params(tmp_path, tiny_params(sha256))
    return tmp_path


# How long a test process waits for another to build a shared folder (the longest, the
# reproduced pipeline, takes about two minutes here).
TEMPLATE_WAIT_SECONDS = 900


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder ``name`` that ``build`` fills, built once for the whole test run: under
    xdist the first test process to need it builds it, under a file lock, in the folder all
    of them share; the others wait for it. Tests change copies of it, never the folder."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each process has its own basetemp below
        shared = shared.parent
    root, done = shared / name, shared / f"{name}.done"
    with filelock.FileLock(shared / f"{name}.lock", timeout=TEMPLATE_WAIT_SECONDS):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed midway
            root.mkdir()
            build(root)
            done.touch()
    return root


@pytest.fixture(scope="session")
def evaluated_template(
    tmp_path_factory: pytest.TempPathFactory, tiny_mirror: tuple[Path, dict[str, str]]
) -> Path:
    """A tiny pipeline run once for the whole test run, in process: 2 optimizers x 2 seeds,
    each at its default and its tuned rate, evaluated; and gd_variants. Tests use copies
    (``evaluated``)."""
    mirror, sha256 = tiny_mirror

    def build(root: Path) -> None:
        with pytest.MonkeyPatch.context() as patch:
            enter_project(patch, root, mirror)
            write_params(root, tiny_params(sha256))
            run_tiny_pipeline()

    return built_once(tmp_path_factory, "evaluated", build)


# The e2e tests' comparison: two optimizers, not the four of params.yaml: every stage kind,
# the tuned setting and the significance table are there, at half the stages (and time).
E2E_OPTIMIZERS = ["sgd", "adam"]


@pytest.fixture(scope="session")
def reproduced(
    tmp_path_factory: pytest.TempPathFactory, tiny_mirror: tuple[Path, dict[str, str]]
) -> tuple[Path, dict[str, str], str]:
    """The project in a git repo, with tiny params for E2E_OPTIMIZERS, after the real
    `dvc repro` (committed), built once for the whole test run; its environment and the
    command's output. Tests read it; a test that runs DVC or changes anything copies it
    (tests/cli.py: copy_repo)."""
    from .cli import check_no_processes_left, dvc, project_env, project_repo, run

    mirror, sha256 = tiny_mirror

    def build(folder: Path) -> None:
        root = folder / "project"
        env = project_repo(root, mirror, tiny_params(sha256) | {"compare": E2E_OPTIMIZERS})
        try:
            output = dvc(root, env, "repro")
            run(["git", "add", "-A"], root, env)
            run(["git", "commit", "-qm", "repro"], root, env)
        finally:
            check_no_processes_left(env)
        (folder / "repro.log").write_text(output, encoding="utf-8")

    folder = built_once(tmp_path_factory, "reproduced", build)
    root = folder / "project"
    return root, project_env(root, mirror), (folder / "repro.log").read_text(encoding="utf-8")


@pytest.fixture
def workspace(reproduced, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the reproduced project for one test to change, and its environment."""
    from .pipeline_runs import copy_for_a_test

    root, env, _ = reproduced
    yield from copy_for_a_test(root, env, tmp_path)


def run_tiny_pipeline(changes: dict[str, Any] | None = None) -> None:
    """In the project here, in process, the stages up to evaluate and gd_variants: 2
    optimizers x 2 seeds, each at its default and its tuned rate; ``changes`` to params."""
    import keras

    from stages import download, evaluate, gd_variants, preprocess, train, tune

    edit_params({"compare": ["sgd", "adam"], "train.seeds": [42, 43], "tune.images": 60}
                | (changes or {}))  # fmt: skip
    download.main([WORKLOAD])
    preprocess.main([WORKLOAD])
    for name in ("sgd", "adam"):
        tune.main([WORKLOAD, name])
        for seed in ("42", "43"):
            for flags in ([], ["--tuned"]):
                keras.backend.clear_session()  # as a stage's own process starts
                train.main([WORKLOAD, name, seed, *flags])
    evaluate.main([WORKLOAD])
    gd_variants.main([])


@pytest.fixture
def evaluated(
    evaluated_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_mirror
) -> Path:
    """A copy of the evaluated tiny pipeline as the working directory, its MLflow store
    (artifact paths moved to the copy) in MLFLOW_TRACKING_URI."""
    from .cli import replace_in_store

    root = tmp_path / "project"
    shutil.copytree(evaluated_template, root)
    replace_in_store(root / "mlflow.db", str(evaluated_template), str(root))
    # MLflow caches each run's artifact folder by run id, for the whole process: the copy's
    # runs have the template's ids, and would write into the template's folder.
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._artifact_repos_cache.clear()
    enter_project(monkeypatch, root, tiny_mirror[0])
    return root


@pytest.fixture
def processed(project: Path) -> Path:
    """The project after the download and preprocess stages ran on the tiny data."""
    from stages import download, preprocess

    download.main([WORKLOAD])
    preprocess.main([WORKLOAD])
    return project


def copy_project(dest: Path) -> None:
    """Copy the pipeline's tracked files (code, dvc.yaml, params, DVC config) into ``dest``."""
    for name in (
        "stages",
        "mnist_optimizers",
        "dvc.yaml",
        "params.yaml",
        ".dvcignore",
        ".gitignore",
    ):
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy2(PROJECT_ROOT / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    shutil.copytree(PROJECT_ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
