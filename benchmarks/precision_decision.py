"""Is bfloat16 safe as the default? float32 against mixed_bfloat16 test accuracy, per
optimizer and setting, over the seeds of two `reports/runs.csv` files.

    python -m benchmarks.precision_decision FLOAT32_RUNS.csv [MORE.csv ...] --bf16 BF16_RUNS.csv

Rows are matched on setting, optimizer and learning rate (a tuned rate that differs between
the two runs is not comparable, and is listed as such). Each pair of seed sets gets Welch's
t-test on test accuracy, Holm-corrected over the pairs, as the report does. bfloat16 passes
where no difference is significant at 0.05 and every mean is within 0.3 points.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from scipy import stats as scipy_stats

from mnist_optimizers.stats import holm

MAX_POINTS = 0.3
ALPHA = 0.05
KEYS = ["setting", "optimizer", "learning_rate"]


def compare(float32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, optimizer, learning rate) both runs hold."""
    rows = []
    by_key = dict(list(float32.groupby(KEYS, sort=False)))
    for key, b in bf16.groupby(KEYS, sort=False):
        f = by_key.get(key)
        if f is None:
            rows.append(dict(zip(KEYS, key, strict=True)) | {"comparable": False})
            continue
        f_acc, b_acc = 100 * f["test_accuracy"], 100 * b["test_accuracy"]
        p = scipy_stats.ttest_ind(b_acc, f_acc, equal_var=False).pvalue
        rows.append(
            dict(zip(KEYS, key, strict=True))
            | {
                "comparable": True,
                "seeds": f"{len(f_acc)} / {len(b_acc)}",
                "float32 test %": f_acc.mean(),
                "bf16 test %": b_acc.mean(),
                "difference (points)": b_acc.mean() - f_acc.mean(),
                "p": p,
            }
        )
    table = pd.DataFrame(rows)
    done = table["comparable"]
    table.loc[done, "p (Holm)"] = holm(list(table.loc[done, "p"]))
    return table


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text: rates to 3 significant digits, percentages and p to 3 decimals."""
    shown = table.astype(object).where(table.notna(), "")
    shown["learning_rate"] = table["learning_rate"].map(lambda rate: f"{rate:.3g}")
    for column in ("float32 test %", "bf16 test %", "p", "p (Holm)"):
        shown[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown["difference (points)"] = table["difference (points)"].map(
        lambda v: "" if pd.isna(v) else f"{v:+.3f}"
    )
    return shown


def decision(table: pd.DataFrame) -> tuple[bool, str]:
    """Whether bfloat16 passes, and why, in one sentence."""
    done = table[table["comparable"]]
    significant = done[done["p (Holm)"] < ALPHA]
    far = done[done["difference (points)"].abs() > MAX_POINTS]
    if not significant.empty or not far.empty:
        return False, (
            f"bfloat16 fails: {len(significant)} significant difference(s), {len(far)} mean(s) "
            f"more than {MAX_POINTS} points from float32"
        )
    return True, (
        f"bfloat16 passes: no difference significant (Holm, {ALPHA}) over {len(done)} "
        f"comparisons, the largest {done['difference (points)'].abs().max():.2f} points"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float32", nargs="+", help="runs.csv files of float32 runs")
    parser.add_argument("--bf16", required=True, help="runs.csv of the mixed_bfloat16 runs")
    args = parser.parse_args(argv)
    float32 = pd.concat([pd.read_csv(path) for path in args.float32], ignore_index=True)
    float32 = float32.drop_duplicates(subset=[*KEYS, "seed"])
    table = compare(float32, pd.read_csv(args.bf16))
    print(readable(table).to_markdown(index=False, disable_numparse=True))
    ok, why = decision(table)
    print(f"\n{why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
