"""Aggregating runs over seeds, and comparing a row with full fine-tuning.

A table row is one (job, protocol) pair; its runs are the completed result files of that job under
that protocol, one per seed. The row's figure is the mean of the runs' reported accuracies with the
sample standard deviation (n - 1 in the denominator).

Comparison rule (documented in docs/results.md): a row differs from full fine-tuning "beyond the seed
spread" when a two-sided t-test on the per-seed accuracies gives p < 0.05 after Holm's correction across
the rows compared under one protocol. The test is paired (per seed) when both rows ran the same seeds on
the same data in the same order, Welch's otherwise. Both rows need n >= 2, otherwise the verdict is
"n too small". Each comparison also says how many seeds per row would detect the observed difference
with 80% power. Student's t and the noncentral t are computed here (no scipy at run time);
tests/report/test_significance.py checks every figure against scipy.stats. With 2–3 seeds the test has
little power: "within noise" means "not shown to differ", not "equal".
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

    def text(self, digits: int = 1, compact: bool = False) -> str:
        """'89.4 ± 0.3 (n=2)', or '89.4 (n=1)' — no ± for a single run; `compact`: '89.4 ± 0.3 (2)'."""
        if not self.n or self.mean is None:
            return "–"
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{spread} ({'' if compact else 'n='}{self.n})"


def signed(value: float | None, digits: int = 1) -> str:
    """A difference with its sign: '+0.5', '-2.1'; one that rounds to zero is '0.0', never '-0.0' or '+0.0'."""
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


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
    test: str = "welch"  # or "paired" (the same seeds: the same data order)
    p_adjusted: float | None = None  # Holm-adjusted across the rows compared (the verdict then uses it)
    seeds_needed: int | None = None  # per row, to detect the observed difference at 80% power (None: more than MAX_SEEDS)

    def text(self) -> str:
        if self.verdict == TOO_SMALL:
            return TOO_SMALL
        p = "p<0.001" if self.p < 0.001 else f"p={self.p:.3f}"
        if self.p_adjusted is not None:
            adjusted = "<0.001" if self.p_adjusted < 0.001 else f"{self.p_adjusted:.3f}"
            p += f" (Holm {adjusted}, {self.test})"
        return f"{signed(self.difference)}, {p}: {self.verdict}"

    def short_text(self) -> str:
        """'+0.5 within noise', '-2.1 differs', '-0.3 n too small' (no p-value: the wide table has it)."""
        return f"{signed(self.difference)} {self.verdict}" if self.difference is not None else self.verdict


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
        return _verdict(diff, None, None, 0.0, alpha, "welch")
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return _verdict(diff, diff / math.sqrt(se2), df, math.sqrt(se2), alpha, "welch")


# -- confidence intervals, the paired test, Holm's correction, power ---------------------------------


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The t with P(T <= t) = q (0 < q < 1), by bisection on `t_cdf` (to about 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile of {q!r}: must be strictly between 0 and 1")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float

    def text(self, digits: int = 1) -> str:
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"


def confidence_interval(values: Iterable[float], level: float = 0.95) -> Interval | None:
    """The t-based interval for the mean: mean ± t(1 - (1 - level)/2, n - 1) · s / √n; None below two values."""
    s = summarize(values)
    if s.n < 2:
        return None
    half = t_quantile(0.5 + level / 2.0, s.n - 1) * s.std / math.sqrt(s.n)
    return Interval(s.mean - half, s.mean + half, level)


def _verdict(difference: float, t: float | None, df: float | None, se: float, alpha: float, test: str) -> Comparison:
    if se == 0.0:  # deterministic runs: the same figure differs or it does not
        p = 1.0 if difference == 0.0 else 0.0
        return Comparison(difference, p, None, DIFFERS if p < alpha else WITHIN_NOISE, test)
    p = t_two_sided_p(t, df)
    return Comparison(difference, p, df, DIFFERS if p < alpha else WITHIN_NOISE, test)


def paired(a: Iterable[float], b: Iterable[float], alpha: float = ALPHA) -> Comparison:
    """The paired t-test of mean(a - b), a[i] and b[i] being one pair (the same seed); TOO_SMALL below two pairs."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths ({len(a)} and {len(b)})")
    d = summarize(x - y for x, y in zip(a, b))
    if d.n < 2:
        return Comparison(d.mean, None, None, TOO_SMALL, "paired")
    se = d.std / math.sqrt(d.n)
    return _verdict(d.mean, d.mean / se if se else None, d.n - 1, se, alpha, "paired")


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values given (None: not compared, left out and kept None).

    Sorted ascending, the i-th of m gets max over j <= i of min(1, (m - j + 1) · p_(j)); a hypothesis is rejected
    at level alpha when its adjusted p-value is below alpha (the family-wise error rate is then at most alpha)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(known)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def nct_cdf(t: float, df: float, nc: float) -> float:
    """P(T' <= t) for the noncentral t with `df` degrees of freedom and noncentrality `nc`.

    T' = (Z + nc) / U with U = sqrt(V / df), V chi-squared with df degrees of freedom, so
    P(T' <= t) = E[Φ(t·U - nc)]: integrated here over U's density with Simpson's rule (numpy)."""
    import numpy as np

    spread = 15.0 / math.sqrt(df)
    low, high = max(0.0, 1.0 - spread), 1.0 + spread + (10.0 if df < 4 else 0.0)
    # u = w²: U's density has a u^(df-1) cusp at 0 for small df; in w it is smooth, and Simpson's rule is accurate
    w = np.linspace(math.sqrt(low), math.sqrt(high), 8001)
    u = w * w
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    log_density = (math.log(4.0) + (df / 2.0) * math.log(df / 2.0) - math.lgamma(df / 2.0)
                   + (2.0 * df - 1.0) * log_w - df * u * u / 2.0)  # g(w²)·2w, g the density of sqrt(V / df)
    density = np.exp(np.where(w > 0, log_density, -np.inf))
    values = 0.5 * _erfc_vec(-(t * w * w - nc) / math.sqrt(2.0)) * density
    step = w[1] - w[0]
    weights = np.ones_like(w)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return float(min(1.0, max(0.0, step / 3.0 * np.dot(weights, values))))


