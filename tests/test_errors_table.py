"""docs/errors.md, row by row: each bad params.yaml input, written into a real params file,
stops the stage a user runs with exactly the message the table shows."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_optimizers import params as params_module
from mnist_optimizers.errors import ParamsError, PipelineError

from .conftest import WORKLOAD, set_key

ERRORS_DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
# | 3 | `train.epochs: 0` | train | `` train.epochs: expected a positive integer, got 0 `` |
ROW = re.compile(
    r"^\| *\d+ *\| *`(?P<change>[^`]+)` *\| *(?P<stage>\w+) *\| *`` (?P<message>.+) `` *\|$"
)
# The optimizer a training or tuning stage runs with: the one the change is about, else adam.
STAGE_ARGS = {"train": [WORKLOAD, "{optimizer}", "42"], "tune": [WORKLOAD, "{optimizer}"],
              **{stage: [WORKLOAD] for stage in ("download", "preprocess", "evaluate", "register")}}  # fmt: skip
RAW = "typed0as0is0"  # a plain scalar: YAML writes it unquoted


def table_rows() -> list[tuple[str, str, str]]:
    """(change, stage, message) for every row of the bad-params table in docs/errors.md."""
    rows = []
    for line in ERRORS_DOC.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            rows.append((match["change"], match["stage"], match["message"]))
    return rows


def params_text(params: dict[str, Any], change: str) -> str:
    """The params.yaml a user would have after typing ``change`` (`dotted.key: yaml value`):
    a value that is not YAML goes into the file as typed, breaking it the way it would."""
    key, _, typed = change.partition(": ")
    try:  # read as the pipeline reads params.yaml (`1e-3` is a number)
        value = params_module.parse_yaml(typed, change)
    except ParamsError:
        value = RAW
    params = copy.deepcopy(params)
    set_key(params, key, value)
    return yaml.safe_dump(params, sort_keys=False).replace(RAW, typed)


def stage_args(stage: str, change: str, params: dict[str, Any]) -> list[str]:
    """The arguments of the stage a row runs: `train mnist_cnn sgd 42` for a change to
    `optimizers.sgd.*`, `train mnist_cnn adam 42` otherwise."""
    key = change.partition(": ")[0].split(".")
    optimizer = (
        key[1] if key[0] == "optimizers" and key[1:2] and key[1] in params["optimizers"] else "adam"
    )
    return [arg.format(optimizer=optimizer) for arg in STAGE_ARGS.get(stage, [])]


def stage_message(stage: str, args: list[str]) -> str:
    """What `python -m stages.<stage> <args>` stops with (run_stage prints exactly this)."""
    module = importlib.import_module(f"stages.{stage}")
    with pytest.raises(PipelineError) as caught:
        module.main(args)
    return str(caught.value)


ROWS = table_rows()


def test_the_table_covers_at_least_twenty_bad_inputs() -> None:
    assert len(ROWS) >= 20
    assert len({change for change, _, _ in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("change", "stage", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_each_bad_input_stops_its_stage_with_the_documented_message(
    project: Path, change: str, stage: str, message: str
) -> None:
    from stages import check_params, download

    download.main([WORKLOAD])  # the tiny data, so that data-dependent checks see real files
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(params_text(params, change))
    assert stage_message(stage, stage_args(stage, change, params)) == message
    if change in NEEDS_THE_DATA:
        check_params.main([])  # passes: only the stage that reads the data can tell
    else:
        assert stage_message("check_params", []) == message  # what `dvc repro` stops with


# Rows only the data decides (the table's text says which).
NEEDS_THE_DATA = {"preprocess.subset: 100000"}


def test_rows_that_need_the_data_are_the_ones_the_table_names() -> None:
    text = ERRORS_DOC.read_text(encoding="utf-8")
    numbers = [i for i, (change, _, _) in enumerate(ROWS, start=1) if change in NEEDS_THE_DATA]
    assert numbers == [21] and "Only row 21 needs the data" in text
