"""How easy an optimizer is to tune (Sivaprasad et al., 2020): the best validation accuracy a
user can expect after k trials of its search, k = 1 .. the trials it ran, over every order
in which the trials could have come.

Computed exactly from one search's trials (reports/workloads/<w>/tuning.csv): with the
trials' accuracies sorted, v(1) <= ... <= v(n), the best of k trials drawn in a random order
is v(i) with probability C(i - 1, k - 1) / C(n, k). A trial that diverged counts as 0 (as the
search judged it); one that the pruner stopped counts with its accuracy when stopped, a lower
bound of what it would have reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np
import pandas as pd


def expected_best(values: Sequence[float], k: int) -> float:
    """The expected maximum of ``k`` of ``values`` drawn without replacement."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    weights = [comb(i, k - 1) for i in range(n)]  # draws whose best is the (i+1)-th smallest
    return float(np.dot(weights, ordered) / comb(n, k))


def tunability_table(tuning: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer of a search's trials (columns `optimizer`, `val_accuracy`, `diverged`)
    and k = 1 .. its trials: the expected best validation accuracy after k trials."""
    rows = []
    for name, trials in tuning.groupby("optimizer", sort=False):
        values = trials["val_accuracy"].where(~trials["diverged"].astype(bool), 0.0).fillna(0.0)
        rows += [
            {"optimizer": name, "trials": k,
             "expected_best_val_accuracy": round(expected_best(values, k), 6)}
            for k in range(1, len(values) + 1)
        ]  # fmt: skip
    return pd.DataFrame(rows, columns=["optimizer", "trials", "expected_best_val_accuracy"])


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table for people: a row per optimizer, a column per number of trials, in % as
    text with two decimals (the HTML and the Markdown read alike)."""
    wide = table.pivot(index="optimizer", columns="trials", values="expected_best_val_accuracy")
    wide = wide.reindex(list(dict.fromkeys(table["optimizer"])))  # the search's order
    wide.columns = [f"{k} trial{'s' if k > 1 else ''}" for k in wide.columns]
    return (100 * wide).map("{:.2f}".format).reset_index()


def lead(table: pd.DataFrame) -> str:
    """One sentence: each optimizer's expected best after one trial and after all of them,
    and which is the easiest to tune (the highest after one trial)."""
    first = table[table["trials"] == 1].set_index("optimizer")["expected_best_val_accuracy"]
    last = table.groupby("optimizer", sort=False).last()["expected_best_val_accuracy"]
    each = ", ".join(f"{o} {100 * first[o]:.2f}% / {100 * last[o]:.2f}%" for o in last.index)
    return (f"Expected best validation accuracy of the search after one trial in a random "
            f"order / after all its trials: {each}; the easiest to tune (the best after one "
            f"trial): {first.idxmax()}.")  # fmt: skip


def markdown(table: pd.DataFrame) -> str:
    """The lead sentence and the table, in Markdown."""
    wide = wide_table(table).to_markdown(index=False, disable_numparse=True)
    return f"{lead(table)}\n\n{wide}\n"
