"""Statistics for the token-reduction evaluation: bootstrap intervals, paired differences, trivial baselines,
tier policies and the envelope of constant tier policies.

Stand-alone on purpose, like `metrics`: it imports nothing from the rest of the package and no torch or scipy
(numpy only), so it can be loaded on its own. Every input is a per-sample sequence in dataset order, and every
method is run on the same questions, so comparisons between methods are *paired*: a resample draws one set of
question indices and every method is scored on those same questions. Resampling is seeded
(`numpy.random.default_rng(seed)`), so equal inputs and seed give equal outputs.

Conventions:

* scores are per-question metric scores in [0, 1] (exact match gives 0/1); "accuracy" is their mean.
* intervals are percentile bootstrap intervals: ``n_resamples`` resamples of the questions with replacement,
  ``low``/``high`` the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled
  statistic. The point estimate is the full-sample statistic (not the resample mean).
* tiers are indexed in ascending budget order (index 0 = fewest tokens); ``*_by_tier[t][i]`` is tier t's value
  on sample i.
* every returned number is a plain Python ``float``/``int`` (or None), so results go straight into JSON.
"""

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

# Resampled index blocks are drawn in chunks of about this many entries, so memory stays bounded for large sets.
_CHUNK_ENTRIES = 1 << 20


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _vector(values, name: str) -> np.ndarray:
    """`values` as a non-empty 1-D float array of finite numbers, or ValueError."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a statistic needs at least one sample")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _same_length(**arrays) -> int:
    """The common length of the named sequences, or ValueError naming every length."""
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise ValueError(f"length mismatch: {described} samples (they must be the same questions)")
    return next(iter(lengths.values()))


def _matrix(by_tier, name: str) -> np.ndarray:
    """``by_tier[t][i]`` as a (tiers, samples) float array, or ValueError (empty, ragged, non-finite)."""
    rows = [np.asarray(row, dtype=float) for row in by_tier]
    if not rows:
        raise ValueError(f"{name} has no tiers")
    _same_length(**{f"{name}[{t}]": row for t, row in enumerate(rows)})
    if rows[0].size == 0:
        raise ValueError(f"{name} has no samples")
    array = np.stack(rows)
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite numbers, one flat sequence per tier")
    return array


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------
def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `values` over `n_resamples` seeded resamples (with replacement) of its indices."""
    n = values.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // n)
    means = []
    for start in range(0, n_resamples, chunk):
        indices = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        means.append(values[indices].mean(axis=1))
    return np.concatenate(means)


