"""The numbers of README.md and docs/, written from the committed results.

Every result a page states sits in a marked block that this module fills from `reports/`
(the tutorial's workload, mnist_cnn, unless a block names another) and params.yaml, so that a page cannot drift from the results:

    <!-- numbers: results-default -->
    ...written here...
    <!-- /numbers -->

    python -m mnist_optimizers.doc_numbers           # rewrite every block
    python -m mnist_optimizers.doc_numbers --check   # exit 1, naming the blocks that differ

tests/test_doc_numbers.py runs the check: a number edited by hand fails it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mnist_optimizers import spaces, tables, workloads
from mnist_optimizers.architecture import ModelConfig, parameter_counts
from mnist_optimizers.idx import IMAGE_SHAPE
from mnist_optimizers.files import read_csv, read_json, write_text_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import CHAMPION_NAME, GD_VARIANTS_FILE, REPORT_DIR, reports_dir

PROFILES_FILE = REPORT_DIR / "profiles.csv"  # the report's score table

PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(
    r"(?P<open><!-- numbers: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /numbers -->)",
    re.S,
)
SETTINGS = ("default", "tuned")
WORKLOAD = "mnist_cnn"  # the tutorial's, whose numbers the README's tables give


class Results:
    """The committed results, read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.params = load_params(root / "params.yaml")
        folder = root / reports_dir(WORKLOAD)
        self.runs = read_csv(folder / "runs.csv")
        self.comparison = read_csv(folder / "comparison.csv")
        self.significance = read_csv(folder / "significance.csv")
        self.gd = read_csv(root / GD_VARIANTS_FILE)
        self.champion = read_json(folder / CHAMPION_NAME)
        self.targets = {w.name: w.target for w in workloads.compared(self.params)}
        self.workloads = list(self.targets)
        self.comparisons = {w: read_csv(root / reports_dir(w) / "comparison.csv")
                            for w in self.workloads}  # fmt: skip
        self.significances = {w: read_csv(root / reports_dir(w) / "significance.csv")
                              for w in self.workloads}  # fmt: skip
        self.scores = read_csv(root / PROFILES_FILE)
        self.runs_of = {w: read_csv(root / reports_dir(w) / "runs.csv") for w in self.workloads}

    def by_setting(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {s: t for s, t in frame.groupby("setting", sort=False)}


def machine(results: Results) -> str:
    """Where, how and when the committed runs trained (`CPU (Intel(R) Xeon(R) Processor), in
    mixed_bfloat16, on 2026-12-02 (UTC)`), from reports/runs.csv; runs that do not record it
    are said to."""
    runs = results.runs
    if not {"device", "precision", "date"} <= set(runs.columns):
        return "a machine and on a date that these results do not record (reports/runs.csv)"
    devices = ", ".join(sorted(runs["device"].dropna().unique()))
    dates = sorted(runs["date"].dropna().unique())
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    precisions = ", ".join(sorted(runs["precision"].unique()))
    return f"{devices}, in {precisions}, on {when} (UTC)"


def setup(results: Results) -> str:
    params = results.params
    train, subset = params["train"], params["preprocess"]["subset"]
    data = "full MNIST" if subset is None else f"the first {subset} MNIST images"
    return (
        f"{data}, {train['epochs']} epochs, batch {train['batch_size']}, seeds "
        f"{', '.join(str(s) for s in train['seeds'])}; trained on {machine(results)}.\n"
    )


def rate(value: float) -> str:
    return f"{value:g}"


def results_table(results: Results, setting: str) -> str:
    """One setting's comparison as the README shows it."""
    table = results.by_setting(results.comparison)[setting]
    default_rates = results.by_setting(results.comparison)["default"].set_index("optimizer")
    rows = []
    for r in table.to_dict("records"):
        name = r["optimizer"]
        lr = rate(r["learning_rate"])
        if setting == "tuned" and r["learning_rate"] == default_rates.loc[name, "learning_rate"]:
            lr += ", its default"
        cells = [
            f"{name} ({lr})",
            f"{r['val_accuracy_%']:.2f} ± {r['val_std']:.2f}",
            f"{r['test_accuracy_%']:.2f} ± {r['test_std']:.2f}",
            f"[{r['test_ci95_low']:.2f}, {r['test_ci95_high']:.2f}]",
            r["to_val_98%"],
        ]
        if setting == "default":
            cells.insert(2, "" if pd.isna(r["reference_val_accuracy_%"]) else f"{r['reference_val_accuracy_%']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    head = ["optimizer (learning rate)", "validation %", "test %", "test 95% interval",
            "to 98% validation"]  # fmt: skip
    if setting == "default":
        head.insert(2, "tutorial %")
    rule = "|---|" + "---:|" * (len(head) - 1)
    return "\n".join(["| " + " | ".join(head) + " |", rule, *rows]) + "\n"


def verdicts(results: Results) -> str:
    """The report's headline: per setting, who leads, by how much, and what is significant."""
    sentences = tables.headline(
        results.by_setting(results.comparison), results.by_setting(results.significance)
    )
    lines = [f"- {s}" for s in sentences]
    for setting, table in results.by_setting(results.significance).items():
        lead = tables.significance_lead(table.drop(columns="setting"), 0.95)
        lines.append(f"- {tables.SECTION_TITLES[setting]}: {lead}")
    return "\n".join(lines) + "\n"


def gd_variants(results: Results) -> str:
    last = results.gd.groupby("variant", sort=False).tail(1)
    parts = [
        f"{r.variant} ({r.updates} updates, {r.seconds:.0f} s): {100 * r.val_accuracy:.1f}%"
        for r in last.itertuples()
    ]
    section = results.params["gd_variants"]
    return (
        f"Plain SGD at its rate from params.yaml on the first {section['images']} training "
        f"images, {section['epochs']} epochs, validation accuracy: " + "; ".join(parts) + ".\n"
    )


def champion(results: Results) -> str:
    c = results.champion
    name = f"{c['optimizer']}-{c['seed']}" + ("-tuned" if c["setting"] == "tuned" else "")
    return (
        f"In the committed run the champion is `{name}` ({c['setting']} rate "
        f"{rate(c['learning_rate'])}, validation accuracy {c['val_accuracy']:.4f}).\n"
    )


def cost(results: Results) -> str:
    """Training seconds per workload and stage kind, from each workload's runs.csv (the fit
    alone, validation passes included; a tuned run that reused its default run counts once,
    as the default run)."""
    lines = ["| workload | runs | count | fit seconds each (median, min-max) | fit seconds in all |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    reused = 0
    for workload, runs in results.runs_of.items():
        trained = runs.drop_duplicates(subset=["optimizer", "seed", "learning_rate"])
        reused += len(runs) - len(trained)
        for setting, group in trained.groupby("setting", sort=False):
            seconds = group["train_seconds"]
            lines.append(
                f"| {workload} | `{'train' if setting == 'default' else 'train_tuned'}@` trained "
                f"| {len(group)} | {seconds.median():.0f} ({seconds.min():.0f}-{seconds.max():.0f}) "
                f"| {seconds.sum():.0f} |"
            )
    return "\n".join(lines) + (
        f"\n\n{reused} tuned runs took their default run as it was (the search kept the "
        f"default rate). Measured on {machine(results)}.\n"
    )


def describe_model(config: ModelConfig) -> str:
    """`conv 32, 64, pool; conv 64, pool; dense 128` ('logistic regression' for neither)."""
    parts = [f"conv {', '.join(map(str, block))}, pool" for block in config.conv_blocks]
    if config.dense_units:
        parts.append(f"dense {', '.join(map(str, config.dense_units))}")
    return "; ".join(parts) or "softmax on the pixels"


def catalog(results: Results) -> str:
    """The workloads of params.yaml: data set, model, trainable parameters, targets."""
    lines = ["| workload | data set | model | parameters | targets | compared |",
             "|---|---|---|---:|---|---|"]  # fmt: skip
    for name in results.params["workloads"]:
        w = workloads.workload(results.params, name)
        count = sum(parameter_counts(w.model, IMAGE_SHAPE).values())
        lines.append(f"| `{name}` | {w.data} | {describe_model(w.model)} | {count:,} | "
                     f"{', '.join(f'{t:g}' for t in w.targets)} | "
                     f"{'yes' if name in results.workloads else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def per_workload(results: Results) -> str:
    """Mean test accuracy (%) of every optimizer on every workload, a row per workload and
    setting: the headline of each workload side by side."""
    names = list(dict.fromkeys(o for t in results.comparisons.values() for o in t["optimizer"]))
    lines = ["| workload | learning rates | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]  # fmt: skip
    for setting in SETTINGS:
        for workload, table in results.comparisons.items():
            rows = table[table["setting"] == setting].set_index("optimizer")["test_accuracy_%"]
            cells = ["" if pd.isna(rows.get(n)) else f"{rows[n]:.2f}" for n in names]
            lines.append(f"| {workload} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def profile_scores(results: Results) -> str:
    """The performance-profile scores per setting and optimizer, on steps and on seconds,
    and each workload's steps to its target: the report's table."""
    table = tables.readable_scores(results.scores, results.targets)
    lines = ["| " + " | ".join(table.columns) + " |",
             "|---|---|" + "---:|" * (len(table.columns) - 2)]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def across(results: Results) -> str:
    """The report's sentences on what holds on every workload and what does not."""
    sentences = tables.across_workloads(results.comparisons, results.significances,
                                        results.scores)  # fmt: skip
    return "\n".join(f"- {s}" for s in sentences) + "\n"


def full_space(results: Results) -> str:
    """The full search space against the learning rate alone, from results/full_space/."""
    evaluate = results.params["evaluate"]
    return spaces.summary(results.root, results.params["optimizers"],
                          1 - evaluate["confidence"], evaluate["margin"])  # fmt: skip


BLOCKS: dict[str, Callable[[Results], str]] = {
    "workload-catalog": catalog,
    "per-workload": per_workload,
    "profile-scores": profile_scores,
    "across-workloads": across,
    "results-setup": setup,
    "results-default": lambda r: results_table(r, "default"),
    "results-tuned": lambda r: results_table(r, "tuned"),
    "verdicts": verdicts,
    "gd-variants": gd_variants,
    "champion": champion,
    "cost": cost,
    "full-space": full_space,
    "full-space-details": lambda r: spaces.details(r.root),
}


def filled(text: str, results: Results, page: str) -> str:
    """``text`` with every block written anew; an unknown block name is an error."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"{page}: unknown numbers block {name!r}; known: {', '.join(BLOCKS)}")
        return match["open"] + BLOCKS[name](results) + match["close"]

    return BLOCK.sub(fill, text)


def pages(root: Path) -> list[Path]:
    return [p for pattern in PAGES for p in sorted(root.glob(pattern))]


def stale_pages(root: Path = Path(".")) -> dict[Path, tuple[str, str]]:
    """Each page whose blocks differ from what the results give: its text as it should be,
    and the diff."""
    results = Results(root)
    stale = {}
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        new = filled(text, results, str(page))
        if new != text:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), str(page),
                                        "from the results", lineterm="", n=0)  # fmt: skip
            stale[page] = (new, "\n".join(diff))
    return stale


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_optimizers.doc_numbers",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = stale_pages()
    for page, (new, diff) in stale.items():
        if args.check:
            print(diff)
        else:
            write_text_atomic(page, new, output=False)
            print(f"{page}: numbers written from the results")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
