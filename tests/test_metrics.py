"""Tests for modeling_arrcoc.metrics (pure Python + numpy, no torch)."""

import json

import numpy as np
import pytest
from anls import anls_score as reference_anls

from modeling_arrcoc.metrics import (
    METRICS,
    anls,
    calibration_stats,
    exact_match,
    normalize_vqa_answer,
    relaxed_accuracy,
    score,
    token_stats,
    vqa_accuracy,
)


# --------------------------------------------------------------------------------- ANLS
# (prediction, references, threshold) shared with the `anls` package (DocVQA reference code).
ANLS_CASES = [
    ("hello", ["hello"], 0.5),  # identical
    ("Hello", ["hELLo"], 0.5),  # case only
    ("  hello  ", ["hello"], 0.5),  # outer whitespace
    ("new  york", ["New York"], 0.5),  # inner whitespace run
    ("helo", ["hello"], 0.5),  # one deletion: NL = 1/5
    ("hallo", ["hello"], 0.5),  # one substitution: NL = 1/5
    ("kitten", ["sitting"], 0.5),  # classic distance 3: NL = 3/7
    ("abcd", ["abxy"], 0.5),  # NL = 2/4 = threshold exactly -> 0
    ("abcd", ["abcx"], 0.25),  # NL = 1/4 = threshold exactly -> 0
    ("abcd", ["abcx"], 0.26),  # just under the threshold -> 0.75
    ("totally", ["different"], 0.5),  # far miss -> 0
    ("2019", ["2018", "2019", "19"], 0.5),  # multiple references: exact one wins
    ("colour", ["color", "hue"], 0.5),  # multiple references: best near miss
    ("", [""], 0.5),  # both empty: NL defined as 0
    ("", ["abc"], 0.5),  # empty prediction
    ("abc", [""], 0.5),  # empty reference
    ("$1,234.50", ["1234.50", "$1,234.5"], 0.5),  # punctuation is NOT normalized in ANLS
]


@pytest.mark.parametrize("prediction,references,threshold", ANLS_CASES)
def test_anls_matches_reference_package(prediction, references, threshold):
    expected = reference_anls(prediction=prediction, gold_labels=references, threshold=threshold)
    assert anls(prediction, references, threshold=threshold) == pytest.approx(expected, abs=1e-12)


def test_anls_hand_values():
    assert anls("helo", ["hello"]) == pytest.approx(0.8)
    assert anls("kitten", ["sitting"]) == pytest.approx(1 - 3 / 7)
    assert anls("abcd", ["abxy"]) == 0.0  # NL == threshold is not "< threshold"
    assert anls("", [""]) == 1.0


