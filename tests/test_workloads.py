"""The `workloads` section and `compare_workloads` (mnist_optimizers/workloads.py): what a user
types, and the message a mistake gets."""

from __future__ import annotations

import pytest

from mnist_optimizers.errors import ParamsError
from mnist_optimizers.workloads import validate_workloads

CNN = {"conv_blocks": [[32, 64], [64]], "kernel_size": 3, "pool_size": 2,
       "dense_units": [128], "num_classes": 10}  # fmt: skip
CATALOG = {
    "mnist_cnn": {"data": "mnist", "model": CNN, "targets": [0.98, 0.97]},
    "mnist_mlp": {
        "data": "mnist",
        "model": {"conv_blocks": [], "dense_units": [1000, 500, 100], "num_classes": 10},
        "targets": [0.97],
    },
    "mnist_logreg": {
        "data": "mnist",
        "model": {"conv_blocks": [], "dense_units": [], "num_classes": 10},
        "targets": [0.9, 0.92],
    },
}
DATASETS = ("mnist", "fashion_mnist")


def test_the_compared_workloads_in_their_order_and_the_first_target_the_profiles() -> None:
    workloads = validate_workloads(CATALOG, ["mnist_mlp", "mnist_cnn"], DATASETS)
    assert [w.name for w in workloads] == ["mnist_mlp", "mnist_cnn"]
    mlp, cnn = workloads
    assert mlp.model.conv_blocks == () and mlp.model.dense_units == (1000, 500, 100)
    assert cnn.model.conv_blocks == ((32, 64), (64,)) and cnn.targets == (0.98, 0.97)
    assert cnn.target == 0.98 and cnn.reference_val_accuracy == {}
    (logreg,) = validate_workloads(CATALOG, ["mnist_logreg"], DATASETS)
    assert logreg.model.dense_units == () and logreg.data == "mnist"


@pytest.mark.parametrize(
    ("catalog", "compared", "message"),
    [
        (CATALOG, ["mnist_cnn", "mnist_rnn"],
         "compare_workloads: mnist_rnn not in `workloads`; entries: mnist_cnn, mnist_mlp"),
        (CATALOG, ["mnist_cnn", "mnist_cnn"], "compare_workloads: each workload once"),
        (CATALOG, [], "compare_workloads: expected a non-empty list of workload names, got []"),
        (CATALOG, "mnist_cnn", "compare_workloads: expected a non-empty list"),
        ({}, ["mnist_cnn"], "workloads: expected at least one entry"),
        ({"MNIST-cnn": CATALOG["mnist_cnn"]}, ["MNIST-cnn"],
         "workloads: 'MNIST-cnn' is not a valid name"),
        ({"w": CATALOG["mnist_cnn"] | {"data": "cifar"}}, ["w"],
         "workloads.w.data: 'cifar' is not an entry of `datasets`; entries: mnist, fashion_mnist"),
        ({"w": {"data": "mnist", "model": CNN}}, ["w"], "workloads.w: missing key(s) targets"),
        ({"w": CATALOG["mnist_cnn"] | {"target": [0.9]}}, ["w"],
         "workloads.w: unknown key(s) target"),
        ({"w": CATALOG["mnist_cnn"] | {"targets": [97]}}, ["w"],
         "workloads.w.targets: expected a non-empty list of distinct accuracies in (0, 1]"),
        ({"w": CATALOG["mnist_cnn"] | {"model": CNN | {"dense_units": [0]}}}, ["w"],
         "workloads.w.model.dense_units[0]: expected a positive integer, got 0"),
        ({"w": CATALOG["mnist_cnn"] | {"model": CNN | {"conv_blocks": [[8]] * 5}}}, ["w"],
         "workloads.w.model: 28x28 images shrink to nothing in conv_blocks[3]"),
        ({"w": CATALOG["mnist_mlp"] | {"model": {"conv_blocks": [[8]], "dense_units": [8],
                                                  "num_classes": 10}}}, ["w"],
         "workloads.w.model: missing key(s) kernel_size, pool_size"),
    ],
    ids=["unknown", "twice", "empty", "not-a-list", "no-workloads", "bad-name", "unknown-data",
         "no-targets", "misspelt-key", "percent-target", "bad-layer", "too-deep",
         "conv-without-kernel"],
)  # fmt: skip
def test_a_mistake_is_named_with_its_key(catalog: dict, compared, message: str) -> None:
    with pytest.raises(ParamsError) as error:
        validate_workloads(catalog, compared, DATASETS)
    assert str(error.value).startswith(message), str(error.value)
