"""Stage `tune`: a learning-rate search, and a full-space one, on tiny data, pruned, grouped
in MLflow, best on validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import mlflow
import optuna
import pytest

from mnist_optimizers import runtime
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import TRAIN_METRICS_DIR, TUNE_DIR, TUNED_DIR
from stages import train, tune

from .conftest import WORKLOAD, edit_params, random_images


def set_tune(**values: object) -> dict:
    return edit_params({f"tune.{key}": value for key, value in values.items()})


def test_search_runs_nested_under_one_parent_prunes_weak_trials_and_picks_the_best(
    processed: Path,
) -> None:
    set_tune(
        low=0.0001, high=1.0, points=5, images=100, epochs=2, min_epochs=0.5, reduction_factor=3
    )
    tune.main([WORKLOAD, "adam"])
    result = json.loads((TUNE_DIR / WORKLOAD / "adam.json").read_text())
    trials = result["trials"]
    assert sorted(t["learning_rate"] for t in trials) == [0.0001, 0.001, 0.01, 0.1, 1.0]
    # 100 images in batches of 32: 4 batches an epoch. The rungs: half an epoch (2 batches,
    # judged mid-epoch), then 3 times that (6 batches); a trial past both runs all 8.
    stops = {
        (0.5, True, "pruned after 0.5 of 2 epochs (2 of 8 batches)"),
        (1.5, True, "pruned after 1.5 of 2 epochs (6 of 8 batches)"),
        (2, False, "completed all 2 epochs"),
    }
    for t in trials:
        assert any(
            (t["epochs"], t["pruned"]) == (e, p) and t["stopped"].startswith(why)
            for e, p, why in stops
        ), t
    pruned = [t for t in trials if t["pruned"]]
    assert any(t["epochs"] == 0.5 for t in pruned), "1 in 3 goes on past the first rung"
    assert result["epochs_trained"] == sum(t["epochs"] for t in trials) < 5 * 2
    complete = [t for t in trials if not t["pruned"]]
    best = max(sorted(complete, key=lambda t: t["learning_rate"]), key=lambda t: t["val_accuracy"])
    assert result["best_learning_rate"] == best["learning_rate"]
    chosen = json.loads((TUNED_DIR / WORKLOAD / "adam.json").read_text())  # what train_tuned reads
    assert chosen == {"optimizer": "adam", "learning_rate": best["learning_rate"]}
    assert result["images"] == 100 and result["pruner"].startswith("successive halving")

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.run_name == f"tune {WORKLOAD}/adam" and parent.info.status == "FINISHED"
    assert parent.data.metrics["epochs_trained"] == result["epochs_trained"]
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_rate = {float(c.data.params["optimizer.learning_rate"]): c for c in children}
    assert sorted(by_rate) == [0.0001, 0.001, 0.01, 0.1, 1.0]
    for t in trials:
        child = by_rate[t["learning_rate"]]
        assert child.info.status == "FINISHED"  # a pruned trial is a finished run, tagged
        assert child.data.tags["pruned"] == str(t["pruned"]).lower()
        assert child.data.tags["stopped"] == t["stopped"]
        assert child.data.metrics["epochs_reached"] == t["epochs"]
        epochs = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in epochs] == list(range(1, int(t["epochs"]) + 1))  # whole ones
        # What the pruner judged, at each rung and each epoch's end, in batches trained.
        judged = client.get_metric_history(child.info.run_id, "judged_val_accuracy")
        assert [m.step for m in judged] == [2, 4, 6, 8][: [2, 4, 6, 8].index(t["epochs"] * 4) + 1]
        assert judged[-1].value == t["val_accuracy"]
        for m in judged:  # at an epoch's end it is the epoch's validation accuracy
            if m.step % 4 == 0:
                assert m.value == epochs[m.step // 4 - 1].value


def test_the_search_is_reproducible_and_without_pruning_trains_every_trial(
    processed: Path,
) -> None:
    set_tune(low=0.0001, high=1.0, points=5, images=100, epochs=2)
    first = tune.tune(WORKLOAD, "sgd", load_params())
    again = tune.tune(WORKLOAD, "sgd", load_params())
    keep = ("learning_rate", "val_accuracy", "epochs", "pruned")
    assert [{k: t[k] for k in keep} for t in again["trials"]] == [
        {k: t[k] for k in keep} for t in first["trials"]
    ]
    set_tune(prune=False)
    full = tune.tune(WORKLOAD, "sgd", load_params())
    assert [t["epochs"] for t in full["trials"]] == [2] * 5 and full["pruner"] == "none"
    assert full["epochs_trained"] == 10
    # A trial that ran to the end has the same accuracy with or without pruning.
    by_rate = {t["learning_rate"]: t["val_accuracy"] for t in full["trials"]}
    for t in first["trials"]:
        if not t["pruned"]:
            assert t["val_accuracy"] == by_rate[t["learning_rate"]]


def test_every_trial_trains_in_the_precision_the_search_logs(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clear_session()` before each trial resets Keras' dtype policy: the search used to log
    mixed_bfloat16 and train every trial in float32."""
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)  # bfloat16 runs on any CPU, slowly
    edit_params({"train.precision": "mixed_bfloat16"})
    set_tune(low=0.001, high=0.01, points=2, images=100, epochs=1, prune=False)
    try:
        result = tune.tune(WORKLOAD, "adam", load_params())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result["precision"] == "mixed_bfloat16"
    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.params["train.effective_precision"] == "mixed_bfloat16"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    # Each trial logs the policy of the model it trained, not the one asked for.
    assert [c.data.params["train.effective_precision"] for c in children] == ["mixed_bfloat16"] * 2