# --------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize(
    "raw,normalized",
    [
        ("Two dogs!", "2 dogs"),
        ("The cat.", "cat"),
        ("an apple", "apple"),
        ("A", ""),  # only an article
        ("None", "0"),
        ("TEN", "10"),
        ("dont know", "don't know"),
        ("couldnt've", "couldn't've"),
        ("  yes\n", "yes"),
        ("Yes, it is", "yes it is"),  # ", " touches a space -> deleted
        ("black/white", "black white"),  # "/" touches no space -> becomes a space
        ("1,000", "1000"),  # digit,digit -> all punctuation deleted
        ("3.5", "3.5"),  # decimal point kept
        ("U.S.A.", "usa"),  # other periods removed
        ("it's red", "it's red"),  # apostrophes survive
        ("twenty-two", "twenty 2"),  # only single number words are mapped
    ],
)
def test_normalize_vqa_answer(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


# 10 references of which k match the prediction. Leaving out one of the k matching annotators
# leaves k-1 matches; leaving out one of the 10-k others leaves k. So
#   acc(k) = [k * min(1, (k-1)/3) + (10-k) * min(1, k/3)] / 10
# k=0: 0
# k=1: (1*0   + 9*1/3) / 10 = 3/10                 = 0.3
# k=2: (2*1/3 + 8*2/3) / 10 = (2/3 + 16/3)/10 = 6/10 = 0.6
# k=3: (3*2/3 + 7*1)   / 10 = (2 + 7)/10          = 0.9
# k=4: (4*1   + 6*1)   / 10                        = 1.0
@pytest.mark.parametrize(
    "k,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_ten_references(k, expected):
    references = ["2"] * k + ["3"] * (10 - k)
    assert vqa_accuracy("2", references) == pytest.approx(expected)


def test_vqa_accuracy_normalizes_both_sides():
    # "Two!" -> "2", "the two" -> "2", "2." -> "2": 3 matches -> 0.9 (see table above).
    references = ["the two", "Two!", "2.", "three", "3", "3", "3", "four", "4", "4"]
    assert vqa_accuracy("Two", references) == pytest.approx(0.9)


def test_vqa_accuracy_other_reference_counts():
    # 3 references, all matching: each leave-one-out subset has 2 matches -> 2/3.
    assert vqa_accuracy("yes", ["yes", "yes", "yes"]) == pytest.approx(2 / 3)
    # 5 references, 4 matching: 4 subsets with 3 matches (1.0) + 1 with 4 (1.0) -> 1.0.
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"]) == pytest.approx(1.0)
    # 5 references, 1 matching: 1 subset with 0 + 4 with 1/3 -> (4/3)/5 = 4/15.
    assert vqa_accuracy("yes", ["yes"] + ["no"] * 4) == pytest.approx(4 / 15)
    # A single reference degenerates to normalized exact match.
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("3", ["2"]) == 0.0


# --------------------------------------------------------------------------------- ChartQA
@pytest.mark.parametrize(
    "prediction,references,expected",
    [
        ("105", ["100"], 1.0),  # exactly +5%
        ("95", ["100"], 1.0),  # exactly -5%
        ("105.01", ["100"], 0.0),  # just over
        ("94.99", ["100"], 0.0),  # just under the lower bound
        ("3.465", ["3.3"], 1.0),  # exactly 5% where float rounding would otherwise reject it
        ("45%", ["45"], 1.0),  # "%" stripped, not divided by 100
        ("46%", ["45%"], 1.0),  # 1/45 = 2.2% error
        ("1,050", ["1000"], 1.0),  # thousands comma stripped
        ("-10.4", ["-10"], 1.0),  # tolerance is relative to |ref|
        ("0", ["0"], 1.0),  # zero reference needs exactly zero
        ("0.0", ["0"], 1.0),
        ("0.01", ["0"], 0.0),
        ("Yes", ["yes "], 1.0),  # non-numeric: case/strip-insensitive exact match
        ("yes", ["no"], 0.0),
        ("12 apples", ["12"], 0.0),  # not a number -> string comparison
        ("nan", ["NaN"], 1.0),  # non-finite values are words
        ("50", ["10", "49"], 1.0),  # max over references
    ],
)
def test_relaxed_accuracy(prediction, references, expected):
    assert relaxed_accuracy(prediction, references) == expected


def test_relaxed_accuracy_custom_tolerance():
    assert relaxed_accuracy("110", ["100"], tolerance=0.1) == 1.0
    assert relaxed_accuracy("110", ["100"], tolerance=0.05) == 0.0


# --------------------------------------------------------------------------------- exact match
def test_exact_match():
    assert exact_match("  New   York ", ["new york"]) == 1.0
    assert exact_match("NEW YORK", ["boston", "New York"]) == 1.0
    assert exact_match("new york.", ["new york"]) == 0.0  # punctuation is significant
    assert exact_match("", [""]) == 1.0


# --------------------------------------------------------------------------------- score()
def test_metrics_registry():
    assert set(METRICS) == {"anls", "relaxed_accuracy", "vqa_accuracy", "exact_match"}
    assert METRICS["anls"] is anls


def test_score_is_mean_of_per_question_scores():
    predictions = ["yes", "no", "maybe"]
    references = [["yes"], ["No"], ["perhaps"]]
    assert score("exact_match", predictions, references) == pytest.approx(2 / 3)
    # 0.8 (helo/hello) and 1.0 (exact) -> 0.9
    assert score("anls", ["helo", "x"], [["hello"], ["X"]]) == pytest.approx(0.9)


def test_score_unknown_metric_names_it_and_lists_known():
    with pytest.raises(ValueError) as err:
        score("bleu", ["a"], [["a"]])
    message = str(err.value)
    assert "bleu" in message
    assert all(name in message for name in METRICS)


def test_score_length_mismatch():
    with pytest.raises(ValueError, match="pair up"):
        score("anls", ["a", "b"], [["a"]])


def test_score_and_metrics_reject_empty_inputs():
    with pytest.raises(ValueError):
        score("anls", [], [])
    for metric in METRICS.values():
        with pytest.raises(ValueError):
            metric("a", [])


# --------------------------------------------------------------------------------- token_stats
def test_token_stats_hand_computed():
    stats = token_stats([64, 64, 128, 256])
    # mean = 512/4 = 128; sorted [64, 64, 128, 256]:
    # p50 at rank 0.5*3 = 1.5 -> 64 + 0.5*(128-64) = 96
    # p95 at rank 0.95*3 = 2.85 -> 128 + 0.85*(256-128) = 236.8
    assert stats["n"] == 4
    assert stats["mean"] == pytest.approx(128.0)
    assert stats["p50"] == pytest.approx(96.0)
    assert stats["p95"] == pytest.approx(236.8)
    assert (stats["min"], stats["max"]) == (64, 256)
    assert stats["histogram"] == {"64": 2, "128": 1, "256": 1}
    assert list(stats["histogram"]) == ["64", "128", "256"]  # ascending by count value
    assert json.loads(json.dumps(stats)) == stats  # JSON round trip is lossless


def test_token_stats_accepts_arrays_and_rejects_bad_input():
    assert token_stats(np.array([[10, 20], [30, 40]]))["mean"] == pytest.approx(25.0)
    assert token_stats([7])["p95"] == 7.0
    with pytest.raises(ValueError):
        token_stats([])
    with pytest.raises(ValueError):
        token_stats([1.5, 2])


# --------------------------------------------------------------------------------- calibration
def test_calibration_stats_hand_computed():
    predicted = [0, 1, 2, 3, 1, 2]
    oracle = [0, 2, 0, None, 1, None]
    stats = calibration_stats(predicted, oracle)
    # Scored pairs (pred, oracle): (0,0) exact, (1,2) under by 1, (2,0) over by 2, (1,1) exact.
    assert stats["n"] == 6
    assert stats["n_no_oracle"] == 2
    assert stats["exact"] == pytest.approx(2 / 4)
    assert stats["within_one"] == pytest.approx(3 / 4)
    assert stats["over"] == pytest.approx(1 / 4)
    assert stats["under"] == pytest.approx(1 / 4)
    assert stats["exact"] + stats["over"] + stats["under"] == pytest.approx(1.0)
    assert json.loads(json.dumps(stats)) == stats


def test_calibration_stats_all_without_oracle():
    stats = calibration_stats([1, 2], [None, None])
    assert (stats["n"], stats["n_no_oracle"]) == (2, 2)
    assert stats["exact"] is None and stats["over"] is None


def test_calibration_stats_length_mismatch():
    with pytest.raises(ValueError):
        calibration_stats([1, 2], [1])
