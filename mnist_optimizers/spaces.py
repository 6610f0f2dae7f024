"""The full search space against the learning rate alone (Choi et al., 2019), per workload:
the tuned runs of the default comparison (`tune.space: learning_rate`, reports/workloads/<w>/)
against those of a full-space experiment (`dvc exp run -S tune.space=full`) kept in
results/full_space/<w>/ by `python -m mnist_optimizers.spaces keep`.

Per optimizer: both mean test accuracies and a verdict on the difference (Welch and TOST
over seeds, Holm over the optimizers, as the significance table's); both rankings; whether
each inclusion Choi et al. state holds within the intervals (the more general optimizer is
never significantly worse than one it can express); how easy each space was to tune (the
expected best validation accuracy after one trial and after all of them).

    python -m mnist_optimizers.spaces keep [SETTING ...]   # in the experiment's workspace,
                                                         # with the -S settings it ran with
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats as scipy_stats

from mnist_optimizers import stats, tables, tunability, verdicts
from mnist_optimizers.files import read_csv, read_json, write_text_atomic
from mnist_optimizers.paths import TUNE_DIR, reports_dir

KEPT = Path("results/full_space")
FILES = ("runs.csv", "significance.csv", "tunability.csv", "tuning.csv")
# Which update rule can express which within the searched ranges: plain SGD is Adagrad's,
# RMSprop's or Adam's with a large epsilon (and Adam's beta_1 near 0); momentum SGD is Adam's
# with a large epsilon; plain RMSprop is Adam's with beta_1 near 0 (up to Adam's bias
# correction); Nesterov's is Nadam's. Keyed by `rule`.
CONTAINS = {
    "sgd": ("momentum", "nesterov", "adagrad", "rmsprop", "adam", "nadam"),
    "momentum": ("adam", "rmsprop_momentum"),
    "nesterov": ("nadam",),
    "rmsprop": ("adam", "rmsprop_momentum"),
}


def rule(name: str, spec: Mapping[str, Any]) -> str:
    """The update rule of entry ``name`` of `optimizers`, as CONTAINS names it."""
    kind = str(spec.get("class", name)).lower()
    if spec.get("momentum", 0) > 0:
        kind = {"sgd": "nesterov" if spec.get("nesterov") else "momentum",
                "rmsprop": "rmsprop_momentum"}.get(kind, kind)  # fmt: skip
    return kind


def inclusions(specs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The (general, special) pairs among ``specs`` (compared name -> its entry) where the
    general optimizer can express the special one."""
    rules = {name: rule(name, spec) for name, spec in specs.items()}
    return [
        (general, special)
        for special in specs
        for general in specs
        if rules[general] in CONTAINS.get(rules[special], ())
    ]


def tuned_accuracies(runs: pd.DataFrame) -> dict[str, list[float]]:
    """Test accuracy (%) of each optimizer's tuned runs that did not diverge, in run order."""
    tuned = runs[(runs["setting"] == "tuned") & ~runs["diverged"].astype(bool)]
    return {o: list(100 * g["test_accuracy"]) for o, g in tuned.groupby("optimizer", sort=False)}


def space_table(
    rate_only: pd.DataFrame, full: pd.DataFrame, alpha: float, margin: float
) -> pd.DataFrame:
    """Per optimizer: mean tuned test accuracy (%) with the learning rate alone and with the
    full space, the difference (full - rate alone), Welch's p and TOST's, both Holm-corrected
    over the optimizers, and the verdict on the full space."""
    a, b = tuned_accuracies(full), tuned_accuracies(rate_only)
    names = [o for o in b if o in a]
    rows = []
    for o in names:
        welch = verdicts.welch(a[o], b[o])
        p = math.nan if welch is None else float(
            2 * scipy_stats.t.sf(abs(welch.difference) / welch.se, welch.df))  # fmt: skip
        rows.append({"optimizer": o, "rate_only_%": sum(b[o]) / len(b[o]),
                     "full_%": sum(a[o]) / len(a[o]), "p_value": p,
                     "tost_p": verdicts.tost_p(a[o], b[o], margin)})  # fmt: skip
    table = pd.DataFrame(rows)
    table["difference"] = table["full_%"] - table["rate_only_%"]
    table["p_holm"] = stats.holm(list(table["p_value"]))
    table["tost_p_holm"] = stats.holm(list(table["tost_p"]))
    table["verdict"] = [
        verdicts.verdict(d, p < alpha, t < alpha)  # NaN compares False
        for d, p, t in zip(table["difference"], table["p_holm"], table["tost_p_holm"],
                           strict=True)  # fmt: skip
    ]
    return table


def ranking(table: pd.DataFrame, column: str) -> str:
    """The optimizers from the most accurate down: `rmsprop > adam > sgd > adagrad`."""
    return " > ".join(table.sort_values(column, ascending=False, kind="stable")["optimizer"])