def test_tuned_training_uses_the_best_rate(processed: Path) -> None:
    set_tune(low=0.001, high=0.1, points=3, images=100, epochs=2)
    best = tune.tune(WORKLOAD, "sgd", load_params())["best_learning_rate"]
    edit_params({"optimizers.sgd.learning_rate": 0.5})  # not in the grid: the tuned run trains
    train.main([WORKLOAD, "sgd", "42"])
    train.main([WORKLOAD, "sgd", "42", "--tuned"])
    metrics = json.loads((TRAIN_METRICS_DIR / WORKLOAD / "sgd-42-tuned.json").read_text())
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert float(run.data.params["optimizer.learning_rate"]) == pytest.approx(best)
    assert run.data.tags["dvc.stage"] == "train_tuned@mnist_cnn-sgd-42"


@pytest.mark.parametrize(
    ("content", "message"),
    [("{}", "metrics/tuned/mnist_cnn/sgd.json: learning_rate missing: not as the stage that writes"),
     ("[0.01]", "metrics/tuned/mnist_cnn/sgd.json: learning_rate missing"),
     ('{"learning_rate": -0.01}',
      "metrics/tuned/mnist_cnn/sgd.json: learning_rate: expected a positive number, got -0.01; "
      "rerun the search: dvc repro --force tune@mnist_cnn-sgd"),
     ('{"learning_rate": "0.01"}', "learning_rate: expected a positive number, got '0.01'"),
     ('{"learning_rate": true}', "learning_rate: expected a positive number, got True"),
     ('{"learning_rate": 0.01, "beta_1": -0.9}',
      "metrics/tuned/mnist_cnn/sgd.json: beta_1: expected a non-negative number, got -0.9"),
     ('{"learning_rate": 0.01, "nesterov": true}',
      "metrics/tuned/mnist_cnn/sgd.json: 'nesterov' is no hyperparameter a search tunes "
      "(learning_rate, momentum, beta_1, beta_2, rho, epsilon)")],
    ids=["no-key", "not-an-object", "negative", "string", "bool", "negative-beta", "unknown"],
)  # fmt: skip
def test_a_tuned_rate_file_that_is_not_the_searchs_is_named(
    processed: Path, content: str, message: str
) -> None:
    """A hand-edited or foreign metrics/tuned/<workload>/<name>.json: the file is named, not
    `optimizers.sgd.learning_rate`, and nothing trains."""
    from mnist_optimizers.errors import PipelineError
    from mnist_optimizers.paths import TUNED_DIR

    (TUNED_DIR / WORKLOAD).mkdir(parents=True, exist_ok=True)
    (TUNED_DIR / WORKLOAD / "sgd.json").write_text(content)
    with pytest.raises(PipelineError, match=re.escape(message)):
        train.main([WORKLOAD, "sgd", "42", "--tuned"])
    assert not (TRAIN_METRICS_DIR / WORKLOAD / "sgd-42-tuned.json").exists()


