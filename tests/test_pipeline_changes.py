"""End to end: what a change to the reproduced pipeline (conftest's `reproduced`) makes the
real DVC CLI run, each test on its own copy of it: an edited module or params.yaml, a search
rerun, an optimizer and a seed added, a `dvc repro` killed mid-training; and the champion's
registration run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mnist_optimizers.parallel_task import stages_run

from . import processes
from .cli import dvc, run
from .conftest import WORKLOAD, edit_params, tiny_mnist_contents, write_mirror
from .pipeline_runs import (
    AFTER_TRAINING,
    OPTIMIZERS,
    client_for,
    model_stages_run,
    runs_by_name,
)

pytestmark = pytest.mark.e2e


def test_the_best_model_by_validation_accuracy_is_registered_once_as_champion(
    workspace,
) -> None:
    root, env = workspace
    runs = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "runs.csv")
    best = runs.loc[runs["val_accuracy"].idxmax()]  # validation, never test
    champion = json.loads((root / "reports" / "workloads" / WORKLOAD / "champion.json").read_text())
    assert (champion["optimizer"], champion["seed"], champion["setting"]) == (
        best["optimizer"], best["seed"], best["setting"]
    )  # fmt: skip
    client = client_for(root)
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert int(version.version) == champion["version"]
    assert version.run_id == champion["mlflow_run_id"]
    run = client.get_run(version.run_id)
    key = f"{best['optimizer']}-{best['seed']}{'-tuned' if best['setting'] == 'tuned' else ''}"
    assert run.info.run_name == f"{WORKLOAD}/{key}"
    assert version.tags["optimizer"] == best["optimizer"] and version.tags["workload"] == WORKLOAD
    assert version.tags["mlflow.run_id"] == run.info.run_id
    assert version.tags["dvc.experiment"] == "workspace"  # a plain `dvc repro`
    assert float(version.tags["val_accuracy"]) == pytest.approx(best["val_accuracy"])

    # Nothing changed: DVC skips the stage; forced, it finds the version and adds none.
    assert "register@mnist_cnn" not in stages_run(dvc(root, env, "repro", "register@mnist_cnn"))
    assert "register@mnist_cnn" in stages_run(
        dvc(root, env, "repro", "--force", "--single-item", "register@mnist_cnn")
    )
    versions = client.search_model_versions("name = 'mnist-cnn'")
    assert [int(v.version) for v in versions] == [int(version.version)]


def stale_stages(root: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc status` says have changed."""
    return set(json.loads(dvc(root, env, "status", "--json")))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


def test_an_edit_makes_only_the_stages_that_import_it_stale(workspace) -> None:
    """Each stage depends on the modules it imports, no more: an edit to one section's
    validation, or to one library module, reruns only the stages that use it."""
    root, env = workspace
    assert stale_stages(root, env) == set()
    trajectories = root / "mnist_optimizers" / "sections" / "trajectories.py"
    edit(trajectories, ': expected a positive "', ': expected a positive number "')
    assert stale_stages(root, env) == {"trajectories", "check_params"}
    edit(trajectories, ': expected a positive number "', ': expected a positive "')
    assert stale_stages(root, env) == set()

    edit(root / "mnist_optimizers" / "plots.py", "a hatched", "an outlined")
    assert stale_stages(root, env) == {f"evaluate@{WORKLOAD}", "report", "trajectories"}


def test_a_search_rerun_that_chooses_the_same_rate_trains_nothing_again(workspace) -> None:
    """train_tuned depends on the rate the search chose, not on the whole search: a search
    run again (new seconds, new MLflow runs) that chooses the same rate retrains nothing."""
    root, env = workspace
    name = OPTIMIZERS[0]
    before = json.loads((root / "metrics" / "tune" / WORKLOAD / f"{name}.json").read_text())
    output = dvc(root, env, "repro", "--force", "--single-item", f"tune@{WORKLOAD}-{name}")
    assert stages_run(output) == [f"tune@{WORKLOAD}-{name}"]
    again = json.loads((root / "metrics" / "tune" / WORKLOAD / f"{name}.json").read_text())
    assert again["mlflow_run_id"] != before["mlflow_run_id"]
    assert again["best_learning_rate"] == before["best_learning_rate"]
    # What `dvc repro` would run next: the comparison, and no tuned training.
    stale = stale_stages(root, env)
    assert f"evaluate@{WORKLOAD}" in stale and not [s for s in stale if s.startswith("train_tuned@")], stale


def test_params_yaml_is_checked_whole_before_any_stage_runs(workspace) -> None:
    """A mistake in a section no stale stage reads still stops `dvc repro`, and an edit that
    changes no value reruns only the check."""
    root, env = workspace
    params = root / "params.yaml"
    good = params.read_text()
    # The last: a section renamed away that dvc.yaml interpolates; DVC itself refuses it.
    for text, message, ran in (
        (good.replace("  epochs: 1\n", "  epoch: 1\n", 1),
         "train: unknown key(s) epoch; expected: epochs, batch_size", ["check_params"]),
        (good + "trian:\n  epochs: 5\n",
         "params.yaml: unknown key(s) trian; expected: download", ["check_params"]),
        (good.replace("\ntrain:\n", "\ntrian:\n", 1),
         "failed to parse 'stages.train.matrix' in 'dvc.yaml': Could not find 'train.seeds'", []),
    ):  # fmt: skip
        params.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode != 0 and message in output, output
        assert stages_run(output) == ran and "Traceback" not in output, output
    params.write_text(good + "# a comment: no value changes\n")
    assert stages_run(dvc(root, env, "repro")) == ["check_params"]
    assert stale_stages(root, env) == set()


