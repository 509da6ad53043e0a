"""Tests for modeling_arrcoc.statistics (pure Python + numpy, no torch).

The module is loaded from its path, not through the package: that skips the transformers import (seconds on a
loaded machine) and checks that it really is stand-alone (a relative import would fail here).
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "modeling_arrcoc" / "statistics.py"
_SPEC = importlib.util.spec_from_file_location("arrcoc_statistics_standalone", _PATH)
statistics = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(statistics)

accuracy_with_intervals = statistics.accuracy_with_intervals
bootstrap_interval = statistics.bootstrap_interval
calibration_vs_constant = statistics.calibration_vs_constant
chance_level = statistics.chance_level
constant_tier_policies = statistics.constant_tier_policies
frontier_at = statistics.frontier_at
frontier_difference = statistics.frontier_difference
oracle_policy = statistics.oracle_policy
paired_difference = statistics.paired_difference


def test_public_names():
    assert sorted(statistics.__all__) == [
        "accuracy_with_intervals", "across_seeds", "bootstrap_interval", "calibration_vs_constant", "chance_level",
        "constant_tier_policies", "envelope_vertices", "family_means", "family_need", "family_router",
        "fit_temperature", "frontier_at", "frontier_difference", "oracle_policy", "oracle_tiers", "paired_difference",
        "stable_tiers", "t_quantile", "tier_tokens"]
    assert all(callable(getattr(statistics, name)) for name in statistics.__all__)

FAST = {"n_resamples": 500}


def _binary(n, p, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def _width(interval):
    return interval["high"] - interval["low"]


# --------------------------------------------------------------------------------- across seeds
@pytest.mark.parametrize("df, exact", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (11, 2.2010), (20, 2.0860),
                                       (30, 2.0423), (120, 1.9799)])
def test_t_quantile_matches_student_t(df, exact):
    assert statistics.t_quantile(df) == pytest.approx(exact, abs=3e-3)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="2 seeds"):
        statistics.t_quantile(0)


def test_across_seeds_is_a_t_interval_around_the_mean():
    spread = statistics.across_seeds([0.80, 0.85, 0.82])
    assert spread["mean"] == pytest.approx(0.82333, abs=1e-5) and spread["n"] == 3
    assert spread["std"] == pytest.approx(float(np.std([0.80, 0.85, 0.82], ddof=1)))
    half = 4.3027 * spread["std"] / math.sqrt(3)
    assert (spread["low"], spread["high"]) == pytest.approx((spread["mean"] - half, spread["mean"] + half), abs=1e-4)
    assert (spread["min"], spread["max"]) == (0.80, 0.85)
    # more seeds with the same spread give a narrower interval
    wider = statistics.across_seeds([0.80, 0.85])
    assert wider["high"] - wider["low"] > spread["high"] - spread["low"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        statistics.across_seeds([0.8])


# --------------------------------------------------------------------------------- bootstrap
def test_interval_contains_the_mean_and_shrinks_with_n():
    small = bootstrap_interval(_binary(50, 0.6, seed=1), **FAST)
    large = bootstrap_interval(_binary(2000, 0.6, seed=1), **FAST)
    for interval in (small, large):
        assert interval["low"] < interval["mean"] < interval["high"]
    assert (small["n"], large["n"]) == (50, 2000)
    # The half-width goes as 1/sqrt(n): 40x the samples, about 1/6.3 the width.
    assert _width(large) < 0.3 * _width(small)
    # A 95% interval for p ~ 0.6 at n = 2000 is about +-0.021.
    assert 0.03 < _width(large) < 0.06


def test_constant_scores_give_a_zero_width_interval():
    assert bootstrap_interval([1] * 30, **FAST) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 30}
    assert bootstrap_interval([0.0] * 7, **FAST) == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 7}
    assert bootstrap_interval([0.25], **FAST) == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 1}


def test_higher_confidence_gives_a_wider_interval():
    scores = _binary(200, 0.5, seed=2)
    assert _width(bootstrap_interval(scores, confidence=0.99, **FAST)) > _width(
        bootstrap_interval(scores, confidence=0.8, **FAST))


def test_seed_makes_results_reproducible():
    scores = _binary(300, 0.4, seed=3)
    assert bootstrap_interval(scores, seed=7, **FAST) == bootstrap_interval(list(scores), seed=7, **FAST)
    assert bootstrap_interval(scores, seed=7, **FAST) != bootstrap_interval(scores, seed=8, **FAST)
    a, b = _binary(300, 0.5, seed=4), _binary(300, 0.5, seed=5)
    assert paired_difference(a, b, seed=3, **FAST) == paired_difference(a, b, seed=3, **FAST)


def test_results_are_plain_json_numbers():
    result = accuracy_with_intervals([1, 0, 1, 1], ["a", "b", "a", "b"], **FAST)
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) in (float, int) for v in result["overall"].values())


def test_large_inputs_are_resampled_in_chunks():
    # 40k samples x 100 resamples spans several index chunks; the interval must still be sane.
    result = bootstrap_interval(_binary(40000, 0.3, seed=6), n_resamples=100)
    assert result["low"] < result["mean"] < result["high"]
    assert _width(result) < 0.015


# --------------------------------------------------------------------------------- paired difference
def test_paired_difference_of_identical_lists_is_exactly_zero():
    scores = _binary(100, 0.5, seed=7)
    assert paired_difference(scores, scores.copy(), **FAST) == {"difference": 0.0, "low": 0.0, "high": 0.0,
                                                               "n": 100}


def test_paired_difference_is_the_bootstrap_of_per_question_differences():
    a, b = _binary(150, 0.7, seed=8), _binary(150, 0.5, seed=9)
    paired = paired_difference(a, b, seed=11, **FAST)
    direct = bootstrap_interval(a - b, seed=11, **FAST)
    assert paired["difference"] == pytest.approx(a.mean() - b.mean())
    assert (paired["low"], paired["high"]) == (direct["low"], direct["high"])


def test_pairing_narrows_the_interval_on_correlated_data():
    # b agrees with a on 95% of the questions: the two accuracies differ by ~0.05 but are highly correlated.
    rng = np.random.default_rng(10)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    b[rng.random(400) < 0.05] = 0.0
    paired = paired_difference(a, b, **FAST)
    # Unpaired: independent intervals of each mean, combined in quadrature.
    unpaired_width = math.hypot(_width(bootstrap_interval(a, **FAST)), _width(bootstrap_interval(b, seed=1, **FAST)))
    assert _width(paired) < 0.5 * unpaired_width
    assert paired["low"] > 0  # the small but consistent drop is detected
    assert paired["low"] <= paired["difference"] <= paired["high"]


def test_paired_difference_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"scores_a has 3.*scores_b has 2"):
        paired_difference([1, 0, 1], [1, 0])


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[1, 0], [0, 1]]])
def test_bad_scores_raise(bad):
    with pytest.raises(ValueError):
        bootstrap_interval(bad)


def test_empty_scores_raise_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_interval([])


@pytest.mark.parametrize("kwargs", [{"confidence": 1.0}, {"confidence": 0.0}, {"n_resamples": 0},
                                    {"n_resamples": 2.5}])
def test_bad_resampling_settings_raise(kwargs):
    with pytest.raises(ValueError):
        bootstrap_interval([1, 0, 1], **kwargs)


# --------------------------------------------------------------------------------- per task
def test_accuracy_with_intervals_overall_and_per_task():
    scores = [1, 1, 1, 0, 0, 1, 0, 1]
    tasks = ["ocr", "ocr", "ocr", "ocr", "count", "count", "count", "count"]
    result = accuracy_with_intervals(scores, tasks, **FAST)
    assert result["overall"]["mean"] == pytest.approx(5 / 8) and result["overall"]["n"] == 8
    assert list(result["per_task"]) == ["count", "ocr"]
    assert result["per_task"]["ocr"]["mean"] == pytest.approx(0.75) and result["per_task"]["ocr"]["n"] == 4
    assert result["per_task"]["count"]["mean"] == pytest.approx(0.5)
    for entry in [result["overall"], *result["per_task"].values()]:
        assert 0.0 <= entry["low"] <= entry["mean"] <= entry["high"] <= 1.0
    with pytest.raises(ValueError, match=r"scores has 2.*tasks has 1"):
        accuracy_with_intervals([1, 0], ["a"])


# --------------------------------------------------------------------------------- chance level
def test_chance_level_on_a_hand_built_list():
    answers = ["yes", "yes", "no", "Yes ", "3", "4", "4", "5", "4"]
    tasks = ["yn", "yn", "yn", "yn", "count", "count", "count", "count", "count"]
    result = chance_level(answers, tasks)
    # Without normalization "Yes " is its own answer: yes 2/4, three distinct answers.
    assert result["per_task"]["yn"] == {"majority": 0.5, "uniform": pytest.approx(1 / 3), "majority_answer": "yes",
                                        "n": 4, "n_distinct": 3}
    assert result["per_task"]["count"] == {"majority": 0.6, "uniform": pytest.approx(1 / 3),
                                           "majority_answer": "4", "n": 5, "n_distinct": 3}
    assert result["overall"]["majority"] == pytest.approx((0.5 * 4 + 0.6 * 5) / 9)
    assert result["overall"]["n"] == 9 and result["overall"]["n_distinct"] == 6
    normalized = chance_level(answers, tasks, normalize=lambda s: s.strip().lower())
    assert normalized["per_task"]["yn"]["majority"] == 0.75
    assert normalized["per_task"]["yn"]["uniform"] == 0.5
    # The majority rate is never below the uniform guess.
    for entry in [*result["per_task"].values(), *normalized["per_task"].values()]:
        assert entry["majority"] >= entry["uniform"]


def test_chance_level_tie_is_deterministic():
    result = chance_level(["b", "a", "b", "a"], ["t"] * 4)
    assert result["per_task"]["t"]["majority"] == 0.5 and result["per_task"]["t"]["majority_answer"] == "a"


def test_chance_level_bad_input():
    with pytest.raises(ValueError, match="empty"):
        chance_level([], [])
    with pytest.raises(ValueError, match=r"answers has 2.*tasks has 1"):
        chance_level(["a", "b"], ["t"])


# --------------------------------------------------------------------------------- tier policies
# Three tiers (64, 144, 256 tokens) x five questions.
CORRECT = [
    [1, 0, 0, 0, 1],  # tier 0
    [1, 1, 0, 0, 0],  # tier 1
    [0, 1, 1, 0, 1],  # tier 2
]
COUNTS = [
    [64, 64, 60, 64, 64],
    [144, 144, 144, 140, 144],
    [256, 256, 256, 250, 256],
]


def test_constant_tier_policies():
    policies = constant_tier_policies(CORRECT, COUNTS)
    assert [p["tier"] for p in policies] == [0, 1, 2]
    assert [p["accuracy"] for p in policies] == pytest.approx([0.4, 0.4, 0.6])
    assert [p["mean_tokens"] for p in policies] == pytest.approx([63.2, 143.2, 254.8])
    assert all(p["n"] == 5 for p in policies)
    with pytest.raises(ValueError):
        constant_tier_policies(CORRECT, COUNTS[:2])


def test_family_router_picks_each_familys_best_tier():
    # Family "a" (samples 0, 1, 4): every tier answers 2 of 3, tier 0 is the cheapest; family "b" (2, 3): tier 2.
    router = statistics.family_router(CORRECT, COUNTS, ["a", "a", "b", "b", "a"])
    assert router["tiers"] == {"a": 0, "b": 2}
    assert router["scores"] == [CORRECT[0][0], CORRECT[0][1], CORRECT[2][2], CORRECT[2][3], CORRECT[0][4]]
    assert router["tokens"] == [64, 64, 256, 250, 64]
    assert router["accuracy"] == pytest.approx(np.mean(router["scores"])) and router["n"] == 5
    # It knows the family only: never above the oracle router, never below the best constant tier.
    best = max(p["accuracy"] for p in constant_tier_policies(CORRECT, COUNTS))
    assert best <= router["accuracy"] <= oracle_policy(CORRECT, COUNTS)["accuracy"]
    assert statistics.family_router(CORRECT, COUNTS, ["a"] * 5)["tiers"] == {"a": 2}  # one family: the best tier
    with pytest.raises(ValueError, match="tasks has 4 entries for 5 samples"):
        statistics.family_router(CORRECT, COUNTS, ["a"] * 4)


def test_oracle_policy_on_a_hand_built_table():
    oracle = oracle_policy(CORRECT, COUNTS)
    assert oracle["tiers"] == [0, 1, 2, None, 0]
    assert oracle["accuracy"] == pytest.approx(0.8)
    assert oracle["n"] == 5 and oracle["n_no_oracle"] == 1
    # 64 + 144 + 256 + 250 (no tier answers: charged the largest tier's tokens) + 64.
    assert oracle["mean_tokens"] == pytest.approx((64 + 144 + 256 + 250 + 64) / 5)
    # Upper bound: at least as accurate as every constant tier.
    assert oracle["accuracy"] >= max(p["accuracy"] for p in constant_tier_policies(CORRECT, COUNTS))


def test_oracle_policy_accepts_booleans_and_rejects_ragged_tables():
    assert oracle_policy([[True, False]], [[10, 10]])["tiers"] == [0, None]
    with pytest.raises(ValueError, match="length mismatch"):
        oracle_policy([[1, 0], [1]], [[1, 1], [1, 1]])
    with pytest.raises(ValueError, match="no tiers"):
        oracle_policy([], [])


def test_stable_tier_ignores_a_lucky_smaller_tier():
    # Sample 0 is right at tiers 0-1 but not at the largest: no tier from which reading holds. Sample 4 is right at
    # tier 0, wrong at 1, right at 2: its oracle-minimal tier is 0 (a guess), its stable tier 2.
    assert statistics.oracle_tiers(CORRECT) == [0, 1, 2, None, 0]
    assert statistics.stable_tiers(CORRECT) == [None, 1, 2, None, 2]
    # Where answering never stops as tokens grow, the two agree.
    monotone = [[0, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert statistics.stable_tiers(monotone) == statistics.oracle_tiers(monotone) == [1, 0, 2]
    # Five tiers: right at 0, 1, 3 and 4 -> every tier from 3 up; right everywhere but the largest -> None.
    assert statistics.stable_tiers([[1, 1], [1, 1], [0, 1], [1, 1], [1, 0]]) == [3, None]
    with pytest.raises(ValueError, match="length mismatch"):
        statistics.stable_tiers([[1, 0], [1]])


def test_family_need_sets_what_each_policy_spent_beside_the_need():
    # oracle tiers [0, 1, 2, None, 0] -> tokens 64, 144, 256, -, 64; stable tiers [None, 1, 2, None, 2]: spent means
    # are taken on samples 1, 2 and 4 only (the largest tier answers them), the oracle-minimal need on 0, 1, 2 and 4.
    tasks = ["a", "a", "b", "b", "b"]
    need = statistics.family_need(CORRECT, COUNTS, tasks, {"cheap": [4, 8, 16, 32, 64]}, seed=0)
    assert need["oracle_minimal"]["a"]["mean"] == 104.0 and need["oracle_minimal"]["a"]["n"] == 2
    assert need["oracle_minimal"]["b"]["mean"] == 160.0 and need["oracle_minimal"]["b"]["n"] == 2
    assert need["stable"]["a"]["mean"] == 144.0 and need["stable"]["b"]["mean"] == 256.0
    assert need["spent"]["cheap"]["a"]["mean"] == 8.0 and need["spent"]["cheap"]["a"]["n"] == 1
    assert need["spent"]["cheap"]["b"]["mean"] == 40.0 and need["spent"]["cheap"]["b"]["n"] == 2
    assert statistics.family_need(CORRECT, COUNTS, tasks)["spent"] == {}


def test_tier_tokens_and_family_means():
    tokens = statistics.tier_tokens([None, 1, 2, None, 2], COUNTS)
    assert tokens == [None, 144.0, 256.0, None, 256.0]
    # Each sample's own measured count at its tier (sample 2 at tier 0 has 60, sample 3 at tier 1 has 140).
    assert statistics.tier_tokens([0, 1, 0, 1, None], COUNTS) == [64.0, 144.0, 60.0, 140.0, None]
    with pytest.raises(ValueError, match="tier index -1 outside the 3 tiers"):
        statistics.tier_tokens([-1, 0, 0, 0, 0], COUNTS)
    means = statistics.family_means(tokens, ["a", "a", "b", "b", "c"], **FAST)
    assert means["a"]["mean"] == 144.0 and means["a"]["n"] == 1 and means["a"]["low"] == means["a"]["high"] == 144.0
    assert means["b"]["mean"] == 256.0 and means["c"]["n"] == 1
    empty = statistics.family_means([None, 3.0], ["a", "b"], **FAST)
    assert empty["a"] == {"mean": None, "low": None, "high": None, "n": 0} and empty["b"]["mean"] == 3.0
    spread = statistics.family_means([4.0, 256.0, 4.0, 256.0], ["a"] * 4, **FAST)["a"]
    assert spread["low"] < spread["mean"] == 130.0 < spread["high"]
    with pytest.raises(ValueError, match="tiers has 2 entries for 5 samples"):
        statistics.tier_tokens([0, 1], COUNTS)
    with pytest.raises(ValueError, match="length mismatch"):
        statistics.family_means([1.0], ["a", "b"])


def test_calibration_vs_constant():
    predicted = [0, 1, 2, 1, 0, 2, 1]
    oracle = [0, 1, 1, None, 0, 2, 0]
    result = calibration_vs_constant(predicted, oracle, **FAST)
    assert result["n"] == 6 and result["n_no_oracle"] == 1
    assert result["exact"] == pytest.approx(4 / 6)  # samples 0, 1, 4, 5
    # Oracle tiers 0, 1, 1, 0, 2, 0: tier 0 is most common, exact on 3 of 6.
    assert result["constant_tier"] == 0 and result["constant_exact"] == pytest.approx(0.5)
    assert result["difference"] == pytest.approx(4 / 6 - 0.5)
    assert result["low"] <= result["difference"] <= result["high"]
    # Ties between oracle tiers go to the smaller (cheaper) tier.
    assert calibration_vs_constant([2, 2], [2, 1], **FAST)["constant_tier"] == 1
    none = calibration_vs_constant([0, 1], [None, None], **FAST)
    assert none["n"] == 0 and none["exact"] is None and none["constant_exact"] is None
    with pytest.raises(ValueError, match=r"predicted_tiers has 2.*oracle_tiers has 1"):
        calibration_vs_constant([0, 1], [0])


# --------------------------------------------------------------------------------- frontier
POINTS = [(256, 0.8), (64, 0.4), (144, 0.6)]  # any order


@pytest.mark.parametrize("tokens, accuracy", [(64, 0.4), (144, 0.6), (256, 0.8)])
def test_frontier_is_exact_at_the_tier_points(tokens, accuracy):
    result = frontier_at(POINTS, tokens)
    assert result["value"] == pytest.approx(accuracy) and result["extrapolated"] is False


def test_frontier_mixes_two_tiers_linearly_in_tokens():
    # A random mix of tiers 64 and 144 with probability 1/2 each spends 104 tokens on average (not sqrt(64 * 144)).
    result = frontier_at(POINTS, 104)
    assert result["value"] == pytest.approx(0.5) and result["weight"] == pytest.approx(0.5)
    assert (result["lower_tokens"], result["upper_tokens"]) == (64.0, 144.0)
    assert frontier_at([(64, 0.2), (256, 0.6)], 160)["value"] == pytest.approx(0.4)


def test_frontier_is_the_upper_concave_hull():
    # Tier 16 lies below the chord from 4 to 64: mixing 4 and 64 beats it, so it is no vertex of the envelope.
    points = [(4, 0.30), (16, 0.32), (64, 0.60), (256, 0.62)]
    tokens, accuracies = zip(*points)
    assert statistics.envelope_vertices(tokens, accuracies) == [0, 2, 3]
    assert frontier_at(points, 16)["value"] == pytest.approx(0.30 + 0.30 * 12 / 60)
    assert frontier_at(points, 16)["value"] > 0.32
    # Adjacent-tier interpolation in log2 tokens (the old frontier) would give tier 16 itself here.
    assert (frontier_at(points, 16)["lower_tokens"], frontier_at(points, 16)["upper_tokens"]) == (4.0, 64.0)


def test_frontier_is_flat_past_the_most_accurate_tier():
    # More tokens that hurt never lower what a constant policy reaches: it can spend fewer than it may.
    points = [(8, 0.7), (16, 0.6), (256, 0.2)]
    assert statistics.envelope_vertices(*zip(*points)) == [0]
    result = frontier_at(points, 100)
    assert result["value"] == pytest.approx(0.7) and result["extrapolated"] is False


def test_frontier_clamps_outside_the_range_and_says_so():
    below, above = frontier_at(POINTS, 16), frontier_at(POINTS, 1024)
    assert below["value"] == pytest.approx(0.4) and below["extrapolated"] is True
    assert above["value"] == pytest.approx(0.8) and above["extrapolated"] is False
    assert frontier_at([(100, 0.3)], 100) == {"value": 0.3, "extrapolated": False, "lower_tokens": 100.0,
                                              "upper_tokens": 100.0, "weight": 0.0}


def test_frontier_keeps_the_best_of_equal_token_points():
    # Two tiers above the grid size both keep every patch (same measured tokens).
    assert frontier_at([(64, 0.4), (256, 0.7), (256, 0.75)], 256)["value"] == pytest.approx(0.75)


@pytest.mark.parametrize("points, x", [([], 64), ([(0, 0.5), (64, 0.6)], 32), ([(64, 0.4)], 0)])
def test_frontier_bad_input_raises(points, x):
    with pytest.raises(ValueError):
        frontier_at(points, x)


def _tier_table(n, seed):
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    tier_scores = {64: (difficulty < 0.4).astype(float), 144: (difficulty < 0.6).astype(float),
                   256: (difficulty < 0.8).astype(float)}
    tier_tokens = {value: np.full(n, value) for value in tier_scores}
    return difficulty, tier_scores, tier_tokens


def test_frontier_difference_matches_the_interpolated_frontier():
    n = 400
    difficulty, tier_scores, tier_tokens = _tier_table(n, seed=12)
    # auto spends 104 tokens on average (a half-half mix of 64 and 144) and beats the envelope.
    auto_tokens = np.full(n, 104.0)
    auto_scores = (difficulty < 0.65).astype(float)
    result = frontier_difference(auto_scores, auto_tokens, tier_scores, tier_tokens, **FAST)
    assert (result["lower_tier"], result["upper_tier"]) == (64, 144)
    assert result["weight"] == pytest.approx(0.5) and result["extrapolated"] is False
    frontier = frontier_at([(tier_tokens[v].mean(), tier_scores[v].mean()) for v in tier_scores], 104)
    assert result["frontier_accuracy"] == pytest.approx(frontier["value"])
    assert result["difference"] == pytest.approx(auto_scores.mean() - frontier["value"])
    assert result["n"] == n and result["auto_mean_tokens"] == 104.0
    assert 0 < result["low"] <= result["difference"] <= result["high"]
    # Reproducible, and auto equal to a tier at that tier's tokens is exactly zero.
    assert frontier_difference(auto_scores, auto_tokens, tier_scores, tier_tokens, **FAST) == result
    same = frontier_difference(tier_scores[144], tier_tokens[144], tier_scores, tier_tokens, **FAST)
    assert (same["difference"], same["low"], same["high"], same["weight"]) == (0.0, 0.0, 0.0, 0.0)


def test_frontier_difference_resamples_the_tiers_with_auto():
    # Paired resampling of auto with both bracketing tiers: when auto equals the interpolated frontier on every
    # question the interval is exactly zero, which independent resampling of the tiers would not give.
    n = 200
    _, tier_scores, tier_tokens = _tier_table(n, seed=13)
    auto_scores = 0.5 * tier_scores[64] + 0.5 * tier_scores[144]
    result = frontier_difference(auto_scores, np.full(n, 104.0), tier_scores, tier_tokens, **FAST)
    assert result["difference"] == pytest.approx(0.0, abs=1e-12)
    assert _width(result) == pytest.approx(0.0, abs=1e-12)


def test_frontier_difference_outside_the_tiers_uses_the_nearest_tier():
    n = 100
    _, tier_scores, tier_tokens = _tier_table(n, seed=14)
    result = frontier_difference(tier_scores[256], np.full(n, 400.0), tier_scores, tier_tokens, **FAST)
    assert result["extrapolated"] is False and result["lower_tier"] == result["upper_tier"] == 256
    assert result["difference"] == 0.0


def test_frontier_difference_bad_input():
    _, tier_scores, tier_tokens = _tier_table(10, seed=15)
    with pytest.raises(ValueError, match="empty"):
        frontier_difference([1] * 10, [64] * 10, {}, {})
    with pytest.raises(ValueError, match="tier_tokens has"):
        frontier_difference([1] * 10, [64] * 10, tier_scores, {64: tier_tokens[64]})
    with pytest.raises(ValueError, match=r"auto_scores has 9"):
        frontier_difference([1] * 9, [64] * 10, tier_scores, tier_tokens)
