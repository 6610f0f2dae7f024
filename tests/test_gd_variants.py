"""Stage `gd_variants`: batch, stochastic and mini-batch gradient descent on tiny data."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mnist_optimizers.errors import ParamsError
from mnist_optimizers.paths import GD_VARIANTS_FILE
from stages import gd_variants

from .conftest import edit_params


def test_updates_per_epoch_count_the_last_partial_batch() -> None:
    assert gd_variants.updates_per_epoch(100, 100) == 1
    assert gd_variants.updates_per_epoch(100, 1) == 100
    assert gd_variants.updates_per_epoch(100, 32) == 4


def test_three_variants_with_updates_and_seconds(processed: Path) -> None:
    edit_params({"gd_variants.images": 64, "gd_variants.epochs": 2, "gd_variants.mini_batch": 16})
    gd_variants.main([])
    table = pd.read_csv(GD_VARIANTS_FILE)
    assert list(table["variant"].unique()) == ["batch", "stochastic", "mini-batch"]
    updates = table.set_index(["variant", "epoch"])["updates"]
    assert updates["batch", 2] == 2 and updates["stochastic", 2] == 128
    assert updates["mini-batch", 1] == 4
    assert (table.groupby("variant")["seconds"].diff().dropna() > 0).all()
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["tags.gd_variant"]) == ["batch", "mini-batch", "stochastic"]


def test_unknown_optimizer_is_one_clear_error(project: Path) -> None:
    edit_params({"gd_variants.optimizer": "nosuch"})
    with pytest.raises(ParamsError, match="gd_variants.optimizer: 'nosuch' is not an entry"):
        gd_variants.main([])
    assert not GD_VARIANTS_FILE.exists()
