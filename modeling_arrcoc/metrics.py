"""Answer-scoring metrics for the ArrCoc evaluation benchmarks, plus token-efficiency summaries.

Stand-alone on purpose: it imports nothing from the rest of the package and no torch, so it can
be loaded on its own (e.g. by importlib from its path) on machines without the model stack.
Every metric scores ONE question as ``metric(prediction, references) -> float`` in [0, 1];
:func:`score` averages over a dataset.

Metrics and the benchmarks whose conventions they follow:

* ``vqa_accuracy``     - VQAv2 / OK-VQA / TextVQA / VizWiz ("min(#humans that said it / 3, 1)").
* ``anls``             - DocVQA / InfographicVQA / ST-VQA (Average Normalized Levenshtein
                         Similarity).
* ``relaxed_accuracy`` - ChartQA (numbers within 5% relative error, strings exact).
* ``exact_match``      - generic, after case and whitespace normalization.
"""

import math
import re
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------
# VQA answer normalization
# --------------------------------------------------------------------------------------------
# The rules are the VQA evaluation script's (processPunctuation + processDigitArticle) with the
# punctuation list of the EvalAI answer processor that lmms-eval and MMF apply to predictions.
# That processor's extra "word_tokenize" step (which turns "it's" into "it 's") is left out: the
# official script never applies it to the references, so it only creates spurious misses.

# Unlike the older GT-Vision-Lab list, this one includes "!" and "-" and excludes "'" and ":"
# (apostrophes must survive for the contraction step).
_VQA_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is written "(?!<=\d)(\.)(?!\d)"; its "lookbehind" is a typo that never
# fires, so what it really does is remove every "." not followed by a digit. We keep that.
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# Canonical spellings of the contractions the evaluator repairs. Words that are also ordinary
# English ("well", "its", "shed", "wed", "ill", "lets", ...) are deliberately absent, as in the
# official table.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at "
    "shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _missing_one_apostrophe(word: str) -> list[str]:
    """Spellings of ``word`` with exactly one apostrophe dropped."""
    return [word[:i] + word[i + 1:] for i, c in enumerate(word) if c == "'"]


# The official table maps exactly the one-apostrophe-missing spellings ("couldnt've",
# "couldn'tve", but not "couldntve") to the canonical form, so we generate it that way.
_CONTRACTIONS = {typo: word for word in _CONTRACTED for typo in _missing_one_apostrophe(word)}


def _vqa_punctuation(text: str) -> str:
    # Official quirk, kept for comparability: a mark that touches a space anywhere in the answer
    # (or any answer with a "digit,digit" group) is deleted everywhere; otherwise it becomes a
    # space. So "1,000" -> "1000" and "yes, it is" -> "yes it is", but "black/white" ->
    # "black white".
    # The test always looks at the original text, not at the partly cleaned one.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD_NOT_DECIMAL.sub("", out)