def inclusion_verdicts(
    significance: pd.DataFrame, pairs: list[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(general, special, the general one's verdict against the special one) on the tuned
    runs, from a significance table (whose pairs may be either way round)."""
    tuned = significance[significance["setting"] == "tuned"]
    flip = {"better": "worse", "worse": "better"}
    out = []
    for general, special in pairs:
        row = tuned[(tuned["optimizer_a"] == general) & (tuned["optimizer_b"] == special)]
        if not row.empty:
            out.append((general, special, row["verdict"].iloc[0]))
            continue
        row = tuned[(tuned["optimizer_a"] == special) & (tuned["optimizer_b"] == general)]
        if not row.empty:
            word = row["verdict"].iloc[0]
            out.append((general, special, flip.get(word, word)))
    return out


def easiest(tunability_csv: Path) -> str:
    """The optimizer whose search gives the best expected validation accuracy after one
    trial in a random order."""
    table = read_csv(tunability_csv)
    first = table[table["trials"] == 1]
    return str(first.loc[first["expected_best_val_accuracy"].idxmax(), "optimizer"])


def summary(root: Path, specs: Mapping[str, Mapping[str, Any]], alpha: float,
            margin: float) -> str:  # fmt: skip
    """The README's block: one table over the workloads kept in results/full_space/, and per
    workload the rankings, Choi et al.'s inclusions and the easiest to tune."""
    kept = root / KEPT
    experiment = read_json(kept / "experiment.json")
    command = " ".join("-S " + shlex.quote(s) for s in experiment["set"])
    rows = ["| workload | optimizer | rate alone | full space | full - rate alone | verdict |",
            "|---|---|---:|---:|---:|---|"]  # fmt: skip
    notes = []
    for workload in experiment["workloads"]:
        folder, default = kept / workload, root / reports_dir(workload)
        table = space_table(read_csv(default / "runs.csv"), read_csv(folder / "runs.csv"),
                            alpha, margin)  # fmt: skip
        rows += [
            f"| {workload} | {r['optimizer']} | {r['rate_only_%']:.2f} | {r['full_%']:.2f} "
            f"| {r['difference']:+.2f} | {r['verdict']} |"
            for _, r in table.iterrows()
        ]
        pairs = inclusions({o: specs[o] for o in table["optimizer"]})
        held = [
            f"{g} vs {s} {v} ({'holds' if v != 'worse' else 'broken'})"
            for g, s, v in inclusion_verdicts(read_csv(folder / "significance.csv"), pairs)
        ]
        notes.append(
            f"- {workload}: ranking {ranking(table, 'rate_only_%')} with the rate alone, "
            f"{ranking(table, 'full_%')} with the full space; Choi et al.'s inclusions in the "
            f"full space: {', '.join(held) or 'none among these optimizers'}; easiest to tune "
            f"(best expected after one trial): {easiest(default / 'tunability.csv')} with the "
            f"rate alone, {easiest(folder / 'tunability.csv')} with the full space."
        )
    lead = (
        f"{experiment['trials']} quasi-random trials per optimizer (`dvc exp run {command}`, "
        f"{experiment['machine']}, {experiment['date']}) against the default "
        f"{experiment['grid_points']}-point grid of learning rates: mean tuned test accuracy "
        f"over {experiment['seeds']} seeds (%), and the verdict on the difference (Welch and "
        f"TOST at a margin of {margin:g} points, Holm over the optimizers)."
    )
    return "\n".join([lead, "", *rows, "", *notes]) + "\n"


def details(root: Path) -> str:
    """docs/results.md's block: per kept workload, what the full space chose, how easy each
    search was to tune, and what the experiment cost."""
    kept = root / KEPT
    experiment = read_json(kept / "experiment.json")
    lines = []
    for workload in experiment["workloads"]:
        folder, cost = kept / workload, experiment["cost"][workload]
        lines += [
            f"**{workload}**",
            "",
            f"- Chosen by the full space: {tables.chosen_words(read_csv(folder / 'tuning.csv'))}.",
            "- Rate alone: "
            + tunability.lead(read_csv(root / reports_dir(workload) / "tunability.csv")),
            "- Full space: " + tunability.lead(read_csv(folder / "tunability.csv")),
            f"- Cost ({experiment['machine']}): the searches {cost['tune_seconds']:.0f} s, the "
            f"tuned runs {cost['train_tuned_seconds']:.0f} s of fit.",
            "",
        ]
    return "\n".join(lines)


def keep(root: Path, settings: list[str], params: dict[str, Any]) -> Path:
    """Copy a full-space experiment's tables from the workspace at ``root`` into
    results/full_space/, with what it was (``settings``, the `-S` it ran with), where and
    when, and what its searches and tuned trainings cost."""
    from mnist_optimizers import workloads as catalog
    from mnist_optimizers.sections.tune import validate_tune

    config = validate_tune(params["tune"])
    if config.space != "full":
        raise SystemExit("keep: the workspace's tune.space is not full: run the experiment first")
    names = [w.name for w in catalog.compared(params)]
    cost = {}
    for workload in names:
        target = root / KEPT / workload
        target.mkdir(parents=True, exist_ok=True)
        for file in FILES:
            shutil.copyfile(root / reports_dir(workload) / file, target / file)
        runs = read_csv(target / "runs.csv")
        tuned = runs[runs["setting"] == "tuned"]
        searches = [read_json(p) for p in sorted((root / TUNE_DIR / workload).glob("*.json"))]
        cost[workload] = {"tune_seconds": round(sum(s["seconds"] for s in searches), 1),
                          "train_tuned_seconds": round(float(tuned["train_seconds"].sum()), 1)}
    experiment = {
        "set": settings, "workloads": names, "trials": config.trials,
        "grid_points": config.points, "seeds": len(params["train"]["seeds"]),
        "machine": f"{runs['device'].iloc[0]}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
        "cost": cost,
    }  # fmt: skip
    write_text_atomic(root / KEPT / "experiment.json", json.dumps(experiment, indent=2) + "\n")
    return root / KEPT


def main(argv: list[str]) -> int:
    from mnist_optimizers.params import load_params

    if not argv or argv[0] != "keep":
        print(__doc__, file=sys.stderr)
        return 2
    settings = argv[1:] or ["tune.space=full"]
    print(keep(Path("."), settings, load_params()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
