"""End to end: the real `dvc repro` and `dvc exp run` in a temporary git repo, on tiny data,
asserting what a user would look at: dvc.lock, metrics, reports, plots, and MLflow.

The pipeline is reproduced once for the whole test run (conftest's `reproduced`); tests that
only read it share it, and each test that runs DVC or changes a repo gets its own copy of it
(`workspace`), so that no test depends on another having run, or on their order. What a
change to the reproduced pipeline reruns is tests/test_pipeline_changes.py.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mnist_optimizers.parallel_task import stages_run

from . import servers
from .cli import check_no_processes_left, copy_repo, dvc, run
from .conftest import WORKLOAD, edit_params
from .pipeline_runs import (
    AFTER_TRAINING,
    DATA,
    OPTIMIZERS,
    TRAINING,
    client_for,
    copy_for_a_test,
    model_stages_run,
    runs_by_name,
    runs_by_name_or_empty,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def adam_lr(
    reproduced, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, str], str]]:
    """A copy of the reproduced project in which `dvc exp run -n adam-lr` changed Adam's
    learning rate to 0.002 in the workspace; its environment and the command's output.
    Tests that change it take their own copy (`copy_repo`)."""
    root, env, _ = reproduced
    copy = tmp_path_factory.mktemp("adam-lr") / "project"
    env = copy_repo(root, copy, env)
    output = dvc(
        copy, env, "exp", "run", "-S", "optimizers.adam.learning_rate=0.002", "-n", "adam-lr"
    )
    yield copy, env, output
    check_no_processes_left(env)


@pytest.fixture
def adam_lr_workspace(adam_lr, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the project in which the experiment `adam-lr` ran."""
    root, env, _ = adam_lr
    yield from copy_for_a_test(root, env, tmp_path)


def test_dvc_repro_runs_every_stage(reproduced) -> None:
    root, _, output = reproduced
    assert {"trajectories", "check_params"} <= set(stages_run(output))
    ran = model_stages_run(output)
    assert ran[:2] == DATA and ran[-3:] == AFTER_TRAINING
    assert sorted(ran[2:-3]) == sorted(TRAINING)
    # Each optimizer's grid comes before the runs that train its best rate.
    for name in OPTIMIZERS:
        assert ran.index(f"tune@{WORKLOAD}-{name}") < ran.index(f"train_tuned@{WORKLOAD}-{name}-42")
    # The commands carry no item: DVC's stage name gives it (`tune@mnist_cnn-adam`,
    # `train@mnist_cnn-adam-42`).
    assert "tune@mnist_cnn-adam: best lr=" in output and "train@mnist_cnn-adam-42: val_accuracy" in output
    # Every stage that trains sized TensorFlow's threads before TensorFlow started (the tune
    # stage once built its optimizers first, and trained with TensorFlow's defaults).
    assert "TensorFlow already started" not in output
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted([*ran, "trajectories", "check_params"])
    assert lock["stages"]["train@mnist_cnn-adam-42"]["params"]["params.yaml"]["optimizers.adam"] == {
        "learning_rate": 0.001
    }


