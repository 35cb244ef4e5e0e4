"""Prompt features the learner can compute before any call (issue 13 item 2): a fixed-size
dense vector from the task type, the prompt's length and shape, and hashed words.

Why hashing: the vocabulary of future prompts is unknown and the state must stay a fixed
size (ATP-FEED-004: bounded state); ``zlib.crc32`` is stable across processes and Python
versions (``hash()`` is salted per process), so a trained state moves between routers.
Values are scaled so that one prompt's vector has a bounded norm whatever its length:
a 2,000-word prompt does not swamp the bias term.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import numpy.typing as npt

from .model import DENSE

__all__ = ["DEFAULT_DIM", "Featurizer"]

#: hashed buckets + the dense "shape" features below
DEFAULT_DIM = 512
#: tokens: a run of letters of any script (a word; "café" and "вопрос" are one each, not
#: letters apart), except the scripts written without spaces (CJK, kana, hangul), whose
#: characters are one token each; a number; any other character but a space. On ASCII
#: text the same tokens as ``[a-z]+|\d+(?:[.,]\d+)?|[^\sa-z\d]`` (the former rule).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W\d_])+|\d+(?:[.,]\d+)?|[^\s\w]|_")
_NUMBER = re.compile(r"\d")
#: dense features at the head of the vector (bias, lengths, shape)
_DENSE = DENSE


class Featurizer:
    """``vector(prompt, task_type)`` -> float64 array of ``dim`` (deterministic)."""

    def __init__(
        self, dim: int = DEFAULT_DIM, max_chars: int = 4000, task_weight: float = 1.0
    ) -> None:
        if dim < _DENSE + 16:
            raise ValueError(f"feature dimension must be at least {_DENSE + 16}")
        if not task_weight > 0 or not math.isfinite(task_weight):
            raise ValueError("task_weight must be a finite number > 0")
        self.dim = dim
        self.task_weight = task_weight
        self.max_chars = max_chars  #: longer prompts are cut (bounded work per request)

    def vector(self, prompt: str, task_type: str = "") -> npt.NDArray[np.float64]:
        text = prompt[: self.max_chars]
        x = np.zeros(self.dim, dtype=np.float64)
        tokens = [t.lower() for t in _WORD.findall(text)]
        words = [t for t in tokens if t[0].isalpha()]
        numbers = [t for t in tokens if t[0].isdigit()]
        n = len(tokens)
        x[0] = 1.0  # bias
        x[1] = math.log1p(len(prompt)) / 8.0
        x[2] = math.log1p(n) / 6.0
        x[3] = math.log1p(len(numbers)) / 3.0
        x[4] = min(1.0, text.count("?") / 4.0)
        x[5] = min(1.0, (text.count(".") + text.count("\n")) / 20.0)
        x[6] = 1.0 if len(prompt) > self.max_chars else 0.0
        x[7] = sum(len(w) for w in words) / (10.0 * len(words)) if words else 0.0
        buckets = self.dim - _DENSE
        # Words only: on the routing-data sources, adding word bigrams, number magnitudes,
        # character 4-grams or more dense shape features made held-out APGR worse, not
        # better (benchmarks/RESULTS.md, routing), for a state four times the size.
        grams: list[str] = [f"t:{task_type}", *words]
        counts: dict[int, float] = {}
        for g in grams:
            h = zlib.crc32(g.encode())
            i = _DENSE + h % buckets
            counts[i] = counts.get(i, 0.0) + (1.0 if h & 0x80000000 else -1.0)
        if counts:
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            val = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            val = np.sign(val) * np.log1p(np.abs(val))
            val /= math.sqrt(len(grams))  # a bounded norm whatever the length
            x[idx] += val
        x[_DENSE + zlib.crc32(f"task:{task_type}".encode()) % buckets] += self.task_weight
        return x