def test_a_bad_grid_fails_before_any_training(project: Path) -> None:
    set_tune(low=0.1, high=0.01)
    with pytest.raises(ParamsError, match="tune: expected 0 < low < high"):
        tune.main([WORKLOAD, "adam"])
    assert not TUNE_DIR.exists()


def test_rungs_fall_in_batches_so_that_a_fraction_of_an_epoch_is_judged_mid_epoch() -> None:
    from mnist_optimizers import search
    from mnist_optimizers.sections.tune import validate_tune

    params = load_params()["tune"]
    config = validate_tune(params | {"epochs": 2, "min_epochs": 0.5, "reduction_factor": 3})
    per_epoch = search.batches_per_epoch(10000, 128)
    assert per_epoch == 79  # the last batch holds 16 images
    assert search.rungs(config, per_epoch) == [40, 120]  # 0.51 and 1.52 epochs, of 158
    whole = validate_tune(params | {"epochs": 4, "min_epochs": 1, "reduction_factor": 2})
    assert search.rungs(whole, 10) == [10, 20]  # both at an epoch's end
    tiny = validate_tune(params | {"epochs": 2, "min_epochs": 0.1, "reduction_factor": 3})
    assert search.rungs(tiny, 4) == [1, 3]  # never less than one batch
    default = validate_tune(params)  # half an epoch, reduction factor 4: one rung
    assert search.rungs(default, per_epoch) == [40]


def test_judging_mid_epoch_leaves_the_training_as_it_would_have_been(project: Path) -> None:
    """The mid-epoch judgement runs Keras' evaluate, which resets the metrics the epoch is
    accumulating: they are put back, so the history equals that of a fit never judged."""
    import keras

    from mnist_optimizers import search
    from mnist_optimizers.fit import fit_model
    from mnist_optimizers.architecture import validate_model
    from mnist_optimizers.model import build_model
    from mnist_optimizers.sections.tune import validate_tune

    class NeverPrune:  # an Optuna trial whose pruner lets everything go on
        def __init__(self) -> None:
            self.steps: list[int] = []

        def report(self, value: float, step: int) -> None:
            self.steps.append(step)

        def should_prune(self) -> bool:
            return False

    data = random_images(train=64, val=40)
    params = load_params()
    config = validate_tune(params["tune"] | {"epochs": 2, "min_epochs": 0.5, "reduction_factor": 3})

    def history(callbacks: list) -> list[dict]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(7)
        model = build_model(validate_model(params["workloads"]["mnist_cnn"]["model"]), (28, 28, 1))
        with mlflow.start_run():
            tracker = fit_model(model, keras.optimizers.SGD(0.1), data, 2, 16, callbacks=callbacks)
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in tracker.history]

    trial = NeverPrune()
    judge = search.PruneWeakTrial(trial, config, data, batch_size=16)  # type: ignore[arg-type]
    judged = history([judge])
    assert trial.steps == [2, 4, 6, 8]  # 4 batches an epoch: mid-epoch rungs at 2 and 6
    assert judged == history([])
    assert [r[2] for r in judge.reports if r[0] % 4 == 0] == [row["val_accuracy"] for row in judged]