def test_mlflow_holds_one_complete_run_per_training(reproduced) -> None:
    """One MLflow run per training configuration: a tuned rate equal to the default one
    reuses the default run (tagged for both settings) instead of training it again."""
    root, _, _ = reproduced
    runs = runs_by_name(root)
    trained = []
    for n in OPTIMIZERS:
        default = json.loads((root / "metrics" / "train" / WORKLOAD / f"{n}-42.json").read_text())
        tuned = json.loads((root / "metrics" / "train" / WORKLOAD / f"{n}-42-tuned.json").read_text())
        reused = tuned.get("reused") == f"{n}-42"
        assert reused == (tuned["learning_rate"] == default["learning_rate"]), (default, tuned)
        assert (tuned["mlflow_run_id"] == default["mlflow_run_id"]) == reused
        assert (f"{n}-42-tuned" in runs) == (not reused)
        trained += [f"{n}-42"] + ([] if reused else [f"{n}-42-tuned"])
    configurations = [runs[name][0].data.tags["configuration"] for name in trained]
    assert len(set(configurations)) == len(trained)
    client = client_for(root)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    for name in trained:
        (r,) = runs[name]
        tuned_run = name.endswith("-tuned")
        stage = f"train_tuned@{WORKLOAD}-{name[:-6]}" if tuned_run else f"train@{WORKLOAD}-{name}"
        assert r.info.status == "FINISHED" and r.data.tags["dvc.stage"] == stage
        assert r.data.tags["seed"] == "42" and r.data.tags["workload"] == WORKLOAD
        assert r.data.params["workload"] == WORKLOAD
        reused = f"{name}-tuned" not in runs and not tuned_run
        assert r.data.tags["default_setting"] == str(not tuned_run).lower()
        assert r.data.tags["tuned_setting"] == str(tuned_run or reused).lower()
        assert r.data.tags["mlflow.source.git.commit"]
        assert "optimizer.learning_rate" in r.data.params and r.data.params["train.epochs"] == "1"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [1]
        assert "test_accuracy" in r.data.metrics
        # The artifacts live beside mlflow.db, not in a relative ./mlruns.
        assert r.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"evaluation", "comparison", "report"} <= artifacts
        assert mlflow.keras.load_model(f"runs:/{r.info.run_id}/model").output_shape == (None, 10)
    assert not (root / "mlruns").exists()


