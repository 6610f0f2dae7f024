"""Stage `trajectories` on a few steps."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from stages import trajectories


@pytest.mark.parametrize("name", sorted(trajectories.FUNCTIONS))
def test_gradients_are_the_functions_derivatives(name: str) -> None:
    function = trajectories.FUNCTIONS[name]
    rng = np.random.default_rng(0)
    for x, y in rng.uniform(-1.5, 1.5, size=(5, 2)):
        h = 1e-6
        numeric = (
            (function.f(x + h, y) - function.f(x - h, y)) / (2 * h),
            (function.f(x, y + h) - function.f(x, y - h)) / (2 * h),
        )
        np.testing.assert_allclose(function.grad(x, y), numeric, rtol=1e-5, atol=1e-5)


def test_paths_have_one_point_per_step_and_the_loss_falls_on_the_bowl(tmp_path: Path) -> None:
    bowl = trajectories.FUNCTIONS["bowl"]
    paths = {
        "sgd": trajectories.trajectory(bowl, keras.optimizers.SGD(0.01), 20),
        "adam": trajectories.trajectory(bowl, keras.optimizers.Adam(0.05), 20),
    }
    for points in paths.values():
        assert points.shape == (21, 2)
        np.testing.assert_array_equal(points[0], bowl.start)
        loss = trajectories.losses(bowl, points)
        assert loss[-1] < 0.5 * loss[0]
    out = tmp_path / "bowl.png"
    trajectories.plot("bowl", bowl, paths, out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_stage_writes_every_path_figure_and_table_and_logs_them(project: Path) -> None:
    import mlflow
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["trajectories"]["steps"] = 15
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    trajectories.main([])

    config = params["trajectories"]
    for function in config["functions"]:
        table = pd.read_csv(trajectories.OUT_DIR / f"{function}.csv")
        assert list(table.columns) == ["step", "optimizer", "x", "y", "loss"]
        assert table.groupby("optimizer").size().tolist() == [16] * len(config["optimizers"])
        start = trajectories.FUNCTIONS[function].start
        assert (table[table["step"] == 0][["x", "y"]].to_numpy() == start).all()
        assert (trajectories.OUT_DIR / f"{function}.png").stat().st_size > 10_000
    bowl = pd.read_csv(trajectories.OUT_DIR / "bowl.csv")
    for _, rows in bowl.groupby("optimizer"):
        assert rows["loss"].iloc[-1] < rows["loss"].iloc[0]
    (run,) = mlflow.search_runs(
        experiment_names=["mnist-optimizers"], filter_string="attributes.run_name = 'trajectories'",
        output_format="list",
    )  # fmt: skip
    assert run.data.params["lr.bowl.adam"] == str(config["learning_rates"]["bowl"]["adam"])
    assert "final_loss.bowl.adam" in run.data.metrics
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "trajectories")
    }
    assert "trajectories/bowl.png" in artifacts


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"functions": ["bowl", "himmelblau"]},
            "trajectories.functions: expected a non-empty list",
        ),
        (
            {"optimizers": ["adamm"]},
            "trajectories.optimizers: expected a non-empty list of entries",
        ),
        ({"steps": 0}, "trajectories.steps: expected a positive integer, got 0"),
        (
            {"learning_rates": {"bowl": {"sgd": -1}}},
            "trajectories.learning_rates.bowl.sgd: expected a positive number, got -1",
        ),
    ],
)
def test_bad_trajectories_params_are_named(change: dict, message: str) -> None:
    from stages.common import ParamsError, load_params

    params = load_params()
    section = params["trajectories"] | change
    with pytest.raises(ParamsError, match=message):
        trajectories.validate_trajectories(section, params["optimizers"])