def _erfc_vec(x):
    import numpy as np

    return np.array([math.erfc(v) for v in x.tolist()]) if x.size < 64 else np.vectorize(math.erfc, otypes=[float])(x)


#: `seeds_needed` looks no further than this many seeds per row
MAX_SEEDS = 1000
POWER = 0.8


def power(n: int, difference: float, sd_a: float, sd_b: float | None = None, alpha: float = ALPHA) -> float:
    """Power of the two-sided test at level `alpha` to detect `difference` with `n` seeds per row.

    Paired (`sd_b` None; `sd_a` is the spread of the per-seed differences): t = mean(d) / (s_d / √n), n - 1 df.
    Welch (`sd_b` given): t = difference / √((s_a² + s_b²) / n), Welch–Satterthwaite df at n seeds each.
    The statistic then follows a noncentral t with noncentrality difference / standard error."""
    if sd_b is None:
        se, df = sd_a / math.sqrt(n), n - 1.0
    else:
        va, vb = sd_a**2 / n, sd_b**2 / n
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1)) if va + vb > 0 else n - 1.0
    if se == 0.0:
        return 1.0 if difference != 0.0 else alpha
    nc = difference / se
    critical = t_quantile(1.0 - alpha / 2.0, df)
    return (1.0 - nct_cdf(critical, df, nc)) + nct_cdf(-critical, df, nc)