def test_a_trial_that_trained_its_whole_budget_is_never_labelled_pruned() -> None:
    """Optuna may answer `should_prune` at the last report too (a rung on the last batch):
    the trial spent its budget, it completed."""
    from mnist_optimizers import search
    from mnist_optimizers.sections.tune import validate_tune

    class AlwaysPrune:
        def report(self, value: float, step: int) -> None:
            pass

        def should_prune(self) -> bool:
            return True

    config = validate_tune(load_params()["tune"] | {"epochs": 2, "min_epochs": 1, "prune": True})
    judge = search.PruneWeakTrial(AlwaysPrune(), config, random_images(64, 8), batch_size=16)
    judge.judge(8, val_loss=0.5, val_accuracy=0.9)  # 4 batches an epoch, 2 epochs: the last
    assert judge.pruned_at is None
    assert search.stop_reason(judge, config) == "completed all 2 epochs"
    with pytest.raises(optuna.TrialPruned, match="pruned after 4 batches"):
        judge.judge(4, val_loss=0.5, val_accuracy=0.9)
    assert search.stop_reason(judge, config).startswith("pruned after 1 of 2 epochs (4 of 8")


FULL_SPACE = {"space": "full", "trials": 6, "low": 0.001, "high": 0.1, "images": 100, "epochs": 2,
              "ranges.one_minus_beta_1": [0.01, 0.5], "ranges.epsilon": [1e-8, 0.1]}  # fmt: skip


def test_a_full_space_search_draws_each_hyperparameter_from_its_range_and_logs_every_trial(
    processed: Path,
) -> None:
    """`tune.space: full` for Adam: the learning rate, beta_1, beta_2 and epsilon of every
    trial within their ranges (beta_1 as 1 minus a draw), each trial's in its nested MLflow
    run's params, the best complete trial's in the file train_tuned reads; the same seed
    draws the same points."""
    set_tune(**FULL_SPACE)
    result = tune.tune(WORKLOAD, "adam", load_params())
    trials = result["trials"]
    assert result["space"] == "full" and len(trials) == 6
    for t in trials:
        h = t["hyperparameters"]
        assert list(h) == ["learning_rate", "beta_1", "beta_2", "epsilon"]
        assert 0.001 <= h["learning_rate"] <= 0.1 and t["learning_rate"] == h["learning_rate"]
        assert 0.5 <= h["beta_1"] <= 0.99  # 1 - [0.01, 0.5]
        assert 0.0 <= h["beta_2"] <= 0.9999  # the default range: 1 - [0.0001, 1]
        assert 1e-8 <= h["epsilon"] <= 0.1
        drawn = [h["learning_rate"], h["epsilon"], round(1 - h["beta_1"], 12),
                 round(1 - h["beta_2"], 12)]  # fmt: skip
        assert all(float(f"{v:.3g}") == v for v in drawn)  # three digits, as params read
    assert len({tuple(t["hyperparameters"].values()) for t in trials}) == 6  # six points
    complete = [t for t in trials if not t["pruned"]]
    best = max(complete, key=lambda t: t["val_accuracy"])
    assert result["best"] == best["hyperparameters"]
    chosen = json.loads((TUNED_DIR / WORKLOAD / "adam.json").read_text())
    assert chosen == {"optimizer": "adam"} | best["hyperparameters"]

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.params["tune.space"] == "full" and parent.data.params["tune.trials"] == "6"
    assert parent.data.params["tune.searched"] == "learning_rate, beta_1, beta_2, epsilon"
    assert parent.data.params["tune.ranges.one_minus_beta_1"] == "[0.01, 0.5]"
    assert parent.data.metrics["best_beta_1"] == best["hyperparameters"]["beta_1"]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    logged = sorted(tuple(float(c.data.params[f"optimizer.{k}"]) for k in best["hyperparameters"])
                    for c in children)  # fmt: skip
    assert logged == sorted(tuple(t["hyperparameters"].values()) for t in trials)

    again = tune.tune(WORKLOAD, "adam", load_params())
    assert [t["hyperparameters"] for t in again["trials"]] == [t["hyperparameters"] for t in trials]


