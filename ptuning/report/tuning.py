"""The tables of `ptuning tune`: what was chosen on validation data, and what it gives on the test split beside the
job file's own settings, with 95% intervals and a controlled comparison with full fine-tuning."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ptuning.report import stats

TUNE_HEADERS = ["row", "job", "chosen point (of N)", "val. acc. (search)", "tuned: test acc. (%)", "95% CI",
                "fixed: test acc. (%)", "95% CI", "tuned − fixed", "vs full FT (tuned)", "seeds needed"]
TUNE_NOTES = (
    "Heldout protocol throughout: the point is chosen by validation accuracy on reviews held out from train (search "
    "runs: search seeds, --budget-epochs); the test split is read only for the figures here. tuned: the chosen point "
    "with every seed; fixed: the job file's own settings (the exercise's learning rate) with the same seeds. 95% CI: "
    "t-based, for the mean over seeds (n ≥ 2). vs full FT: difference of means against tuned full fine-tuning, "
    "paired by seed where the runs share their data order (else Welch), p Holm-adjusted across the rows compared; "
    "seeds needed: per row, to detect that difference at 80% power if the observed spreads are the true ones "
    "(\">1000\": more than 1,000)."
)


def _summary(runs: list[dict[str, Any]]) -> tuple[str, str, float | None]:
    values = [stats.reported_accuracy(r) for r in runs]
    summary = stats.summarize(v for v in values if v is not None)
    interval = stats.confidence_interval(v for v in values if v is not None)
    return summary.text(), interval.text() if interval else "–", summary.mean


def tune_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per tuned job (rows from `ptuning.run.tune.tune_rows`), then each job's grid."""
    lines = []
    for r in rows:
        job, entry = r["job"], r["entry"]
        tuned, tuned_ci, tuned_mean = _summary(r["tuned"])
        fixed, fixed_ci, fixed_mean = _summary(r["fixed"])
        delta = f"{tuned_mean - fixed_mean:+.1f}" if tuned_mean is not None and fixed_mean is not None else "–"
        comparison = r.get("comparison")
        needed = stats.seeds_needed_text(comparison)
        chosen = entry["grid"][entry["chosen"]]
        lines.append([job.row, job.name, f"{entry['chosen']} (of {len(entry['grid'])})",
                      f"{chosen['mean']:.1f} (n={len(chosen['validation_accuracy'])})", tuned, tuned_ci, fixed, fixed_ci, delta,
                      comparison.text() if comparison else "–", needed])
    out = ["## Tuned on validation data, reported on test", "",
           tabulate(lines, headers=TUNE_HEADERS, tablefmt="github", disable_numparse=True), "", TUNE_NOTES, ""]
    for r in rows:
        entry = r["entry"]
        grid = [[point, f"{v['mean']:.2f}", ", ".join(f"{x:.2f}" for x in v["validation_accuracy"]),
                 "chosen" if point == entry["chosen"] else ""] for point, v in entry["grid"].items()]
        out += [f"### {r['job'].name}: validation accuracy of each point (%)", "",
                tabulate(grid, headers=["point", "mean", "per search seed", ""], tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)
