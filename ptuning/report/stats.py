"""Aggregating runs over seeds, and comparing a row with full fine-tuning.

A table row is one (job, protocol) pair; its runs are the completed result files of that job under
that protocol, one per seed. The row's figure is the mean of the runs' reported accuracies with the
sample standard deviation (n - 1 in the denominator).

Comparison rule (documented in docs/results.md): a row differs from full fine-tuning "beyond the seed
spread" when Welch's two-sided t-test on the per-seed accuracies gives p < 0.05. Both rows need
n >= 2, otherwise the verdict is "n too small". The p-value uses Student's t distribution with the
Welch–Satterthwaite degrees of freedom (computed here from the regularized incomplete beta function,
no scipy). With 2–3 seeds the test has little power: "within noise" means "not shown to differ",
not "equal".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

ALPHA = 0.05
DIFFERS = "differs"
WITHIN_NOISE = "within noise"
TOO_SMALL = "n too small"
REFERENCE_JOB = "full_ft"


# -- summaries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation; None when n < 2

    def text(self, digits: int = 1) -> str:
        """'89.4 ± 0.3 (n=2)', or '89.4 (n=1)' — no ± for a single run."""
        if not self.n or self.mean is None:
            return "–"
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def summarize(values: Iterable[float]) -> Summary:
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Summary(0, None, None)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n >= 2 else None
    return Summary(n, mean, std)


# -- Welch's t-test ----------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` (real, > 0) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class Comparison:
    difference: float | None  # mean(row) - mean(reference)
    p: float | None
    df: float | None
    verdict: str

    def text(self) -> str:
        if self.verdict == TOO_SMALL:
            return TOO_SMALL
        p = "p<0.001" if self.p < 0.001 else f"p={self.p:.3f}"
        return f"{self.difference:+.1f}, {p}: {self.verdict}"


def welch(a: Iterable[float], b: Iterable[float], alpha: float = ALPHA) -> Comparison:
    """Welch's t-test of mean(a) - mean(b); verdict DIFFERS when p < alpha, TOO_SMALL when n < 2.

    When both samples have zero spread the p-value is 0 for different means and 1 for equal ones
    (deterministic runs, e.g. zero-shot against itself).
    """
    sa, sb = summarize(a), summarize(b)
    if sa.n < 2 or sb.n < 2:
        diff = sa.mean - sb.mean if sa.n and sb.n else None
        return Comparison(diff, None, None, TOO_SMALL)
    diff = sa.mean - sb.mean
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se2 = va + vb
    if se2 == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return Comparison(diff, p, None, DIFFERS if p < alpha else WITHIN_NOISE)
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    p = t_two_sided_p(t, df)
    return Comparison(diff, p, df, DIFFERS if p < alpha else WITHIN_NOISE)


# -- table rows from result files ---------------------------------------------------------------


def protocol_of(result: dict[str, Any]) -> str:
    return result.get("protocol") or result.get("config", {}).get("protocol") or "faithful"


def reported_accuracy(result: dict[str, Any]) -> float | None:
    """The run's figure: test accuracy at the selected epoch (max over epochs for faithful results)."""
    value = result.get("reported_accuracy")
    return value if value is not None else result.get("max_accuracy")


def selected_epoch(result: dict[str, Any]) -> int | None:
    value = result.get("selected_epoch")
    return value if value is not None else result.get("max_epoch")


def seed_of(result: dict[str, Any]) -> int:
    return result.get("config", {}).get("seed", 0)


@dataclass
class Row:
    """One table row: a job under one protocol, with its runs (one per seed)."""

    job: Any
    protocol: str | None  # None: nothing has run
    completed: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [a for a in (reported_accuracy(r) for r in self.completed) if a is not None]

    @property
    def accuracy(self) -> Summary:
        return summarize(self.accuracies)

    def mean_of(self, key: str) -> float | None:
        values = [r[key] for r in self.completed if r.get(key) is not None]
        return math.fsum(values) / len(values) if values else None

    def max_of(self, key: str) -> Any:
        values = [r[key] for r in self.completed if r.get(key) is not None]
        return max(values) if values else None

    def curve(self, key: str = "accuracy") -> tuple[list[int], list[float]]:
        """(epochs, mean of `key` over the seeds that have that epoch)."""
        by_epoch: dict[int, list[float]] = {}
        for r in self.completed:
            for e in r.get("epochs", []):
                if e.get(key) is not None:
                    by_epoch.setdefault(e["epoch"], []).append(e[key])
        epochs = sorted(by_epoch)
        return epochs, [math.fsum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]

    @property
    def params(self) -> dict[str, Any] | None:
        for r in self.completed:
            if r.get("params"):
                return r["params"]
        return None


def rows(jobs, results: dict[str, list[dict[str, Any]]]) -> list[Row]:
    """Table rows in job order; within a job, faithful before heldout; a job with no results is one row."""
    from ptuning.protocol import PROTOCOLS

    out = []
    for job in jobs:
        runs = results.get(job.name) or []
        protocols = sorted({protocol_of(r) for r in runs}, key=lambda p: (PROTOCOLS.index(p) if p in PROTOCOLS else len(PROTOCOLS), p))
        if not protocols:
            out.append(Row(job, None))
            continue
        for protocol in protocols:
            mine = sorted((r for r in runs if protocol_of(r) == protocol), key=seed_of)
            out.append(
                Row(
                    job,
                    protocol,
                    completed=[r for r in mine if r.get("status") == "completed"],
                    failed=[r for r in mine if r.get("status") == "failed"],
                )
            )
    return out


def compare_with_reference(rows_: list[Row], reference: str = REFERENCE_JOB) -> dict[tuple[str, str], Comparison | None]:
    """(job, protocol) → its comparison with the reference job under the same protocol (None: no comparison)."""
    refs = {r.protocol: r for r in rows_ if r.job.name == reference and r.completed}
    out: dict[tuple[str, str], Comparison | None] = {}
    for row in rows_:
        ref = refs.get(row.protocol)
        if row.protocol is None or not row.completed or ref is None or row.job.name == reference:
            out[(row.job.name, row.protocol)] = None
        else:
            out[(row.job.name, row.protocol)] = welch(row.accuracies, ref.accuracies)
    return out
