"""Pieces shared by the text metrics of report generation and dialogue (each keeps its own BLEU and
ROUGE settings, documented with its figures)."""

from __future__ import annotations


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (ROUGE-L)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]