def test_an_added_optimizer_and_seed_train_only_their_runs_in_a_temp_experiment(
    workspace,
) -> None:
    """`dvc exp run --temp` adding an optimizer and a seed: the new optimizer's stages and the
    new seed's runs train, nothing else does; the temporary copy logs into the project's
    store; applied, the experiment's tables have the new optimizer."""
    root, env = workspace
    output = dvc(
        root,
        env,
        "exp",
        "run",
        "--temp",
        "-n",
        "with-nadam",
        "-S",
        f"compare=[{','.join(OPTIMIZERS)},nadam]",
        "-S",
        "train.seeds=[42,43]",
    )
    new_runs = [f"{t}@{WORKLOAD}-{n}-43" for t in ("train", "train_tuned") for n in OPTIMIZERS]
    nadam = ["train@mnist_cnn-nadam-42", "train@mnist_cnn-nadam-43", "tune@mnist_cnn-nadam", "train_tuned@mnist_cnn-nadam-42",
             "train_tuned@mnist_cnn-nadam-43"]  # fmt: skip
    ran = model_stages_run(output)
    assert sorted(ran[:-3]) == sorted(new_runs + nadam) and ran[-3:] == AFTER_TRAINING, ran
    assert ran.index("tune@mnist_cnn-nadam") < ran.index("train_tuned@mnist_cnn-nadam-42")
    # The temporary copy logged into the project's store, not one of its own.
    trained = runs_by_name(root)
    assert len(trained["nadam-42"]) == 1 and "test_accuracy" in trained["nadam-42"][0].data.metrics
    assert len(trained["sgd-43"]) == 1 and len(trained["sgd-42"]) == 1
    dvc(root, env, "exp", "apply", "with-nadam")
    table = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "comparison.csv")
    assert list(table[table["setting"] == "default"]["optimizer"]) == [*OPTIMIZERS, "nadam"]


def test_a_full_space_experiment_searches_every_hyperparameter_and_trains_what_it_chose(
    workspace,
) -> None:
    """`dvc exp run -S tune.space=full`: the searches run again over each optimizer's whole
    space (Adam: learning rate, beta_1, beta_2, epsilon; plain SGD: its learning rate alone),
    every trial's hyperparameters in its MLflow run; the tuned runs train what they chose;
    no default run trains again."""
    root, env = workspace
    output = dvc(root, env, "exp", "run", "-n", "full-space", "-S", "tune.space=full",
                 "-S", "tune.trials=3")  # fmt: skip
    ran = model_stages_run(output)
    assert not [s for s in ran if s.startswith("train@")], ran
    assert {f"tune@{WORKLOAD}-{n}" for n in OPTIMIZERS} <= set(ran) and ran[-1] == "report", ran
    client = client_for(root)
    for name, searched in (("adam", ["learning_rate", "beta_1", "beta_2", "epsilon"]),
                           ("sgd", ["learning_rate"])):  # fmt: skip
        result = json.loads((root / "metrics" / "tune" / WORKLOAD / f"{name}.json").read_text())
        assert result["space"] == "full" and len(result["trials"]) == 3
        children = client.search_runs(
            [client.get_run(result["mlflow_run_id"]).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
        )
        logged = sorted(
            [float(c.data.params[f"optimizer.{key}"]) for key in searched] for c in children
        )
        assert logged == sorted([t["hyperparameters"][k] for k in searched]
                                for t in result["trials"])  # fmt: skip
        chosen = json.loads((root / "metrics" / "tuned" / WORKLOAD / f"{name}.json").read_text())
        assert chosen == {"optimizer": name} | result["best"] and list(result["best"]) == searched
        tuned = json.loads(
            (root / "metrics" / "train" / WORKLOAD / f"{name}-42-tuned.json").read_text()
        )
        if "reused" not in tuned:  # the chosen point trained, as Keras built it
            params = client.get_run(tuned["mlflow_run_id"]).data.params
            for key, value in result["best"].items():
                assert float(params[f"optimizer.{key}"]) == pytest.approx(value, rel=1e-6)
    tuning = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "tuning.csv")
    assert set(tuning["space"]) == {"full"} and tuning["beta_1"].notna().sum() == 3  # adam's
    page = (root / "reports" / "report" / "report.html").read_text()
    assert "Tuned hyperparameters: the full space (3 quasi-random trials" in page