def _vqa_words(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(s: str) -> str:
    """Normalize an answer the way the VQA challenge evaluator does.

    Steps: lowercase; newlines/tabs to spaces; strip; punctuation ``;/[]"{}()=+\\_-><@`,?!``
    removed (or turned into spaces, see ``_vqa_punctuation``); periods removed unless they are a
    decimal point; number words "none"/"zero".."ten" -> digits; articles a/an/the dropped;
    apostrophe-less contractions repaired ("dont" -> "don't"); whitespace collapsed.

    >>> normalize_vqa_answer("Two dogs!")
    '2 dogs'
    >>> normalize_vqa_answer("The  answer is: 3.5.")
    'answer is: 3.5'
    """
    text = s.lower().replace("\n", " ").replace("\t", " ").strip()
    return _vqa_words(_vqa_punctuation(text))


# --------------------------------------------------------------------------------------------
# Per-question metrics
# --------------------------------------------------------------------------------------------
def _require_references(references: Sequence[str]) -> None:
    # Silently scoring 0 against nothing would hide a data-loading bug.
    if len(references) == 0:
        raise ValueError("at least one reference answer is required")


def vqa_accuracy(prediction: str, references: list[str]) -> float:
    """VQA accuracy: ``min(#matching references / 3, 1)`` averaged over leave-one-out subsets.

    With the usual 10 human answers this is the official average over the 10 subsets of 9
    annotators. With n references the n subsets of n-1 are averaged the same way (the /3
    threshold is kept). Prediction and references are both passed through
    :func:`normalize_vqa_answer` before comparing.

    Definitional choices (differences from the official script):
    * References are always normalized in full; the official script punctuation-normalizes them
      only when annotators disagree and never maps their number words/articles, so e.g. 10 x
      "Two" would score "2" as 0 there and 1 here.
    * A single reference has no leave-one-out subset with any annotator in it, which would make
      the score identically 0; we score it as normalized exact match (1.0 or 0.0) instead.
    """
    _require_references(references)
    pred = normalize_vqa_answer(prediction)
    hits = [normalize_vqa_answer(ref) == pred for ref in references]
    if len(hits) == 1:
        return float(hits[0])
    total = sum(hits)
    # Leaving out annotator i leaves total - hits[i] matching answers among the rest.
    per_subset = [min(1.0, (total - hit) / 3.0) for hit in hits]
    return sum(per_subset) / len(per_subset)


def _levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, unit costs), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as possible
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(
                previous[j] + 1,  # delete char_a
                current[j - 1] + 1,  # insert char_b
                previous[j - 1] + (char_a != char_b),  # substitute (free if equal)
            ))
        previous = current
    return previous[-1]


def _anls_text(s: str) -> str:
    # DocVQA convention (official evaluator and the `anls` package): case-insensitive, outer
    # whitespace stripped and inner runs of whitespace collapsed to one space.
    return " ".join(s.lower().split())


def anls(prediction: str, references: list[str], threshold: float = 0.5) -> float:
    """ANLS for one question: ``max_ref (1 - NL if NL < threshold else 0)``.

    ``NL = levenshtein(pred, ref) / max(len(pred), len(ref))`` on lowercased, whitespace-stripped
    (and whitespace-collapsed) strings; two empty strings have NL = 0. An NL exactly at the
    threshold scores 0, as in the DocVQA evaluator.
    """
    _require_references(references)
    pred = _anls_text(prediction)
    best = 0.0
    for ref in map(_anls_text, references):
        longest = max(len(pred), len(ref))
        nl = _levenshtein(pred, ref) / longest if longest else 0.0
        if nl < threshold:
            best = max(best, 1.0 - nl)
    return best


def _parse_number(text: str) -> Optional[float]:
    """The number in ``text`` ignoring thousands commas and a trailing "%", else None."""
    cleaned = text.strip().replace(",", "")
    cleaned = cleaned[:-1].strip() if cleaned.endswith("%") else cleaned
    try:
        value = float(cleaned)
    except ValueError:
        return None
    # "nan"/"inf" parse as floats but are words here; compare them as strings.
    return value if math.isfinite(value) else None


def _relaxed_match(prediction: str, reference: str, tolerance: float) -> bool:
    pred, ref = _parse_number(prediction), _parse_number(reference)
    if pred is None or ref is None:
        return prediction.strip().lower() == reference.strip().lower()
    # Inclusive bound. The 1e-9 relative slack only absorbs float rounding so that an error of
    # exactly 5% (e.g. 3.465 vs 3.3) is not lost to binary representation; with ref == 0 the
    # bound is 0, i.e. the prediction must be exactly 0.
    return abs(pred - ref) <= (tolerance + 1e-9) * abs(ref)