def seeds_needed(difference: float, sd_a: float, sd_b: float | None = None, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """The fewest seeds per row (at least 2) at which the test would detect `difference` with power `target`, taking
    the observed spreads as the true ones; None when no difference was observed or more than MAX_SEEDS are needed."""
    if difference == 0.0 or not math.isfinite(difference):
        return None
    if power(MAX_SEEDS, difference, sd_a, sd_b, alpha) < target:
        return None
    low, high = 2, MAX_SEEDS  # power grows with n: bisect for the first n reaching the target
    if power(low, difference, sd_a, sd_b, alpha) >= target:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        if power(mid, difference, sd_a, sd_b, alpha) >= target:
            high = mid
        else:
            low = mid
    return high


def seeds_needed_text(comparison: Comparison | None) -> str:
    """A table's cell for the seeds per row at 80% power: a number, '>1000' (more than MAX_SEEDS), or '–' (no test,
    or no difference to detect)."""
    if comparison is None or comparison.p_adjusted is None or not comparison.difference:
        return "–"
    return str(comparison.seeds_needed) if comparison.seeds_needed is not None else f">{MAX_SEEDS}"


#: the settings that fix a run's data order: runs that agree on them and on the seed saw the same batches
DATA_ORDER = ("dataset", "dataset_config", "train_limit", "batch_size", "protocol", "heldout_size", "heldout_seed")


def same_data_order(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two rows' runs pair up seed by seed on the same data in the same order (same seeds, same data
    settings: the same seed gives the same shuffle), so that a paired test applies."""
    seeds_a, seeds_b = [seed_of(r) for r in a], [seed_of(r) for r in b]
    if sorted(seeds_a) != sorted(seeds_b) or len(set(seeds_a)) != len(seeds_a):
        return False
    orders = {tuple((r.get("config") or {}).get(k) for k in DATA_ORDER) for r in a + b}
    return len(orders) == 1


def compare_runs(rows: dict[str, list[dict[str, Any]]], reference: list[dict[str, Any]], reference_name: str = REFERENCE_JOB,
                 alpha: float = ALPHA) -> dict[str, Comparison]:
    """Each row's completed runs against the reference's: the paired t-test on the per-seed figures where the runs
    share their data order (`same_data_order`), else Welch's; p-values Holm-adjusted across the rows compared, the
    verdict taken from the adjusted p; and the seeds per row that would detect the observed difference at 80%
    power (the observed spreads taken as the true ones)."""
    raw: dict[str, Comparison] = {}
    spreads: dict[str, tuple[float, float | None]] = {}
    ref_by_seed = {seed_of(r): reported_accuracy(r) for r in reference}
    for name, runs in rows.items():
        if name == reference_name or not runs or not reference:
            continue
        if same_data_order(runs, reference):
            mine = sorted(runs, key=seed_of)
            a = [reported_accuracy(r) for r in mine]
            b = [ref_by_seed[seed_of(r)] for r in mine]
            raw[name] = paired(a, b, alpha)
            diffs = summarize(x - y for x, y in zip(a, b))
            spreads[name] = (diffs.std or 0.0, None)
        else:
            a, b = [reported_accuracy(r) for r in runs], list(ref_by_seed.values())
            raw[name] = welch(a, b, alpha)
            spreads[name] = (summarize(a).std or 0.0, summarize(b).std or 0.0)
    names = [n for n, c in raw.items() if c.p is not None]
    adjusted = dict(zip(names, holm([raw[n].p for n in names])))
    out = {}
    for name, c in raw.items():
        if name not in adjusted:
            out[name] = c
            continue
        verdict = DIFFERS if adjusted[name] < alpha else WITHIN_NOISE
        needed = seeds_needed(c.difference, *spreads[name], alpha=alpha) if c.difference is not None else None
        out[name] = Comparison(c.difference, c.p, c.df, verdict, c.test, adjusted[name], needed)
    return out


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
    """(job, protocol) → its comparison with the reference job under the same protocol (None: no comparison), by
    `compare_runs`: paired where the runs share their data order, else Welch's; Holm-adjusted across the rows
    of that protocol."""
    out: dict[tuple[str, str], Comparison | None] = {(row.job.name, row.protocol): None for row in rows_}
    for protocol in {row.protocol for row in rows_ if row.protocol is not None}:
        mine = [row for row in rows_ if row.protocol == protocol and row.completed]
        ref = next((row for row in mine if row.job.name == reference), None)
        if ref is None:
            continue
        found = compare_runs({row.job.name: [r for r in row.completed if reported_accuracy(r) is not None] for row in mine},
                             [r for r in ref.completed if reported_accuracy(r) is not None], reference)
        for name, comparison in found.items():
            out[(name, protocol)] = comparison
    return out