def test_an_added_idx_workload_trains_only_its_stages_and_joins_the_profiles(
    workspace, tmp_path: Path
) -> None:
    """A data set of IDX files (generated here: any MNIST-format set, as Fashion-MNIST) in the
    `datasets` catalog, then `dvc exp run -S` adding a workload on it (an MLP) to the
    comparison: exactly its stages run (and the report across workloads), nothing of the
    existing workload; its MLflow runs carry it; the profiles and the report have it."""
    root, env = workspace
    mirror = tmp_path / "generated"
    sha256 = write_mirror(mirror, tiny_mnist_contents(seed=5))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["datasets"]["generated"] = {"mirrors": [str(mirror)], "sha256": sha256}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(root, env, "repro")  # the catalog changed: download@mnist_cnn checks its files again
    run(["git", "commit", "-qam", "a data set in the catalog"], root, env)
    assert stale_stages(root, env) == set()
    workload = "generated_mlp"
    entry = ("{data:generated,model:{conv_blocks:[],dense_units:[16],num_classes:10},"
             "targets:[0.3,0.2]}")  # fmt: skip
    output = dvc(root, env, "exp", "run", "-n", "with-mlp", "-S", f"+workloads.{workload}={entry}",
                 "-S", f"compare_workloads=[{WORKLOAD},{workload}]")  # fmt: skip
    expected = [
        f"download@{workload}", f"preprocess@{workload}",
        *(f"{stage}@{workload}-{n}-42" for stage in ("train", "train_tuned") for n in OPTIMIZERS),
        *(f"tune@{workload}-{n}" for n in OPTIMIZERS),
        f"evaluate@{workload}", f"register@{workload}", "report",
    ]  # fmt: skip
    ran = model_stages_run(output)
    assert sorted(ran) == sorted(expected) and ran[-1] == "report", ran
    runs = runs_by_name(root)
    for name in OPTIMIZERS:
        (run_,) = runs[f"{workload}/{name}-42"]
        assert run_.data.tags["workload"] == run_.data.params["workload"] == workload
        assert run_.data.params["data.dataset"] == "generated"
        assert run_.data.params["model.dense_units"] == "(16,)"
    profiles = pd.read_csv(root / "reports" / "report" / "profiles.csv")
    assert {f"{WORKLOAD}_steps", f"{workload}_steps", f"{workload}_ratio"} <= set(profiles)
    page = (root / "reports" / "report" / "report.html").read_text()
    assert f"<h2>{workload}</h2>" in page and f"<h2>{WORKLOAD}</h2>" in page
    table = pd.read_csv(root / "reports" / "workloads" / workload / "comparison.csv")
    assert list(table[table["setting"] == "default"]["optimizer"]) == OPTIMIZERS
    shown = json.loads(dvc(root, env, "metrics", "show", "--json"))
    (revision,) = shown.values()
    assert {f"metrics/evaluate/{WORKLOAD}.json", f"metrics/evaluate/{workload}.json"} <= set(
        revision["data"]
    )


def test_a_stage_whose_dvc_parent_is_killed_stops_and_the_rerun_trains_once(workspace) -> None:
    """`kill` to `dvc repro` (or its terminal closing) mid-training: the stage stops as on
    Ctrl-C (its MLflow run KILLED, no outputs) instead of training on as an orphan whose
    FINISHED run dvc.lock never records; the rerun leaves one FINISHED run. DVC runs the
    cmd in /bin/sh, as where SHELL is unset (CI, cron): Debian's dash forks the stage and
    outlives dvc, the harder case (a bash exec's it)."""
    root, env = workspace
    env = env | {"SHELL": "/bin/sh"}
    edit_params({"train.epochs": 40}, root)  # long enough to be caught mid-training
    log = root.parent / "repro.log"
    with log.open("w") as out:
        repro = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "train@mnist_cnn-sgd-42"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        running = wait_for_a_running_run(root, "train@mnist_cnn-sgd-42", repro, log)
        repro.send_signal(signal.SIGTERM)  # dvc alone, not its process group
        repro.wait(timeout=30)
        deadline = time.monotonic() + 30
        while processes.tagged(env[processes.TAG_VARIABLE]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes.tagged(env[processes.TAG_VARIABLE]), log.read_text()[-3000:]
    finally:
        repro.kill()
        repro.wait()
    text = log.read_text()
    assert "stopped: the process that started it" in text and "Traceback" not in text, text
    assert client_for(root).get_run(running.info.run_id).info.status == "KILLED"
    assert not (root / "models" / WORKLOAD / "sgd-42.keras").exists()

    dvc(root, env, "repro", "train@mnist_cnn-sgd-42")
    statuses = sorted(
        r.info.status for r in runs_by_name(root)["sgd-42"] if r.data.params["train.epochs"] == "40"
    )
    assert statuses == ["FINISHED", "KILLED"]


def wait_for_a_running_run(root: Path, stage: str, process: subprocess.Popen, log: Path):
    """The RUNNING MLflow run of ``stage`` once it has logged an epoch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        for runs in runs_by_name(root).values():
            for r in runs:
                if r.info.status == "RUNNING" and r.data.tags.get("dvc.stage") == stage:
                    if client_for(root).get_metric_history(r.info.run_id, "val_accuracy"):
                        return r
        time.sleep(0.5)
    pytest.fail(f"{stage} logged no epoch within 120 s:\n{log.read_text()[-3000:]}")
