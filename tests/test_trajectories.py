"""The 2-D test functions and stage `trajectories` on a few steps. Bad `trajectories`
params are rows of docs/errors.md."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from mnist_optimizers import surfaces
from mnist_optimizers.paths import TRAJECTORIES_DIR
from mnist_optimizers.plots import plot_trajectories
from stages import trajectories

from .conftest import edit_params


@pytest.mark.parametrize("name", sorted(surfaces.FUNCTIONS))
def test_gradients_are_the_functions_derivatives(name: str) -> None:
    function = surfaces.FUNCTIONS[name]
    rng = np.random.default_rng(0)
    for x, y in rng.uniform(-1.5, 1.5, size=(5, 2)):
        h = 1e-6
        numeric = (
            (function.f(x + h, y) - function.f(x - h, y)) / (2 * h),
            (function.f(x, y + h) - function.f(x, y - h)) / (2 * h),
        )
        np.testing.assert_allclose(function.grad(x, y), numeric, rtol=1e-5, atol=1e-5)


def test_paths_have_one_point_per_step_and_the_loss_falls_on_the_bowl(tmp_path: Path) -> None:
    bowl = surfaces.FUNCTIONS["bowl"]
    paths = {
        "sgd": surfaces.trajectory(bowl, keras.optimizers.SGD(0.01), 20),
        "adam": surfaces.trajectory(bowl, keras.optimizers.Adam(0.05), 20),
    }
    for points in paths.values():
        assert points.shape == (21, 2)
        np.testing.assert_array_equal(points[0], bowl.start)
        loss = surfaces.losses(bowl, points)
        assert loss[-1] < 0.5 * loss[0]
    out = tmp_path / "bowl.png"
    plot_trajectories("bowl", bowl, paths, out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_stage_writes_every_path_figure_and_table_and_logs_them(project: Path) -> None:
    import mlflow

    params = edit_params({"trajectories.steps": 15})

    trajectories.main([])

    config = params["trajectories"]
    for function in config["functions"]:
        table = pd.read_csv(TRAJECTORIES_DIR / f"{function}.csv")
        assert list(table.columns) == ["step", "optimizer", "x", "y", "loss"]
        assert table.groupby("optimizer").size().tolist() == [16] * len(config["optimizers"])
        start = surfaces.FUNCTIONS[function].start
        assert (table[table["step"] == 0][["x", "y"]].to_numpy() == start).all()
        assert (TRAJECTORIES_DIR / f"{function}.png").stat().st_size > 10_000
    bowl = pd.read_csv(TRAJECTORIES_DIR / "bowl.csv")
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
