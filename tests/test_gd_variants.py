"""Stage `gd_variants`: batch, stochastic and mini-batch gradient descent on tiny data."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from stages import gd_variants
from stages.common import ParamsError


def test_updates_per_epoch_count_the_last_partial_batch() -> None:
    assert gd_variants.updates_per_epoch(100, 100) == 1
    assert gd_variants.updates_per_epoch(100, 1) == 100
    assert gd_variants.updates_per_epoch(100, 32) == 4


def test_three_variants_with_updates_and_seconds(processed: Path) -> None:
    path = Path("params.yaml")
    params = yaml.safe_load(path.read_text())
    params["gd_variants"] |= {"images": 64, "epochs": 2, "mini_batch": 16}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    gd_variants.main([])
    table = pd.read_csv(gd_variants.GD_CSV)
    assert list(table["variant"].unique()) == ["batch", "stochastic", "mini-batch"]
    updates = table.set_index(["variant", "epoch"])["updates"]
    assert updates["batch", 2] == 2 and updates["stochastic", 2] == 128
    assert updates["mini-batch", 1] == 4
    assert (table.groupby("variant")["seconds"].diff().dropna() > 0).all()
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["tags.gd_variant"]) == ["batch", "mini-batch", "stochastic"]


def test_unknown_optimizer_is_one_clear_error(project: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["gd_variants"]["optimizer"] = "nosuch"
    with pytest.raises(ParamsError, match="gd_variants.optimizer: 'nosuch' is not an entry"):
        gd_variants.gd_variants(params)