def test_tuned_training_trains_every_hyperparameter_the_full_search_chose(processed: Path) -> None:
    set_tune(**FULL_SPACE | {"trials": 3})
    best = tune.tune(WORKLOAD, "adam", load_params())["best"]
    train.main([WORKLOAD, "adam", "42"])  # the default run, which a tuned one may reuse
    train.main([WORKLOAD, "adam", "42", "--tuned"])
    metrics = json.loads((TRAIN_METRICS_DIR / WORKLOAD / "adam-42-tuned.json").read_text())
    params = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"]).data.params
    for key, value in best.items():  # as Keras built the optimizer
        assert float(params[f"optimizer.{key}"]) == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize(
    ("name", "searched"),
    [("sgd", ()), ("sgd_momentum", ("momentum",)), ("sgd_nesterov", ("momentum",)),
     ("adagrad", ("epsilon",)), ("rmsprop", ("rho", "epsilon")),
     ("adam", ("beta_1", "beta_2", "epsilon")), ("lion", ("beta_1", "beta_2")), ("ftrl", ())],
)  # fmt: skip
def test_the_full_space_of_each_optimizer(project: Path, name: str, searched: tuple) -> None:
    """Plain SGD stays plain (its momentum is searched only where the entry sets one)."""
    from mnist_optimizers.optimizers import build_optimizer, searched_arguments

    spec = load_params()["optimizers"][name]
    assert searched_arguments(build_optimizer(name, spec), spec) == searched


def test_a_trial_draws_a_decay_as_one_minus_it_on_a_log_scale() -> None:
    """By hand: Optuna's fixed trial hands back the draws; the values are 1 minus a decay's,
    rounded to three digits as they read in params."""
    from mnist_optimizers import search
    from mnist_optimizers.sections.tune import validate_tune

    config = validate_tune(load_params_section() | {"space": "full"})
    trial = optuna.trial.FixedTrial(
        {"learning_rate": 0.0031622776, "one_minus_beta_1": 0.0123456, "one_minus_beta_2": 0.001,
         "epsilon": 1.23456e-7}  # fmt: skip
    )
    values = search.suggest(trial, config, [], ("beta_1", "beta_2", "epsilon"))
    assert values == {"learning_rate": 0.00316, "beta_1": 0.9877, "beta_2": 0.999,
                      "epsilon": 1.23e-7}  # fmt: skip
    assert search.trial_label(values) == "lr=0.00316 beta_1=0.9877 beta_2=0.999 epsilon=1.23e-07"
    assert search.ends(config, [], ("beta_1",)) == [
        {"learning_rate": 0.0001, "beta_1": 0.999}, {"learning_rate": 1.0, "beta_1": 0.0}
    ]  # fmt: skip
    study = search.create_study(config, [], per_epoch=4)
    assert isinstance(study.sampler, optuna.samplers.QMCSampler)


def load_params_section() -> dict:
    import yaml

    return yaml.safe_load(Path(__file__).parents[1].joinpath("params.yaml").read_text())["tune"]


def test_the_best_trial_is_a_complete_one_and_a_tie_goes_to_the_smaller_rate() -> None:
    from mnist_optimizers import search
    from mnist_optimizers.errors import PipelineError

    def trial(rate: float, accuracy: float, pruned: bool = False, diverged: bool = False) -> dict:
        return {"learning_rate": rate, "hyperparameters": {"learning_rate": rate, "beta_1": 0.9},
                "val_accuracy": accuracy, "pruned": pruned, "diverged": diverged,
                "stopped": "why"}  # fmt: skip

    trials = [trial(0.1, 0.99, pruned=True), trial(0.01, 0.9), trial(0.001, 0.9),
              trial(1.0, None, diverged=True), trial(0.003, 0.8)]  # fmt: skip
    assert search.best_hyperparameters(trials, "adam") == {"learning_rate": 0.001, "beta_1": 0.9}
    with pytest.raises(PipelineError, match="tune@adam: every trial diverged or was pruned "
                       r"\(lr=0.1 beta_1=0.9: why, lr=1 beta_1=0.9: why\)"):
        search.best_hyperparameters([trials[0], trials[3]], "adam")