def _percentile_interval(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> tuple:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(_resampled_means(values, n_resamples, seed), [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(scores: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> dict:
    """Percentile bootstrap interval of the mean of `scores`.

    Returns ``{"mean", "low", "high", "n"}``: the full-sample mean and the interval bounds. ValueError on an empty
    or non-finite input, a bad `confidence` (not in (0, 1)) or `n_resamples` (< 1). Constant scores (e.g. all 1)
    give a zero-width interval at that value.
    """
    _check_resampling(n_resamples, confidence)
    values = _vector(scores, "scores")
    low, high = _percentile_interval(values, n_resamples, confidence, seed)
    return {"mean": float(values.mean()), "low": low, "high": high, "n": int(values.size)}


def paired_difference(scores_a: Sequence[float], scores_b: Sequence[float], n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` score the same question i.

    Each resample draws one set of question indices and uses it for both methods, so per-question difficulty
    cancels and the interval is narrower than two independent intervals would suggest when the methods are
    correlated (they usually are: both fail the hard questions). Equivalent to `bootstrap_interval` of the
    per-question differences with the same seed. Returns ``{"difference", "low", "high", "n"}``; an interval
    that excludes 0 means the difference is significant at that confidence. ValueError, naming both lengths,
    when the sequences differ in length.
    """
    _check_resampling(n_resamples, confidence)
    _same_length(scores_a=scores_a, scores_b=scores_b)
    differences = _vector(scores_a, "scores_a") - _vector(scores_b, "scores_b")
    low, high = _percentile_interval(differences, n_resamples, confidence, seed)
    return {"difference": float(differences.mean()), "low": low, "high": high, "n": int(differences.size)}


# Two-sided 95% quantiles of Student's t at 1-10 degrees of freedom (beyond, `t_quantile` uses the Cornish-Fisher
# expansion, within 0.003 of the exact value from 11 on).
_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)
_Z_975 = 1.959964


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a two-sided 95% interval's half-width in
    standard errors)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 seeds), got {df}.")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def across_seeds(values) -> dict:
    """Mean, sample standard deviation, range and 95% t interval of one quantity measured once per seed."""
    values = _vector(values, "values")
    if values.size < 2:
        raise ValueError(f"the spread across seeds needs at least 2 seeds, got {values.size}.")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    half = t_quantile(values.size - 1) * std / math.sqrt(values.size)
    return {"mean": mean, "std": std, "min": float(values.min()), "max": float(values.max()),
            "low": mean - half, "high": mean + half, "n": int(values.size)}


def accuracy_with_intervals(scores: Sequence[float], tasks: Sequence[Hashable], n_resamples: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> dict:
    """Accuracy with bootstrap intervals, overall and per task family.

    Returns ``{"overall": {...}, "per_task": {task: {...}}}``, each entry ``{"mean", "low", "high", "n"}``
    (`bootstrap_interval`), tasks sorted by name. Each family is resampled within itself (its questions are a
    sample of that family), with the same seed. ValueError when `scores` and `tasks` differ in length.
    """
    _same_length(scores=scores, tasks=tasks)
    values = _vector(scores, "scores")
    by_task = {}
    for value, task in zip(values, tasks):
        by_task.setdefault(task, []).append(value)
    return {
        "overall": bootstrap_interval(values, n_resamples, confidence, seed),
        "per_task": {task: bootstrap_interval(by_task[task], n_resamples, confidence, seed)
                     for task in sorted(by_task, key=str)},
    }


# --------------------------------------------------------------------------------------------
# Trivial baselines
# --------------------------------------------------------------------------------------------
def chance_level(answers: Sequence[Hashable], tasks: Sequence[Hashable],
                 normalize: Callable[[str], str] | None = None) -> dict:
    """Trivial-baseline accuracies per task family, from the evaluated set's gold answers.

    For each family: ``"majority"`` is the accuracy of always giving the family's most common answer (ties:
    the smallest answer as text, which does not change the rate), ``"uniform"`` the expected accuracy of
    guessing uniformly among the family's ``n_distinct`` answers (``1 / n_distinct``). Report **majority**: it
    is the stronger trivial baseline (never below uniform) and the one a model must beat to show it reads the
    image rather than the answer prior. It is computed on the evaluated set itself, so it is slightly
    optimistic for the baseline (it knows the test answer distribution), which makes it a conservative bar.

    `answers[i]` is sample i's gold answer (one hashable value, e.g. the first/canonical reference);
    `normalize` (e.g. `metrics.normalize_vqa_answer`) is applied to each first, so answers that the metric
    treats as equal are counted together. Returns ``{"overall": {...}, "per_task": {task: {...}}}`` where each
    entry is ``{"majority", "uniform", "majority_answer", "n", "n_distinct"}``; ``overall`` is the
    sample-weighted mean of the per-family rates (a baseline that knows each question's family), with
    ``majority_answer`` None and ``n_distinct`` the distinct answers over all families.
    ValueError on empty input or a length mismatch.
    """
    _same_length(answers=answers, tasks=tasks)
    if len(answers) == 0:
        raise ValueError("answers is empty: a chance level needs at least one sample")
    keys = [normalize(a) if normalize is not None else a for a in answers]
    by_task = {}
    for key, task in zip(keys, tasks):
        by_task.setdefault(task, Counter())[key] += 1
    per_task = {}
    for task in sorted(by_task, key=str):
        counts = by_task[task]
        n = sum(counts.values())
        top = max(counts.values())
        per_task[task] = {
            "majority": top / n,
            "uniform": 1.0 / len(counts),
            "majority_answer": min((a for a, c in counts.items() if c == top), key=str),
            "n": n,
            "n_distinct": len(counts),
        }
    total = len(keys)
    overall = {
        "majority": sum(e["majority"] * e["n"] for e in per_task.values()) / total,
        "uniform": sum(e["uniform"] * e["n"] for e in per_task.values()) / total,
        "majority_answer": None,
        "n": total,
        "n_distinct": len(set(keys)),
    }
    return {"overall": overall, "per_task": per_task}


# --------------------------------------------------------------------------------------------
# Tier policies
# --------------------------------------------------------------------------------------------
def constant_tier_policies(scores_by_tier, counts_by_tier) -> list:
    """Accuracy and mean tokens of always using one tier: the forced run ``tier_<K>`` for each tier index.

    `scores_by_tier[t][i]`: tier t's score (or 0/1 correctness) on sample i; `counts_by_tier[t][i]`: its
    measured visual tokens. Returns one entry per tier index, ``[{"tier", "accuracy", "mean_tokens", "n"}]``.
    ValueError on ragged or mismatched tables.
    """
    scores = _matrix(scores_by_tier, "scores_by_tier")
    counts = _matrix(counts_by_tier, "counts_by_tier")
    if scores.shape != counts.shape:
        raise ValueError(f"scores_by_tier is {scores.shape} (tiers, samples) but counts_by_tier is {counts.shape}")
    return [{"tier": t, "accuracy": float(scores[t].mean()), "mean_tokens": float(counts[t].mean()),
             "n": int(scores.shape[1])} for t in range(scores.shape[0])]


def family_router(scores_by_tier, counts_by_tier, tasks: Sequence[Hashable]) -> dict:
    """The best router that knows only each question's family: per family, the constant tier that scores best on that
    family's questions (ties: the fewer tokens), chosen on the very questions it is scored on, so an upper bound for
    any allocation by family alone. Tables as `constant_tier_policies`; `tasks[i]` is sample i's family.

    Returns ``{"tiers": {family: tier index}, "scores": [...], "tokens": [...], "accuracy", "mean_tokens", "n"}``
    (per-sample scores and tokens of the routed tiers, for paired comparisons). ValueError on mismatched lengths.
    """
    scores, counts = _matrix(scores_by_tier, "scores_by_tier"), _matrix(counts_by_tier, "counts_by_tier")
    if scores.shape != counts.shape:
        raise ValueError(f"scores_by_tier is {scores.shape} (tiers, samples) but counts_by_tier is {counts.shape}")
    tasks = np.asarray(list(tasks), dtype=object)
    if tasks.shape != (scores.shape[1],):
        raise ValueError(f"tasks has {tasks.shape[0]} entries for {scores.shape[1]} samples")
    chosen, routed = {}, np.zeros(scores.shape[1], dtype=int)
    for family in sorted(set(tasks.tolist()), key=str):
        rows = tasks == family
        chosen[family] = int(min(range(scores.shape[0]),
                                 key=lambda t: (-scores[t, rows].mean(), counts[t, rows].mean())))
        routed[rows] = chosen[family]
    picked = np.arange(scores.shape[1])
    routed_scores, routed_tokens = scores[routed, picked], counts[routed, picked]
    return {"tiers": chosen, "scores": routed_scores.tolist(), "tokens": routed_tokens.tolist(),
            "accuracy": float(routed_scores.mean()), "mean_tokens": float(routed_tokens.mean()),
            "n": int(scores.shape[1])}


def oracle_tiers(correct_by_tier) -> list:
    """Per sample, the smallest tier index whose run answers it (`correct_by_tier[t][i]` truthy), None where no
    tier does: the oracle-minimal tier that budget calibration is measured against."""
    correct = _matrix(correct_by_tier, "correct_by_tier") != 0
    answered, first = correct.any(axis=0), np.argmax(correct, axis=0)
    return [int(t) if ok else None for t, ok in zip(first, answered)]


def stable_tiers(correct_by_tier) -> list:
    """Per sample, the smallest tier index from which every larger tier answers too: the tier where reading holds,
    so a smaller tier's lucky guess (right at 4 tokens, wrong at 8 and 16) does not count as the question's need.
    None where the largest tier does not answer. Equals `oracle_tiers` wherever answering never stops as tokens
    grow, and is never below it."""
    correct = _matrix(correct_by_tier, "correct_by_tier") != 0
    holds = np.flip(np.logical_and.accumulate(np.flip(correct, axis=0), axis=0), axis=0)  # every tier >= t answers
    first = np.argmax(holds, axis=0)
    return [int(t) if ok else None for t, ok in zip(first, holds[-1])]


def family_means(values: Sequence[float | None], tasks: Sequence[Hashable], n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> dict:
    """The mean of per-sample `values` per family, with its bootstrap interval: ``{family: {"mean", "low", "high",
    "n"}}``; a None value leaves its sample out (a family with none kept: Nones and n 0). With the tokens of each
    sample's oracle tier (`tier_tokens`), how many tokens each family needs."""
    _same_length(values=values, tasks=tasks)
    result = {}
    for family in sorted(set(tasks), key=str):
        kept = [value for value, task in zip(values, tasks) if task == family and value is not None]
        result[family] = (bootstrap_interval(kept, n_resamples, confidence, seed) if kept
                          else {"mean": None, "low": None, "high": None, "n": 0})
    return result


def tier_tokens(tiers: Sequence[int | None], counts_by_tier) -> list:
    """Per sample, the measured tokens of its tier (`counts_by_tier[tiers[i]][i]`, None where the tier is None)."""
    counts = _matrix(counts_by_tier, "counts_by_tier")
    if len(tiers) != counts.shape[1]:
        raise ValueError(f"tiers has {len(tiers)} entries for {counts.shape[1]} samples in counts_by_tier")
    bad = [t for t in tiers if t is not None and not 0 <= int(t) < counts.shape[0]]
    if bad:
        raise ValueError(f"tier index {bad[0]} outside the {counts.shape[0]} tiers of counts_by_tier")
    return [None if t is None else float(counts[int(t), i]) for i, t in enumerate(tiers)]


def family_need(correct_by_tier, counts_by_tier, tasks: Sequence[Hashable], spent: dict | None = None,
                seed: int = 0) -> dict:
    """What each task family needs, in tokens, and what each policy in `spent` ({name: tokens per sample}) spent:
    ``{"oracle_minimal", "stable", "spent": {name: ...}}``, each ``{family: {"mean", "low", "high", "n"}}``
    (`family_means`). The oracle-minimal need is on the samples some tier answers, the stable tier's and every spent
    mean on the samples the largest tier answers, so the two compare sample by sample. eval.json's `policies.need`
    on test questions; tools/price_sweep.py on validation rows."""
    stable = stable_tiers(correct_by_tier)
    kept = [tier is not None for tier in stable]
    return {
        "oracle_minimal": family_means(tier_tokens(oracle_tiers(correct_by_tier), counts_by_tier), tasks, seed=seed),
        "stable": family_means(tier_tokens(stable, counts_by_tier), tasks, seed=seed),
        "spent": {name: family_means([t if k else None for t, k in zip(tokens, kept)], tasks, seed=seed)
                  for name, tokens in (spent or {}).items()},
    }


def oracle_policy(correct_by_tier, counts_by_tier) -> dict:
    """The oracle router: per sample, the smallest tier that answers correctly. An upper bound for any router
    over these tiers (best accuracy, and the fewest tokens at that accuracy).

    `correct_by_tier[t][i]`: whether tier t answers sample i (truthy; apply the score threshold first);
    `counts_by_tier[t][i]`: the measured visual tokens of tier t on sample i; tiers in ascending budget order.
    Returns ``{"tiers", "accuracy", "mean_tokens", "n", "n_no_oracle"}``: ``tiers[i]`` is the oracle tier
    index or None when no tier answers; ``accuracy`` the share of samples some tier answers; ``mean_tokens`` the
    oracle tier's tokens per sample, and **the largest tier's tokens where no tier answers** (a router cannot
    know a question is hopeless, so it is charged the most it could have spent; charging the smallest tier
    instead would make the bound cheaper). ValueError on ragged or mismatched tables.
    """
    correct = _matrix(correct_by_tier, "correct_by_tier") != 0
    counts = _matrix(counts_by_tier, "counts_by_tier")
    if correct.shape != counts.shape:
        raise ValueError(f"correct_by_tier is {correct.shape} (tiers, samples) but counts_by_tier is {counts.shape}")
    answered = correct.any(axis=0)
    first = np.argmax(correct, axis=0)  # first True; 0 where none, replaced below
    chosen = np.where(answered, first, correct.shape[0] - 1)
    tokens = counts[chosen, np.arange(correct.shape[1])]
    return {
        "tiers": oracle_tiers(correct),
        "accuracy": float(answered.mean()),
        "mean_tokens": float(tokens.mean()),
        "n": int(correct.shape[1]),
        "n_no_oracle": int((~answered).sum()),
    }


def calibration_vs_constant(predicted_tiers: Sequence[int], oracle_tiers: Sequence[int | None],
                            n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Does the tier predictor beat always predicting one tier? Exact-match rates against the oracle tier.

    Only samples with an oracle tier (not None) count. ``exact`` is the share where the predicted tier equals
    the oracle tier; ``constant_exact`` the same share for the best constant predictor, i.e. always the most
    common oracle tier (``constant_tier``; ties go to the smaller tier). ``difference``/``low``/``high`` is the
    paired bootstrap (`paired_difference`) of ``exact - constant_exact``. The best constant is chosen on the
    same samples, which flatters it slightly (a conservative comparison for the predictor). ``n`` counts the
    samples with an oracle, ``n_no_oracle`` the others; with no oracle at all every rate is None.
    ValueError on a length mismatch.
    """
    _same_length(predicted_tiers=predicted_tiers, oracle_tiers=oracle_tiers)
    pairs = [(int(p), int(o)) for p, o in zip(predicted_tiers, oracle_tiers) if o is not None]
    result = {"n": len(pairs), "n_no_oracle": len(oracle_tiers) - len(pairs)}
    if not pairs:
        return {**result, "exact": None, "constant_tier": None, "constant_exact": None,
                "difference": None, "low": None, "high": None}
    predicted, oracle = np.array(pairs).T
    tiers, counts = np.unique(oracle, return_counts=True)
    constant = int(tiers[np.argmax(counts)])  # np.unique sorts, argmax takes the first max: smallest tier
    hits, constant_hits = (predicted == oracle).astype(float), (oracle == constant).astype(float)
    paired = paired_difference(hits, constant_hits, n_resamples, confidence, seed)
    return {**result, "exact": float(hits.mean()), "constant_tier": constant,
            "constant_exact": float(constant_hits.mean()), "difference": paired["difference"],
            "low": paired["low"], "high": paired["high"]}


# --------------------------------------------------------------------------------------------
# Forced-tier envelope: what constant policies reach
# --------------------------------------------------------------------------------------------
def _frontier_order(tokens: Sequence[float], accuracies: Sequence[float]) -> list:
    """Indices of the points in ascending token order; of points with equal mean tokens (e.g. two tiers that both
    exceed the grid and keep every patch) only the most accurate is kept."""
    if len(tokens) == 0:
        raise ValueError("the frontier has no points")
    if any(not np.isfinite(t) or t <= 0 for t in tokens):
        raise ValueError(f"frontier token counts must be positive and finite, got {list(tokens)}")
    best = {}
    for index, (t, a) in enumerate(zip(tokens, accuracies)):
        if t not in best or a > accuracies[best[t]]:
            best[t] = index
    return [best[t] for t in sorted(best)]


def envelope_vertices(tokens: Sequence[float], accuracies: Sequence[float]) -> list:
    """Indices (ascending tokens) of the vertices of the constant policies' envelope: the upper concave hull of the
    (mean tokens, accuracy) points up to the most accurate one. A random mix of two fixed tiers reaches every point
    of the segment between them (tokens and accuracy are both averages), and a policy may always spend fewer tokens
    than it is allowed, so past the most accurate point the envelope is flat."""
    order = _frontier_order(tokens, accuracies)
    best = max(order, key=lambda i: (accuracies[i], -tokens[i]))
    hull = []
    for index in order[: order.index(best) + 1]:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = [(tokens[i], accuracies[i]) for i in hull[-2:]]
            x2, y2 = tokens[index], accuracies[index]
            if (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) >= 0:  # hull[-1] lies on or below the chord
                hull.pop()
            else:
                break
        hull.append(index)
    return hull


def _bracket(tokens: np.ndarray, x: float) -> tuple:
    """For ascending positive envelope vertex `tokens` and x > 0: (lower index, upper index, weight of upper,
    extrapolated), the weight linear in tokens (the mixing probability). Below the first vertex both indices are it
    and extrapolated is True (no constant policy spends fewer tokens); past the last, both are the last (flat)."""
    if x <= tokens[0]:
        return 0, 0, 0.0, bool(x != tokens[0])
    if x >= tokens[-1]:
        return len(tokens) - 1, len(tokens) - 1, 0.0, False
    upper = int(np.searchsorted(tokens, x, side="right"))
    lower = upper - 1
    if x == tokens[lower]:
        return lower, lower, 0.0, False
    return lower, upper, float((x - tokens[lower]) / (tokens[upper] - tokens[lower])), False


def frontier_at(points: Sequence[tuple], x: float) -> dict:
    """The constant policies' envelope at `x` mean tokens (`envelope_vertices`): the best accuracy any fixed tier,
    or random mix of two, reaches while spending at most `x` tokens on average.

    `points`: one ``(mean_tokens, accuracy)`` per forced tier, any order. Below the smallest tier's tokens the value
    is that tier's and ``extrapolated`` is True. Returns ``{"value", "extrapolated", "lower_tokens", "upper_tokens",
    "weight"}``: value = (1 - weight) * accuracy at lower_tokens + weight * accuracy at upper_tokens, both hull
    vertices. ValueError on no points, non-positive tokens or x <= 0.
    """
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"x must be a positive number of tokens, got {x!r}")
    tokens = [float(t) for t, _ in points]
    accuracies = [float(a) for _, a in points]
    hull = envelope_vertices(tokens, accuracies)
    xs = np.array([tokens[i] for i in hull])
    ys = [accuracies[i] for i in hull]
    lower, upper, weight, extrapolated = _bracket(xs, float(x))
    return {"value": float((1.0 - weight) * ys[lower] + weight * ys[upper]), "extrapolated": extrapolated,
            "lower_tokens": float(xs[lower]), "upper_tokens": float(xs[upper]), "weight": weight}


def frontier_difference(auto_scores: Sequence[float], auto_tokens: Sequence[float],
                        tier_scores: Mapping[Hashable, Sequence[float]],
                        tier_tokens: Mapping[Hashable, Sequence[float]], n_resamples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of auto's accuracy minus the constant policies' envelope at auto's mean tokens.

    `tier_scores` / `tier_tokens` map a tier value (e.g. 64) to that forced tier's per-sample scores / measured
    tokens, on the same questions as `auto_scores` / `auto_tokens`. The envelope's two vertices bracketing auto's
    full-sample mean tokens (`envelope_vertices` on the tiers' full-sample means) and the mixing weight are fixed
    once: the envelope policy answers question i with ``(1 - w) * lower[i] + w * upper[i]`` (a random mix of the
    two tiers, in expectation), and `paired_difference` resamples it with auto on the same questions. The
    variability of auto's mean tokens is not resampled: the comparison is conditional on auto's measured cost.

    Returns ``{"difference", "low", "high", "n", "lower_tier", "upper_tier", "weight", "auto_mean_tokens",
    "frontier_accuracy", "extrapolated"}``; a positive difference whose interval excludes 0 means auto beats every
    constant policy at its mean cost. Below the smallest tier's tokens that tier is used alone and ``extrapolated``
    is True. ValueError on empty tier maps, mismatched keys or lengths.
    """
    if not tier_scores:
        raise ValueError("tier_scores is empty: the frontier needs at least one forced tier")
    if set(tier_scores) != set(tier_tokens):
        raise ValueError(f"tier_scores has tiers {sorted(tier_scores, key=str)} but tier_tokens has "
                         f"{sorted(tier_tokens, key=str)}")
    lengths = {"auto_scores": auto_scores, "auto_tokens": auto_tokens}
    for tier in tier_scores:
        lengths[f"tier_scores[{tier}]"] = tier_scores[tier]
        lengths[f"tier_tokens[{tier}]"] = tier_tokens[tier]
    _same_length(**lengths)
    _check_resampling(n_resamples, confidence)
    auto = _vector(auto_scores, "auto_scores")
    auto_mean_tokens = float(_vector(auto_tokens, "auto_tokens").mean())
    if auto_mean_tokens <= 0:
        raise ValueError(f"auto's mean tokens must be positive, got {auto_mean_tokens}")
    names = list(tier_scores)
    scores = {name: _vector(tier_scores[name], f"tier_scores[{name}]") for name in names}
    means = [float(_vector(tier_tokens[name], f"tier_tokens[{name}]").mean()) for name in names]
    hull = envelope_vertices(means, [float(scores[name].mean()) for name in names])
    lower, upper, weight, extrapolated = _bracket(np.array([means[i] for i in hull]), auto_mean_tokens)
    lower_tier, upper_tier = names[hull[lower]], names[hull[upper]]
    frontier = (1.0 - weight) * scores[lower_tier] + weight * scores[upper_tier]
    paired = paired_difference(auto, frontier, n_resamples, confidence, seed)
    return {**paired, "lower_tier": lower_tier, "upper_tier": upper_tier, "weight": weight,
            "auto_mean_tokens": auto_mean_tokens, "frontier_accuracy": float(frontier.mean()),
            "extrapolated": extrapolated}


def fit_temperature(logits, targets, grid=None) -> dict:
    """The temperature T that minimizes the cross-entropy of `targets` ([N] class indices, or [N, C] non-negative
    class weights: -sum weight x log-probability per row) under softmax(logits / T) ([N, C]), searched on a log grid
    (default 1/8 to 16): {"temperature", "nll", "nll_at_1"}. Calibrates how peaked the budget predictor's tier
    probabilities are without changing its argmax."""
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0 or targets.shape[1:] not in ((),
                                                                                                      logits.shape[1:]):
        raise ValueError(f"logits must be [N, C] with one target per row, got {logits.shape} and {targets.shape}")
    if targets.ndim == 1 and (targets.dtype.kind not in "iu" or targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"class-index targets must be integers in [0, {logits.shape[1]}), got {targets.dtype} "
                         f"from {targets.min()} to {targets.max()}")
    if targets.ndim == 2 and targets.min() < 0:
        raise ValueError("target weights must be non-negative")
    soft = np.eye(logits.shape[1])[targets] if targets.ndim == 1 else targets.astype(np.float64)
    grid = np.geomspace(0.125, 16.0, 49) if grid is None else np.asarray(grid, np.float64)

    def nll(temperature):
        scaled = logits / temperature
        scaled = scaled - scaled.max(-1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
        return float(-(soft * log_probs).sum(-1).mean())

    losses = [nll(t) for t in grid]
    best = int(np.argmin(losses))
    return {"temperature": float(grid[best]), "nll": losses[best], "nll_at_1": nll(1.0)}


__all__ = [
    "accuracy_with_intervals",
    "across_seeds",
    "bootstrap_interval",
    "calibration_vs_constant",
    "chance_level",
    "constant_tier_policies",
    "envelope_vertices",
    "family_means",
    "family_need",
    "family_router",
    "fit_temperature",
    "frontier_at",
    "frontier_difference",
    "oracle_policy",
    "oracle_tiers",
    "paired_difference",
    "stable_tiers",
    "t_quantile",
    "tier_tokens",
]
