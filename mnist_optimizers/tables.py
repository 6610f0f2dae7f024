"""The comparison's tables: one row per run, the summary over seeds per optimizer, the
significance of each pair, the histories, and their Markdown and HTML forms.

Pure functions from results to DataFrames and text; the evaluate and report stages read
and write the files.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mnist_optimizers import stats, verdicts
from mnist_optimizers.paths import run_key
from mnist_optimizers.sections.tune import RANGE_OF

SETTINGS = {False: "default", True: "tuned"}  # learning rate: from params.yaml, or tuned
SECTION_TITLES = {"default": "Learning rates from params.yaml", "tuned": "Tuned hyperparameters"}


@dataclass(frozen=True)
class Run:
    """One trained model: its optimizer, seed, training metrics and test results."""

    optimizer: str
    seed: int
    tuned: bool  # trained with the best rate of tune@<optimizer>, not the one in params
    train: dict[str, Any]  # metrics/train/<key>.json
    history: pd.DataFrame  # metrics/history/<key>.csv
    evaluation: Any  # model.Evaluation: test accuracy, loss, per class, confusion

    @property
    def key(self) -> str:
        return run_key(self.optimizer, self.seed, self.tuned)

    @property
    def setting(self) -> str:
        return SETTINGS[self.tuned]


def target_label(target: float) -> str:
    """0.98 -> '98' (for column names)."""
    return f"{100 * target:g}"


def file_label(name: str, setting: str) -> str:
    """File-name label of an optimizer in a setting: `adam`, `adam-tuned`."""
    return name if setting == "default" else f"{name}-{setting}"


def runs_table(runs: list[Run], targets: tuple[float, ...], steps_per_epoch: int) -> pd.DataFrame:
    """One row per run (setting, optimizer, seed): learning rate, accuracies, loss, seconds,
    time to each target (the epoch, the training steps to its end, the seconds)."""
    rows = []
    for run in runs:
        diverged = bool(run.train.get("diverged", False))
        row = {
            "setting": run.setting,
            "optimizer": run.optimizer,
            "seed": run.seed,
            "learning_rate": run.train["learning_rate"],
            "diverged": diverged,  # then no accuracy or loss of it is a number: NaN
            "val_accuracy": math.nan if diverged else run.train["val_accuracy"],
            "test_accuracy": run.evaluation.test_accuracy,
            "test_loss": run.evaluation.test_loss,
            "train_seconds": run.train["train_seconds"],
        }
        for target in targets:
            reached = stats.time_to_target(run.history, target)
            label = target_label(target)
            row[f"epoch_to_{label}"] = reached.epoch if reached else None
            row[f"steps_to_{label}"] = reached.epoch * steps_per_epoch if reached else None
            row[f"seconds_to_{label}"] = round(reached.seconds, 1) if reached else None
        # How, where and when it trained (older runs' metrics do not say where and when).
        row["precision"] = run.train["precision"]
        row["device"] = run.train.get("device")
        row["date"] = run.train.get("date")
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(summary: stats.SeedSummary) -> dict[str, float | None]:
    """Mean, std and interval of a fraction, in percent with two decimals."""

    def pct(value: float) -> float | None:
        return None if math.isnan(value) else round(100 * value, 2)

    return {
        "mean": pct(summary.mean),
        "std": pct(summary.std),
        "ci_low": pct(summary.ci_low),
        "ci_high": pct(summary.ci_high),
    }


def time_to_target_text(group: pd.DataFrame, target: float) -> str:
    """'3/3 seeds, median 95 s (epoch 3)' or 'never' over an optimizer's runs."""
    label = target_label(target)
    reached = group.dropna(subset=[f"seconds_to_{label}"])
    if reached.empty:
        return "never"
    seconds = reached[f"seconds_to_{label}"].median()
    epoch = reached[f"epoch_to_{label}"].median()
    return f"{len(reached)}/{len(group)} seeds, median {seconds:.0f} s (epoch {epoch:g})"


