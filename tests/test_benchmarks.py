"""The benchmark's own arithmetic and report (the benchmark itself is not a test)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from benchmarks import harness
from benchmarks.report import report

CPU = {
    "model": "Test CPU",
    "vendor": "AuthenticAMD",
    "family": 25,
    "cores": 2,
    "mhz": 2500.0,
    "flags": ["avx512_bf16", "avx512f"],
    "fp32_flop_per_cycle_per_core": 32,
    "peak_fp32_gflops": 160.0,
}


def test_summary_and_format() -> None:
    stats = harness.summary([3.0, 1.0, 2.0, 10.0])
    assert stats == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert harness.fmt(stats, 1, " s") == "2.5 s (1.0-10.0)"


def test_set_params_changes_nested_keys(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  precision: float32\n  epochs: 5\n")
    harness.set_params(tmp_path, train__precision="mixed_bfloat16")
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"] == {
        "precision": "mixed_bfloat16",
        "epochs": 5,
    }


def test_report_takes_ratios_per_pair_and_shares_of_the_stage() -> None:
    pair = {
        "stage_max_rss_mib": 1000.0,
        "plain_max_rss_mib": 2000.0,
        "stage_images_per_second": 1500.0,
        "plain_images_per_second": 1500.0,
    }
    results = {
        "date": "2026-11-28",
        "runs": 2,
        "cpu": CPU,
        "versions": {"python": "3.11"},
        "pipeline": {
            "runs": [
                pair
                | {
                    "stage_seconds": 110.0,
                    "plain_seconds": 100.0,
                    "exp_run_seconds": 121.0,
                    "stage_breakdown": {"fit": 100.0, "mlflow_logging": 1.1},
                },
                pair
                | {
                    "stage_seconds": 90.0,
                    "plain_seconds": 100.0,
                    "exp_run_seconds": 99.0,
                    "stage_breakdown": {"fit": 80.0, "mlflow_logging": 0.9},
                },
            ]
        },
        "noop": {
            "dvc_repro": harness.summary([1.0, 2.0]),
            "dvc_status": harness.summary([0.5, 0.7]),
        },
        "flops": {
            "train_flops_per_image": 1e8,
            "forward_flops_per_image": 3e7,
            "achieved_gflops": 80.0,
        },
        "precision": {
            "adam": {
                "float32": {"epoch_seconds": [30.0, 32.0], "val_accuracy": 0.991},
                "mixed_bfloat16": {"epoch_seconds": [15.0, 20.0], "val_accuracy": 0.9895},
            }
        },
    }
    text = report(results)
    # Ratios pair by pair: 1.1 and 0.9 -> median 1.0; exp run 1.1 both times.
    assert (
        "| wall seconds | 100.0 (90.0-110.0) | 100.0 (100.0-100.0) | 1.000 (0.900-1.100)x |" in text
    )
    assert "ratio to the forced stage 1.100 (1.100-1.100)x" in text
    assert "| mlflow_logging | 1.00 (0.90-1.10) | 1.00% (1.00-1.00) |" in text
    assert "80.0 GFLOP/s (the count is of direct convolution" in text and "peak" not in text.split("## How close")[1].split("##")[0]
    assert "`dvc repro`, all up to date: 1.50 (1.00-2.00) s" in text
    # Speed-ups per epoch pair: 2.0 and 1.6 -> median 1.8; accuracy -0.15 points.
    assert (
        "| adam | 31.0 (30.0-32.0) | 17.5 (15.0-20.0) | 1.80 (1.60-2.00)x | 99.10 | 98.95 | -0.15 |"
        in text
    )


def test_report_of_threads_input_and_where_each_part_ran() -> None:
    def probe(images_per_second: float, intra: int, inter: int) -> dict:
        return {"images_per_second": images_per_second, "intra_op": intra, "inter_op": inter}

    results = {
        "date": "2026-11-28",
        "runs": 2,
        "cpu": CPU,
        "versions": {"python": "3.11"},
        "threads": {
            "1 job, stage setting": [probe(1000, 2, 1), probe(800, 2, 1)],
            "1 job, TensorFlow default": [probe(900, 0, 0), probe(880, 0, 0)],
            "2 jobs, stage setting": [probe(1200, 1, 1), probe(1000, 1, 1)],
        },
        "input": {"runs": [{"arrays": 1000, "tf.data": 900}, {"arrays": 1000, "tf.data": 1100}]},
    }
    results["runcache"] = {"trained_seconds": 200.0, "restored_seconds": [20.0, 30.0, 40.0, 20.0]}
    text = report(results)
    assert "training Adam, then evaluate: 200.0 s (one run)" in text
    assert "4 times (Adam from the run cache, evaluate runs): 25.0 (20.0-40.0) s, 0.125x" in text
    # Each setting against the stage setting for the same job count, run by run: 0.9 and 1.1.
    assert (
        "| 1 job, TensorFlow default | 0 | 0 | 890 (880-900) | 900, 880 | 1.000 (0.900-1.100)x |"
        in text
    )
    assert "| 2 jobs, stage setting | 1 | 1 | 1100 (1000-1200) | 1200, 1000 | 1.000" in text
    assert "- tf.data / arrays: 1.000 (0.900-1.100)x" in text
    assert "Measured" not in text  # no part of these results says where it ran
    text = report(results | {"measured": {"input": {"date": "2026-11-28", "cpu": "AMD EPYC"}}})
    assert "\n\nMeasured 2026-11-28 on AMD EPYC.\n" in text.split("## Input path")[1]


def runs_csv(rows: list[tuple[str, str, float, list[float]]]) -> pd.DataFrame:
    """A runs.csv as evaluate writes it: (setting, optimizer, rate, test accuracy per seed)."""
    return pd.DataFrame(
        [
            {"setting": s, "optimizer": o, "seed": 42 + i, "learning_rate": r, "test_accuracy": a}
            for s, o, r, accuracies in rows
            for i, a in enumerate(accuracies)
        ]
    )


def test_the_precision_decision_matches_rates_and_applies_both_limits() -> None:
    from benchmarks import precision_decision as decide

    float32 = runs_csv([("default", "adam", 0.001, [0.990, 0.991, 0.992]),
                        ("tuned", "adam", 0.001, [0.990, 0.991, 0.992])])  # fmt: skip
    close = runs_csv([("default", "adam", 0.001, [0.9905, 0.9912, 0.9918]),
                      ("tuned", "adam", 0.00316, [0.99, 0.99, 0.99])])  # fmt: skip
    table = decide.compare(float32, close)
    assert list(table["comparable"]) == [True, False]  # another tuned rate: not comparable
    assert decide.decision(table)[0]
    assert list(decide.readable(table)["learning_rate"]) == ["0.001", "0.00316"]

    far = runs_csv([("default", "adam", 0.001, [0.986, 0.987, 0.988])])  # 0.4 points lower
    ok, why = decide.decision(decide.compare(float32, far))
    assert not ok and "1 significant difference(s), 1 mean(s) more than 0.3 points" in why