def relaxed_accuracy(prediction: str, references: list[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy, max over references.

    If both strings parse as numbers (after removing thousands commas and a trailing "%"), the
    prediction is correct when ``|pred - ref| <= tolerance * |ref|`` (boundary included; a zero
    reference needs an exact 0). Otherwise it must equal the reference after lowercase + strip.

    Definitional choice: "%" is simply stripped, so "45%" matches "45" (the pix2struct
    reference code instead divides by 100, so "45%" would only match "0.45").
    """
    _require_references(references)
    return float(any(_relaxed_match(prediction, ref, tolerance) for ref in references))


def _plain_text(s: str) -> str:
    return " ".join(s.lower().split())


def exact_match(prediction: str, references: list[str]) -> float:
    """1.0 if the prediction equals any reference after lowercase, strip and whitespace collapse."""
    _require_references(references)
    pred = _plain_text(prediction)
    return float(any(_plain_text(ref) == pred for ref in references))


METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "vqa_accuracy": vqa_accuracy,
    "exact_match": exact_match,
}


def score(metric: str, predictions: list[str], references: list[list[str]]) -> float:
    """Mean of ``METRICS[metric]`` over the dataset (one list of references per prediction)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(sorted(METRICS))}")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} reference lists; "
            "they must pair up"
        )
    if not predictions:
        raise ValueError("no predictions to score")
    metric_fn = METRICS[metric]
    return float(np.mean([metric_fn(p, refs) for p, refs in zip(predictions, references)]))


# --------------------------------------------------------------------------------------------
# Token-efficiency summaries
# --------------------------------------------------------------------------------------------
def token_stats(counts) -> dict:
    """Summary of per-sample visual-token counts (a list of ints or an integer array).

    Returns ``{"n", "mean", "p50", "p95", "min", "max", "histogram"}``. Percentiles use numpy's
    default linear interpolation, so they can fall between observed counts. ``histogram`` maps
    each observed count to how many samples used it, in increasing count order; its keys are
    the counts as **strings** (``{"64": 3}``) so that the dict survives a JSON round trip
    unchanged. All values are plain Python numbers.
    """
    values = np.asarray(counts).reshape(-1)
    if values.size == 0:
        raise ValueError("token_stats needs at least one count")
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError("token counts must be whole numbers")
    values = values.astype(np.int64)
    histogram = Counter(values.tolist())
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "min": int(values.min()),
        "max": int(values.max()),
        "histogram": {str(k): histogram[k] for k in sorted(histogram)},
    }


def calibration_stats(
    predicted_tiers: Sequence[int], oracle_tiers: Sequence[Optional[int]]
) -> dict:
    """How well the predicted budget tier matches the oracle (cheapest correct) tier.

    ``oracle_tiers[i]`` is None when no tier answers sample i correctly. Such samples have no
    right tier to be calibrated against, so they are excluded from every fraction and only
    counted: ``n`` is all samples, ``n_no_oracle`` the None ones, and ``exact`` / ``within_one``
    (``|pred - oracle| <= 1``, exact included) / ``over`` (pred > oracle, wasted tokens) /
    ``under`` (pred < oracle, too few tokens) are fractions of the ``n - n_no_oracle`` others;
    ``exact + over + under == 1``. When every oracle is None the fractions are None (JSON null)
    rather than a misleading 0.
    """
    if len(predicted_tiers) != len(oracle_tiers):
        raise ValueError(
            f"{len(predicted_tiers)} predicted tiers but {len(oracle_tiers)} oracle tiers"
        )
    pairs = [(int(p), int(o)) for p, o in zip(predicted_tiers, oracle_tiers) if o is not None]
    stats = {"n": len(oracle_tiers), "n_no_oracle": len(oracle_tiers) - len(pairs)}
    if not pairs:
        return {**stats, "exact": None, "within_one": None, "over": None, "under": None}
    diffs = np.array([p - o for p, o in pairs])
    return {
        **stats,
        "exact": float(np.mean(diffs == 0)),
        "within_one": float(np.mean(np.abs(diffs) <= 1)),
        "over": float(np.mean(diffs > 0)),
        "under": float(np.mean(diffs < 0)),
    }


def per_task_mean(values: Sequence[float], tasks: Sequence[str]) -> dict:
    """{task: mean of `values` over that task's samples}, tasks sorted (accuracy from scores, tokens from counts)."""
    by_task = {}
    for value, task in zip(values, tasks):
        by_task.setdefault(task, []).append(value)
    return {task: float(np.mean(by_task[task])) for task in sorted(by_task)}


__all__ = [
    "METRICS",
    "anls",
    "calibration_stats",
    "exact_match",
    "normalize_vqa_answer",
    "per_task_mean",
    "relaxed_accuracy",
    "score",
    "token_stats",
    "vqa_accuracy",
]
