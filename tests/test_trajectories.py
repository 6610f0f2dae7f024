"""Stage `trajectories` on a few steps."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
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
