"""Evaluation scores in plain Python (no sklearn / rouge-score dependency): macro-F1 and ROUGE-L."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def macro_f1(truth: Sequence[int], preds: Sequence[int]) -> float:
    """Mean F1 over the classes present in the labels or the predictions (no sklearn needed)."""
    classes = sorted(set(truth) | set(preds))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, preds, strict=True))
        fp = sum(t != c and p == c for t, p in zip(truth, preds, strict=True))
        fn = sum(t == c and p != c for t, p in zip(truth, preds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def words(text: str) -> list[str]:
    """Lowercased word tokens; punctuation and whitespace only separate them."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time and O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (Lin 2004, with beta = 1 as in Google's rouge-score) over lowercased word tokens.

    0.0 when either side has no words, as rouge-score does.
    """
    ref, cand = words(reference), words(candidate)
    lcs = lcs_length(ref, cand) if ref and cand else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
