"""Answer metrics (SQuAD-style normalisation, no dependencies) and confidence intervals.

Which metric a task uses (``METRIC_BY_TASK`` in :mod:`e2llm.eval.tasks`):

- ``contains``: the normalised answer appears in the normalised output as whole words
  (needle tasks: single_fact, multi_fact, two_chunk). Binary.
- ``choice``: the choice the output names (its letter, or else the choice text mentioned
  first) is the right one (topic, aggregation, multiple-choice data). Binary.
- ``em``: normalised exact match. Binary.
- ``f1``: token F1 (SQuAD), best over the reference answers. In [0, 1].
- ``rougeL``: ROUGE-L F1 on normalised tokens (longest common subsequence), best over the
  references. In [0, 1].
- ``abstain``: the output says the document does not hold the answer ("does not say", "not
  mentioned", "no information", ...), in any of the usual wordings, so a reader not trained on
  e2llm's phrase is not penalised for its own (unanswerable). Binary.

Binary metrics get a 95% Wilson interval; graded ones the mean +- 1.96 standard errors.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Optional, Sequence

METRICS = ("contains", "choice", "em", "f1", "rougeL", "abstain")
BINARY_METRICS = frozenset({"contains", "choice", "em", "abstain"})
LETTERS = "ABCDEFGHIJ"
Z_95 = 1.959963984540054

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1, best over the reference answers."""
    pred = _tokens(prediction)
    return max((_f1(pred, _tokens(a)) for a in answers), default=0.0)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, answers: Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) on normalised tokens, best over the references."""
    pred = _tokens(prediction)
    best = 0.0
    for answer in answers:
        ref = _tokens(answer)
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        lcs = lcs_length(pred, ref)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _contains_phrase(haystack: str, phrase: str) -> bool:
    """Whole-word containment of normalised text (so '123' is not found in '41234')."""
    return bool(phrase) and f" {phrase} " in f" {haystack} "


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(_contains_phrase(pred, normalize_answer(a)) for a in answers))


_LETTER_PATTERNS = (
    re.compile(r"^\W*\(?([A-J])\)?(?:[.:)\],]|\s|$)"),  # "B", "(B)", "B. text", "B) text"
    re.compile(r"\banswer\s*(?:is|:)?\s*:?\s*\(?([A-J])\b\)?", re.IGNORECASE),  # "the answer is (C)"
    re.compile(r"\(([A-J])\)"),  # "(D)" anywhere
)


def predict_choice(prediction: str, choices: Sequence[str], letters: bool = True) -> Optional[int]:
    """Index of the choice the output picks: a letter (when ``letters``; the prompt listed
    them), else the choice whose text appears first (the longest one at a tie); None if none."""
    if letters:
        for pattern in _LETTER_PATTERNS:
            m = pattern.search(prediction)
            if m and LETTERS.index(m.group(1).upper()) < len(choices):
                return LETTERS.index(m.group(1).upper())
    pred = f" {normalize_answer(prediction)} "
    found = []
    for index, choice in enumerate(choices):
        phrase = normalize_answer(choice)
        position = pred.find(f" {phrase} ") if phrase else -1
        if position >= 0:
            found.append((position, -len(phrase), index))
    return min(found)[2] if found else None


def choice_correct(prediction: str, choices: Sequence[str], answer_index: int, letters: bool = True) -> float:
    return float(predict_choice(prediction, choices, letters) == answer_index)


# "The document does not say." and the ways instruct models put it.
_ABSTENTION = re.compile(
    r"\b(?:does not|doesn't|do not|don't|did not|didn't|cannot|can't|could not|couldn't|unable to)\s+"
    r"(?:\w+\s+){0,3}?(?:say|state|mention|specify|contain|include|provide|find|know|determine|answer|tell)"
    r"|\bnot\s+(?:\w+\s+)?(?:mentioned|stated|specified|given|provided|found|known|available|included)"
    r"|\bno\s+(?:\w+\s+)?(?:information|mention|answer|data|record|details?)\b|\bunknown\b",
    re.IGNORECASE)


def abstains(prediction: str, answers: Sequence[str] = ()) -> float:
    """1.0 if the output says the answer is not in the document (``answers`` unused)."""
    return float(bool(_ABSTENTION.search(str(prediction))))


def score(metric: str, prediction: str, answers: Sequence[str], choices: Optional[Sequence[str]] = None,
          answer_index: Optional[int] = None, letters: bool = False) -> float:
    """The item's score under ``metric`` (1/0 for binary metrics, [0, 1] otherwise)."""
    if metric == "choice":
        if not choices or answer_index is None:
            raise ValueError("the choice metric needs choices and the index of the right one")
        return choice_correct(prediction, choices, answer_index, letters)
    functions = {"contains": contains_answer, "em": exact_match, "f1": token_f1, "rougeL": rouge_l,
                 "abstain": abstains}
    if metric not in functions:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    return functions[metric](prediction, answers)


def all_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every text metric at once, stored with each result for later analysis."""
    return {"contains": contains_answer(prediction, answers), "em": exact_match(prediction, answers),
            "f1": token_f1(prediction, answers), "rougeL": rouge_l(prediction, answers)}


# --------------------------------------------------------------------------- intervals


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sensible at 0/n and n/n, unlike +-2 SE)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes <= 0 else low), (1.0 if successes >= n else high)  # exact ends, no rounding


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float]:
    """Normal-approximation interval of a mean of scores in [0, 1], clipped to [0, 1]."""
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    mean = sum(values) / n
    if n == 1:
        return 0.0, 1.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return max(0.0, mean - half), min(1.0, mean + half)


def summarize(values: Sequence[float], metric: str) -> tuple[float, float, float]:
    """(mean, low, high) with the interval that suits the metric."""
    if not values:
        return float("nan"), 0.0, 1.0
    mean = sum(values) / len(values)
    if metric in BINARY_METRICS:
        low, high = wilson_interval(sum(values), len(values))
    else:
        low, high = mean_interval(values)
    return mean, low, high