def trained(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` that did not diverge: the only ones with numbers."""
    return runs[~runs["diverged"].astype(bool)] if "diverged" in runs else runs


def summary(values: pd.Series, confidence: float) -> stats.SeedSummary:
    """``stats.summarize_seeds``, or all NaN where every seed diverged."""
    if values.empty:
        return stats.SeedSummary(0, math.nan, math.nan, math.nan, math.nan)
    return stats.summarize_seeds(values, confidence)


def comparison_table(
    runs: pd.DataFrame, reference: dict[str, float], targets: tuple[float, ...], confidence: float
) -> pd.DataFrame:
    """One row per optimizer of ``runs`` (one setting): mean, spread and interval over seeds of
    validation and test accuracy (%), the reference validation accuracy beside ours, the time
    to each target."""
    rows = []
    level = f"{100 * confidence:g}"
    for name, group in runs.groupby("optimizer", sort=False):
        done = trained(group)
        val = _percent(summary(done["val_accuracy"], confidence))
        test = _percent(summary(done["test_accuracy"], confidence))
        ref = reference.get(name)
        row = {
            "optimizer": name,
            "learning_rate": group["learning_rate"].iloc[0],
            "seeds": len(group),
            "diverged": len(group) - len(done),
            "val_accuracy_%": val["mean"],
            "val_std": val["std"],
            f"val_ci{level}_low": val["ci_low"],
            f"val_ci{level}_high": val["ci_high"],
            "reference_val_accuracy_%": ref,
            "difference_points": (
                None if ref is None or val["mean"] is None else round(val["mean"] - ref, 2)
            ),
            "test_accuracy_%": test["mean"],
            "test_std": test["std"],
            f"test_ci{level}_low": test["ci_low"],
            f"test_ci{level}_high": test["ci_high"],
            "test_loss": round(done["test_loss"].mean(), 4),
            "train_seconds": round(group["train_seconds"].mean(), 1),
        }
        for target in targets:
            row[f"to_val_{target_label(target)}%"] = time_to_target_text(group, target)
        rows.append(row)
    return pd.DataFrame(rows)


def significance_table(runs: pd.DataFrame, confidence: float, margin: float) -> pd.DataFrame:
    """Every pair of optimizers: the difference of their mean test accuracies in points,
    whether it is significant at 1 - ``confidence`` (Welch's t-test over seeds, Holm),
    whether it is within +-``margin`` points (TOST, Holm), the verdict, and for an
    inconclusive pair the seeds per optimizer a decision needs (verdicts.pair_verdicts)."""
    samples = {
        name: list(group["test_accuracy"])
        for name, group in trained(runs).groupby("optimizer", sort=False)
    }  # an optimizer whose every seed diverged has no sample: the comparison says so
    table = verdicts.pair_verdicts(samples, alpha=1 - confidence, margin=margin / 100)
    return pd.DataFrame(
        {
            "optimizer_a": table["a"],
            "optimizer_b": table["b"],
            "test_difference_points": (100 * table["difference"]).round(2),
            "p_value": table["p_value"].map(_significant_digits),
            "p_holm": table["p_holm"].map(_significant_digits),
            "significant": table["significant"],
            "margin_points": margin,
            "tost_p_holm": table["tost_p_holm"].map(_significant_digits),
            "equivalent": table["equivalent"],
            "verdict": table["verdict"],
            "seeds_needed": table["seeds_needed"],
        }
    )


def _significant_digits(value: float) -> float:
    """``value`` to 4 significant digits: a p-value of 3e-6 stays 3e-06, not 0."""
    return value if pd.isna(value) else float(f"{value:.4g}")


def p_text(p: float) -> str:
    """A p-value as a person reads it: 4 decimals, "< 0.0001" below that, never "0"."""
    if pd.isna(p):
        return ""
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def readable_significance(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The significance table for people: headers that say what and in which unit, p-values
    as text (significance.csv keeps the numbers), the verdict and the seeds it needs."""
    margin = margin_text(table) if len(table) else ""
    return pd.DataFrame(
        {
            "optimizer A": table["optimizer_a"],
            "optimizer B": table["optimizer_b"],
            "A − B, test accuracy (points)": table["test_difference_points"].map(
                lambda d: f"{d:+.2f}"
            ),
            "p (Welch's t-test)": table["p_value"].map(p_text),
            "p (Holm-corrected)": table["p_holm"].map(p_text),
            f"significant at {1 - confidence:g}": table["significant"].map(
                lambda s: "yes" if s else "no"
            ),
            f"p within ±{margin} points (TOST, Holm)": table["tost_p_holm"].map(p_text),
            "verdict (A vs B)": table["verdict"],
            "seeds each for a decision": table["seeds_needed"].map(seeds_text),
        }
    )


def seeds_text(seeds: float) -> str:
    """The seeds an inconclusive pair needs, as a person reads it: blank for a decided pair."""
    if pd.isna(seeds):
        return ""
    return f"more than {verdicts.MAX_SEEDS}" if math.isinf(seeds) else f"{seeds:.0f}"


def margin_text(significance: pd.DataFrame) -> str:
    """The equivalence margin of a significance table, as params has it: `0.3`."""
    return f"{significance['margin_points'].iloc[0]:g}"


def headline(
    comparisons: Mapping[str, pd.DataFrame], significance: Mapping[str, pd.DataFrame]
) -> list[str]:
    """The answer first, one sentence per setting: which optimizer leads on test accuracy,
    by how much over the next, whether that lead is significant, and how many of the
    differences are."""
    sentences = []
    for setting, table in comparisons.items():
        numbers = table.dropna(subset=["test_accuracy_%"])
        ranked = numbers.sort_values("test_accuracy_%", ascending=False, kind="stable")
        lost = table[table["diverged"] > 0] if "diverged" in table else table.iloc[:0]
        note = "".join(
            f"; {r.optimizer} diverged in {r.diverged} of {r.seeds} seeds"
            for r in lost.itertuples()
        )
        if ranked.empty:
            sentences.append(f"{SECTION_TITLES[setting]}: every run diverged{note}.")
            continue
        best = ranked.iloc[0]
        text = (
            f"{SECTION_TITLES[setting]}: {best['optimizer']} leads on test accuracy "
            f"({best['test_accuracy_%']:.2f}%, lr {best['learning_rate']:g})"
        )
        if len(ranked) > 1:  # one optimizer alone has no pairs to test
            pairs = significance[setting]
            second = ranked.iloc[1]
            gap = best["test_accuracy_%"] - second["test_accuracy_%"]
            names = {best["optimizer"], second["optimizer"]}
            pair = next(
                (r for r in pairs.itertuples() if {r.optimizer_a, r.optimizer_b} == names), None
            )
            text += f", {gap:.2f} points ahead of {second['optimizer']} ({pair_words(pair)})"
            text += f"; {verdict_counts(pairs)}"
        sentences.append(text + note + ".")
    return sentences


def pair_words(pair: Any) -> str:
    """A pair's verdict in words (a row of the significance table, or None)."""
    if pair is None or pd.isna(pair.p_holm):
        return "not testable"
    if pair.verdict == "equivalent":
        return f"equivalent within ±{pair.margin_points:g} points"
    if pair.verdict == "inconclusive":
        return f"inconclusive: {seeds_text(pair.seeds_needed)} seeds each would decide"
    return "significant"


def verdict_counts(pairs: pd.DataFrame) -> str:
    """How many pairs differ, are equivalent, are inconclusive (and the seeds that would
    decide them all)."""
    testable = pairs.dropna(subset=["p_holm"])
    if testable.empty:
        return "no pair is testable"
    count = testable["verdict"].value_counts()
    margin = margin_text(testable)
    text = (f"pairs of optimizers: {count.get('better', 0) + count.get('worse', 0)} "
            f"significantly different, {count.get('equivalent', 0)} equivalent within "
            f"±{margin} points, {count.get('inconclusive', 0)} inconclusive")  # fmt: skip
    if count.get("inconclusive", 0):
        most = seeds_text(testable["seeds_needed"].max())
        text += f" (deciding them all needs {most} seeds each)"
    if len(testable) < len(pairs):
        text += f", {len(pairs) - len(testable)} not testable"
    return text


def significance_lead(table: pd.DataFrame, confidence: float) -> str:
    """The sentence a person reads first: each pair's verdict."""
    if table["p_value"].isna().all():
        return "Not testable: every optimizer needs at least two seeds (`train.seeds`)."
    margin = margin_text(table)

    def listed(verdict: tuple[str, ...], extra: Callable[[Any], str] = lambda r: "") -> str:
        rows = table[table["verdict"].isin(verdict) & table["p_holm"].notna()]
        return "; ".join(f"{r.optimizer_a} vs {r.optimizer_b} ({r.test_difference_points:+.2f} "
                         f"points{extra(r)})" for r in rows.itertuples()) or "none"  # fmt: skip

    return (
        f"At {1 - confidence:g}, Holm-corrected over the pairs: significantly different "
        f"(Welch's t-test over seeds): {listed(('better', 'worse'))}. Equivalent within "
        f"±{margin} points (two one-sided tests): {listed(('equivalent',))}. Inconclusive: "
        + listed(("inconclusive",), lambda r: f", {seeds_text(r.seeds_needed)} seeds each "
                 "would decide") + "."
    )  # fmt: skip


def significance_markdown(tables: Mapping[str, pd.DataFrame], confidence: float) -> str:
    """Per setting, the lead sentence and the significance table."""
    return "\n".join(
        f"## {SECTION_TITLES[setting]}\n\n{significance_lead(table, confidence)}\n\n"
        f"{readable_significance(table, confidence).to_markdown(index=False, disable_numparse=True)}\n"
        for setting, table in tables.items()
    )


def history_table(runs: list[Run]) -> pd.DataFrame:
    """Every run's per-epoch history in one long table with `setting`, `optimizer` and `seed`
    columns."""
    frames = [
        run.history.assign(setting=run.setting, optimizer=run.optimizer, seed=run.seed)
        for run in runs
    ]
    history = pd.concat(frames, ignore_index=True)
    first = ["setting", "optimizer", "seed"]
    return history[first + [c for c in history.columns if c not in first]]


def history_mean(history: pd.DataFrame) -> pd.DataFrame:
    """Per setting, optimizer and epoch: the mean over seeds and the band (min, max)."""
    metrics = ["loss", "accuracy", "val_loss", "val_accuracy"]
    grouped = history.groupby(["setting", "optimizer", "epoch"], sort=False)
    table = grouped[metrics].mean()
    for column in ("val_accuracy", "val_loss"):
        table[f"{column}_min"] = grouped[column].min()
        table[f"{column}_max"] = grouped[column].max()
    return table.reset_index()


def per_class_table(runs: list[Run]) -> pd.DataFrame:
    """Test accuracy per digit (rows) for each optimizer and setting (columns), the mean
    over seeds."""
    groups = list(dict.fromkeys((run.optimizer, run.setting) for run in runs))
    columns = {}
    for name, setting in groups:
        members = [r for r in runs if r.optimizer == name and r.setting == setting]
        evaluated = [
            r.evaluation.per_class_accuracy for r in members if not r.evaluation.is_diverged
        ]
        columns[file_label(name, setting)] = (
            np.mean(evaluated, axis=0) if evaluated else members[0].evaluation.per_class_accuracy
        )  # every seed diverged: NaN
    return pd.DataFrame(columns).rename_axis("digit").reset_index()


def confusion_frame(runs: list[Run], y_test: np.ndarray) -> pd.DataFrame:
    """Actual and predicted digit per test image, the seeds of ``runs`` stacked."""
    return pd.concat(
        [
            pd.DataFrame(
                {"seed": run.seed, "actual": y_test, "predicted": run.evaluation.predictions}
            )
            for run in runs
            if not run.evaluation.is_diverged
        ]
        or [pd.DataFrame(columns=["seed", "actual", "predicted"])],
        ignore_index=True,
    )


def tuning_table(results: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Every trial of each optimizer's search (metrics/tune/<w>/<optimizer>.json), by rate:
    its hyperparameters (a column each; empty where an optimizer has no such one),
    validation accuracy after the epochs it reached, whether the pruner stopped it early
    (its accuracy is then after fewer epochs), whether it was chosen."""
    rows = []
    for name, result in results.items():
        for trial in sorted(result["trials"], key=lambda t: t["learning_rate"]):
            rows.append(
                {"optimizer": name, "space": result["space"]}
                | trial["hyperparameters"]
                | {
                    "val_accuracy": trial["val_accuracy"],
                    "epochs": trial["epochs"],
                    "pruned": trial["pruned"],
                    "diverged": trial["diverged"],
                    "chosen": trial["hyperparameters"] == result["best"],
                    "images": result["images"],
                    "max_epochs": result["epochs"],
                    "pruner": result["pruner"],
                }
            )
    return pd.DataFrame(rows)


def headline_metrics(comparisons: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """What `dvc metrics show` and `dvc exp show` print: per setting and optimizer, the mean
    test accuracy over seeds, in percent (8 numbers for the default comparison, short
    column names such as `tuned.adam`, so a 200-column terminal shows them all)."""
    return {
        setting: {row["optimizer"]: row["test_accuracy_%"] for row in table.to_dict("records")}
        for setting, table in comparisons.items()
    }


def summary_metrics(
    by_setting: Mapping[str, pd.DataFrame], confidence: float
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Everything behind the headline, for `dvc metrics show reports/summary.json` and the
    docs: per setting and optimizer (``by_setting``: each setting's rows of `runs_table`), the
    exact means over seeds (fractions, as the training metrics are) and the intervals of
    validation and test accuracy, test loss, seconds. Only the tables round, for reading."""

    def exact(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    metrics: dict[str, dict[str, dict[str, float | None]]] = {}
    for setting, runs in by_setting.items():
        for name, group in runs.groupby("optimizer", sort=False):
            done = trained(group)
            entry = {"learning_rate": float(group["learning_rate"].iloc[0]), "seeds": len(group),
                     "diverged": len(group) - len(done)}  # fmt: skip
            for split in ("val", "test"):
                seeds = summary(done[f"{split}_accuracy"], confidence)
                entry[f"{split}_accuracy"] = exact(seeds.mean)
                entry[f"{split}_accuracy_ci_low"] = exact(seeds.ci_low)
                entry[f"{split}_accuracy_ci_high"] = exact(seeds.ci_high)
            entry["test_loss"] = exact(done["test_loss"].mean())
            entry["train_seconds"] = exact(group["train_seconds"].mean())
            metrics.setdefault(setting, {})[name] = entry
    return metrics


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None or pd.isna(mean):
        return "diverged"
    return f"{mean:.2f}" if std is None or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or pd.isna(low) else f"[{low:.2f}, {high:.2f}]"


def readable_table(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The comparison table for people: mean ± std and the interval of each accuracy in one
    cell each (comparison.csv keeps every number in its own column)."""
    level = f"{100 * confidence:g}"
    rows = []
    for row in table.to_dict("records"):
        out = {"optimizer": row["optimizer"], "learning rate": f"{row['learning_rate']:g}"}
        lost = row.get("diverged", 0)
        out["seeds"] = f"{row['seeds']} ({lost} diverged)" if lost else row["seeds"]
        for kind in ("val", "test"):
            out[f"{kind} accuracy % (mean ± std)"] = _mean_std(
                row[f"{kind}_accuracy_%"], row[f"{kind}_std"]
            )
            if kind == "val":  # beside the validation accuracy it compares with
                ref = row["reference_val_accuracy_%"]
                out["tutorial val %"] = "" if ref is None or pd.isna(ref) else f"{ref:.2f}"
            out[f"{kind} {level}% interval"] = _interval(
                row[f"{kind}_ci{level}_low"], row[f"{kind}_ci{level}_high"]
            )
        out["test loss (cross-entropy)"] = (
            "" if pd.isna(row["test_loss"]) else f"{row['test_loss']:.4f}"
        )
        out["training time (s)"] = f"{row['train_seconds']:.0f}"
        out |= {
            f"time to {k.removeprefix('to_val_')} val accuracy": v
            for k, v in row.items()
            if k.startswith("to_val_")
        }
        rows.append(out)
    readable = pd.DataFrame(rows)
    if "tutorial val %" in readable and not readable["tutorial val %"].astype(bool).any():
        readable = readable.drop(columns="tutorial val %")  # a workload with no published result
    return readable


def chosen_words(tuning: pd.DataFrame) -> str:
    """What each search chose: `adam lr=0.003 beta_1=0.95 ...; sgd lr=0.1`."""
    columns = [c for c in tuning.columns if c == "learning_rate" or c in RANGE_OF]
    return "; ".join(
        f"{row['optimizer']} "
        + " ".join(f"{'lr' if c == 'learning_rate' else c}={row[c]:g}" for c in columns
                   if pd.notna(row[c]))  # fmt: skip
        for _, row in tuning[tuning["chosen"].astype(bool)].iterrows()
    )


def section_title(setting: str, tuning: pd.DataFrame) -> str:
    """The heading of one setting's comparison; the tuned one says how rates were chosen."""
    if setting != "tuned":
        return SECTION_TITLES[setting]
    first = tuning.iloc[0]
    budget = (f"each trial {first['images']} training images x up to {first['max_epochs']} "
              "epochs")  # fmt: skip
    if first["pruner"] != "none":
        budget += f", weak ones stopped early: {first['pruner']}"
    if first["space"] == "learning_rate":
        grid = ", ".join(f"{r:g}" for r in sorted(tuning["learning_rate"].unique()))
        return (f"{SECTION_TITLES[setting]}: the learning rate (grid {grid}; {budget}; chosen on "
                "validation accuracy)")  # fmt: skip
    trials = tuning.groupby("optimizer", sort=False).size()
    chosen = chosen_words(tuning)
    return (
        f"{SECTION_TITLES[setting]}: the full space ({trials.max()} quasi-random trials per "
        f"optimizer over its learning rate and other hyperparameters; {budget}; chosen on "
        f"validation accuracy: {chosen})"
    )


def comparison_markdown(
    comparisons: Mapping[str, pd.DataFrame], tuning: pd.DataFrame, confidence: float
) -> str:
    """The default-rate table and the tuned-rate table, one under the other."""
    parts = []
    for setting, table in comparisons.items():
        readable = readable_table(table, confidence)
        # As the cells are written (96.50, not tabulate's 96.5): the HTML page shows the same.
        markdown = readable.to_markdown(index=False, disable_numparse=True)
        parts += [f"## {section_title(setting, tuning)}", "", markdown, ""]
    return "\n".join(parts)


def across_workloads(
    comparisons: Mapping[str, pd.DataFrame],
    significance: Mapping[str, pd.DataFrame],
    scores: pd.DataFrame,
) -> list[str]:
    """What holds on every workload and what does not, a few sentences per setting: who is
    the most accurate on each, which significant differences point the same way on all,
    and who scores highest on the performance profile. ``comparisons`` and ``significance``:
    each workload's comparison.csv and significance.csv; ``scores``: profiles.score_table."""
    sentences = []
    settings = dict.fromkeys(s for t in comparisons.values() for s in t["setting"])
    for setting in settings:
        title = SECTION_TITLES[setting]
        leaders = {}
        for workload, table in comparisons.items():
            ranked = table[table["setting"] == setting].dropna(subset=["test_accuracy_%"])
            if not ranked.empty:
                best = ranked.sort_values("test_accuracy_%", ascending=False, kind="stable").iloc[0]
                leaders[workload] = (best["optimizer"], best["test_accuracy_%"])
        named = ", ".join(f"{w} {acc:.2f}%" for w, (_, acc) in leaders.items())
        winners = {name for name, _ in leaders.values()}
        if len(winners) == 1 and len(leaders) == len(comparisons):
            sentences.append(f"{title}: {winners.pop()} is the most accurate on every workload "
                             f"({named}).")  # fmt: skip
        else:
            each = ", ".join(f"{name} on {w}" for w, (name, _) in leaders.items())
            sentences.append(f"{title}: the most accurate differs by workload: {each}.")
        sentences.append(f"{title}: " + pair_agreement(
            {w: t[t["setting"] == setting] for w, t in significance.items()}))
        ranked = scores[scores["setting"] == setting].sort_values("score_steps", ascending=False)
        if not ranked.empty:
            order = ", ".join(f"{r.optimizer} {r.score_steps:.2f}" for r in ranked.itertuples())
            sentences.append(f"{title}: performance-profile score (steps to each workload's "
                             f"target, 1 = fastest everywhere): {order}.")  # fmt: skip
    return sentences


def readable_scores(scores: pd.DataFrame, targets: Mapping[str, float]) -> pd.DataFrame:
    """The performance-profile score table (profiles.score_table) for people: the scores to
    two decimals and each workload's median steps to its target, "never" where the median
    seed never reached it (profiles.csv keeps the numbers and the ratios)."""
    table = pd.DataFrame({
        "learning rates": scores["setting"],
        "optimizer": scores["optimizer"],
        "score (steps)": scores["score_steps"].map("{:.2f}".format),
        "score (seconds)": scores["score_seconds"].map("{:.2f}".format),
    })  # fmt: skip
    for workload, target in targets.items():
        table[f"{workload} steps to {target:g}"] = scores[f"{workload}_steps"].map(
            lambda steps: "never" if math.isinf(steps) else f"{steps:.0f}"
        )
    return table


def pair_agreement(significance: Mapping[str, pd.DataFrame]) -> str:
    """Which pairs' test-accuracy differences are significant in the same direction on every
    workload, which on some but not all, which pairs are equivalent on every workload, and
    how many are inconclusive somewhere (and the seeds that would decide them)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for workload, table in significance.items():
        for r in table.itertuples():
            rows.setdefault((r.optimizer_a, r.optimizer_b), {})[workload] = r

    def sign(r: Any) -> int:
        if not bool(r.significant) or pd.isna(r.test_difference_points):
            return 0
        return 1 if r.test_difference_points > 0 else -1

    def better(pair: tuple[str, str], sign: int) -> str:
        return f"{pair[0]} > {pair[1]}" if sign > 0 else f"{pair[1]} > {pair[0]}"

    everywhere, somewhere, equivalent, unsure = [], [], [], []
    for pair, by_workload in rows.items():
        signs = {w: sign(r) for w, r in by_workload.items()}
        values = set(signs.values())
        complete = len(by_workload) == len(significance)
        if complete and len(values) == 1 and 0 not in values:
            everywhere.append(better(pair, values.pop()))
        elif values - {0}:
            somewhere.append(", ".join(f"{better(pair, s)} on {w}" for w, s in signs.items() if s))
        if complete and all(r.verdict == "equivalent" for r in by_workload.values()):
            equivalent.append(f"{pair[0]} = {pair[1]}")
        unsure += [r.seeds_needed for r in by_workload.values() if r.verdict == "inconclusive"]
    if not everywhere and not somewhere:
        text = "no difference is significant on any workload"
    else:
        text = ("significant on every workload, in the same direction: "
                + (", ".join(everywhere) or "no difference"))  # fmt: skip
        if somewhere:
            text += "; significant on some workloads only: " + "; ".join(somewhere)
    margins = {margin_text(t) for t in significance.values() if len(t)}
    if equivalent:
        text += (f"; equivalent within ±{'/'.join(sorted(margins))} points on every workload: "
                 + ", ".join(equivalent))  # fmt: skip
    if unsure:
        text += (f"; inconclusive: {len(unsure)} of {sum(map(len, rows.values()))} pairs over "
                 f"the workloads (deciding them all needs {seeds_text(max(unsure))} seeds "
                 "each)")  # fmt: skip
    return text + "."


def comparison_html(comparison: pd.DataFrame, tuning: pd.DataFrame, confidence: float) -> str:
    """Per setting (comparison.csv's `setting` column), a heading and the readable table."""
    parts = []
    for setting, table in comparison.groupby("setting", sort=False):
        parts.append(f"<h3>{html.escape(section_title(setting, tuning))}</h3>")
        parts.append(readable_table(table, confidence).to_html(index=False, border=0))
    return "\n".join(parts)


def significance_html(significance: pd.DataFrame, confidence: float) -> str:
    """Per setting, a heading, the sentence that says what is significant, and the table."""
    parts = []
    for setting, table in significance.groupby("setting", sort=False):
        table = table.drop(columns="setting")
        parts.append(f"<h3>{html.escape(SECTION_TITLES[setting])}</h3>")
        parts.append(f"<p>{html.escape(significance_lead(table, confidence))}</p>")
        parts.append(readable_significance(table, confidence).to_html(index=False, border=0))
    return "\n".join(parts)