def test_the_served_champion_predicts_real_test_images(reproduced) -> None:
    """`mlflow models serve` of the @champion alias answers with the predictions of the model
    file the pipeline trained for the run reports/champion.json names, and they are right far
    above chance (10 classes). Its exact accuracy depends on the CPU's arithmetic (18 or 19 of
    these 20 on the machines seen), so the check is against the model itself."""
    import keras

    from mnist_optimizers.paths import MODELS_DIR, run_key

    root, env, _ = reproduced
    x_test = np.load(root / "data" / "processed" / WORKLOAD / "x_test.npy")[:20]
    y_test = np.load(root / "data" / "processed" / WORKLOAD / "y_test.npy")[:20]
    champion = json.loads((root / "reports" / "workloads" / WORKLOAD / "champion.json").read_text())
    key = run_key(champion["optimizer"], champion["seed"], champion["setting"] == "tuned")
    expected = keras.models.load_model(root / MODELS_DIR / WORKLOAD / f"{key}.keras").predict(
        x_test, verbose=0
    )
    port = servers.free_port()
    serve = [
        str(Path(sys.executable).parent / "mlflow"), "models", "serve",
        "-m", "models:/mnist-cnn@champion", "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    serve_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    url = f"http://127.0.0.1:{port}"
    with servers.server(serve, f"{url}/ping", root.parent / "serve.log", serve_env, timeout=120):
        response = requests.post(
            f"{url}/invocations", json={"inputs": x_test.tolist()}, timeout=120
        )
    assert response.status_code == 200, response.text
    probabilities = np.array(response.json()["predictions"])
    assert probabilities.shape == (20, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    correct = int((probabilities.argmax(axis=1) == y_test).sum())
    assert correct >= 15, f"{correct}/20 test images right"


def test_each_search_is_a_parent_run_with_one_child_per_rate(reproduced) -> None:
    root, _, _ = reproduced
    runs = runs_by_name(root)
    for name in OPTIMIZERS:
        (parent,) = runs[f"tune {name}"]
        best = parent.data.metrics["best_learning_rate"]
        children = [
            r
            for rs in runs.values()
            for r in rs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        ]
        children.sort(key=lambda r: float(r.data.params["optimizer.learning_rate"]))
        rates = [float(r.data.params["optimizer.learning_rate"]) for r in children]
        assert rates == pytest.approx([0.001, 0.01, 0.1])
        assert all(r.info.status == "FINISHED" for r in children)
        # The best rate is the complete (not pruned) child with the highest validation
        # accuracy (a tie: the smaller rate), and the tuned run trained with it.
        complete = [r for r in children if r.data.tags["pruned"] == "false"]
        assert all(r.data.metrics["epochs_reached"] == 2 for r in complete)
        top = max(complete, key=lambda r: r.data.metrics["val_accuracy"])
        assert float(top.data.params["optimizer.learning_rate"]) == pytest.approx(best)
        tuned = json.loads((root / "metrics" / "train" / WORKLOAD / f"{name}-42-tuned.json").read_text())
        assert tuned["learning_rate"] == pytest.approx(best, rel=1e-6)


def test_report_page_holds_both_tables_and_every_figure(reproduced) -> None:
    root, _, _ = reproduced
    page = (root / "reports" / "report" / "report.html").read_text()
    for name in OPTIMIZERS:
        assert f"<td>{name}</td>" in page
    assert page.count('src="data:image/png;base64,') >= 5
    markdown = (root / "reports" / "report" / "report.md").read_text()
    assert "tuned" in markdown.lower() and "gradient-descent variants" in markdown.lower()
    variants = pd.read_csv(root / "reports" / "gd_variants.csv")
    assert set(variants["variant"]) == {"batch", "stochastic", "mini-batch"}


def test_metrics_table_and_plots_are_there_for_a_user(workspace, tmp_path: Path) -> None:
    root, env = workspace
    metrics = json.loads(dvc(root, env, "metrics", "show", "--json"))
    (workspace,) = metrics.values()  # keyed by revision: "" (DVC 3.67) or "workspace"
    shown = workspace["data"]["metrics/evaluate/mnist_cnn.json"]["data"]
    # The headline alone: mean test accuracy (%) per setting and optimizer.
    assert {setting: sorted(by_name) for setting, by_name in shown.items()} == {
        "default": sorted(OPTIMIZERS),
        "tuned": sorted(OPTIMIZERS),
    }
    assert all(0 <= value <= 100 for by_name in shown.values() for value in by_name.values())
    table = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "comparison.csv")
    default = table[table["setting"] == "default"]
    assert list(default["optimizer"]) == OPTIMIZERS
    tutorial = {"sgd": 96.50, "adagrad": 89.28, "adam": 98.97, "rmsprop": 98.95}
    assert list(default["reference_val_accuracy_%"]) == [tutorial[n] for n in OPTIMIZERS]
    dvc(root, env, "plots", "show", "-o", str(tmp_path / "plots"))  # not into the shared repo
    page = (tmp_path / "plots" / "index.html").read_text()
    for name in OPTIMIZERS:
        assert f'"optimizer": "{name}"' in page
    assert f"{WORKLOAD}: validation accuracy per epoch" in page and "confusion" in page


def test_changing_one_learning_rate_reruns_only_that_optimizer(adam_lr) -> None:
    root, _, output = adam_lr
    # Adam's entry is also its grid's and its tuned runs' definition, and its 2-D paths'.
    assert stages_run(output)[0] == "check_params" and "trajectories" in stages_run(output)
    assert model_stages_run(output) == [
        "train@mnist_cnn-adam-42",
        "tune@mnist_cnn-adam",
        "train_tuned@mnist_cnn-adam-42",
        *AFTER_TRAINING,
    ]
    adam_runs = runs_by_name(root)["adam-42"]
    assert len(adam_runs) == 2
    assert adam_runs[-1].data.params["optimizer.learning_rate"] == "0.002"
    assert adam_runs[-1].data.tags["dvc.experiment"] == "adam-lr"


def readme_exp_show() -> list[str]:
    """The `dvc exp show` line the README documents, as arguments."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("dvc exp show")]
    return shlex.split(line.split("#")[0])


def test_dvc_exp_show_with_the_readme_options_is_a_table_a_person_reads(adam_lr) -> None:
    """`dvc exp show` as the README gives it: the experiment's changed learning rate and the
    headline accuracies it moved, no dependency hash, and a table that fits 200 columns
    (without the options: every param of the catalog and a hash per dependency)."""
    root, env, _ = adam_lr
    command = readme_exp_show()
    assert command[:3] == ["dvc", "exp", "show"]
    table = pd.read_csv(io.StringIO(dvc(root, env, *command[1:], "--csv")))
    assert not [c for c in table.columns if "/" in c], list(table.columns)
    (row,) = table[table["Experiment"] == "adam-lr"].to_dict("records")
    assert row["optimizers.adam.learning_rate"] == 0.002
    everything = pd.read_csv(io.StringIO(dvc(root, env, "exp", "show", "--csv")))
    assert len(everything.columns) > 5 * len(table.columns)
    # Every param and headline metric that differs between the rows is there, and only those.
    headline = [c for c in everything if c.startswith(("default.", "tuned.", "optimizers."))]
    differs = {c for c in headline if everything[c].astype(str).nunique() > 1}
    assert "optimizers.adam.learning_rate" in differs
    assert differs == {c for c in table if c in headline}, list(table.columns)
    wide = env | {"COLUMNS": "1000"}  # so that DVC draws the whole table, folding nothing
    shown = dvc(root, wide, *command[1:], "--no-pager")
    assert max(len(line) for line in shown.splitlines()) <= 200, shown
    assert "…" not in shown and "adam-lr" in shown


def test_a_second_clone_takes_results_from_the_dvc_remote_and_trains_nothing(
    adam_lr_workspace, tmp_path: Path
) -> None:
    """Team storage: one clone pushes its data, models and run cache to a DVC remote; a
    second clone pulls them and `dvc repro` trains nothing, for the committed params and
    for params that only the first clone's experiments ran."""
    root, env = adam_lr_workspace
    remote = str(tmp_path / "dvc-remote")  # a local folder here; S3 or SSH for a team (README)
    # Each clone's own config (.dvc/config.local): `git checkout` below leaves it alone.
    dvc(root, env, "remote", "add", "--local", "--default", "shared", remote)
    # The workspace holds an experiment never committed (adam at 0.002): its outputs...
    dvc(root, env, "push", "--run-cache")
    # ...and those of the committed results.
    run(["git", "checkout", "-q", "--", "."], root, env)
    dvc(root, env, "checkout")
    assert run(["git", "status", "--porcelain"], root, env) == ""
    dvc(root, env, "push", "--run-cache")

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    dvc(clone, env, "remote", "add", "--local", "--default", "shared", remote)
    dvc(clone, env, "pull", "--run-cache")
    assert "Data and pipelines are up to date." in dvc(clone, env, "status")
    assert stages_run(dvc(clone, env, "repro")) == []
    for path in ("metrics/evaluate/mnist_cnn.json", "metrics/train/mnist_cnn/adam-42.json"):
        assert json.loads((clone / path).read_text()) == json.loads((root / path).read_text())

    # The learning rate of that experiment: the run cache holds its training, and
    # `--pull` fetches the outputs it names, so only the stages after training run.
    edit_params({"optimizers.adam.learning_rate": 0.002}, clone)
    output = dvc(clone, env, "repro", "--pull")
    assert model_stages_run(output) == AFTER_TRAINING, output
    for stage in ("train@mnist_cnn-adam-42", "tune@mnist_cnn-adam", "train_tuned@mnist_cnn-adam-42"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    restored = json.loads((clone / "metrics" / "train" / WORKLOAD / "adam-42.json").read_text())
    (trained,) = [
        r for r in runs_by_name(root)["adam-42"] if r.data.tags.get("dvc.experiment") == "adam-lr"
    ]
    assert restored["mlflow_run_id"] == trained.info.run_id
    assert restored["val_accuracy"] == pytest.approx(trained.data.metrics["val_accuracy"])
    # The clone's own MLflow store saw no training run (the 2-D paths ran: adam's entry changed).
    assert set(runs_by_name_or_empty(clone)) <= {"trajectories"}
