"""Online anomaly detectors: each point is judged only from the points before it.

``LikelihoodDetector`` predicts the next value with an exponentially weighted
moving average, measures how surprising the value is against the weighted
spread of the past, and turns that surprise into an
*anomaly likelihood*: how unusual the short-term average of surprises is,
compared with its own long-term distribution (the idea behind Numenta's
anomaly likelihood).  A value beyond the range seen so far by more than
``spatial`` times its width scores 1 at once (a new extreme is news by itself).
A score at or above the sensitivity's threshold is an anomaly; after one, the
detector stays quiet for ``cooldown`` points so one incident is reported once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

#: score thresholds of the sensitivities (fixed; tuned on NAB realKnownCause and the artificial sets)
THRESHOLDS = {"low": 0.99, "medium": 0.95, "high": 0.9}


def _tail(z: float) -> float:
    """P(Z > z) of a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


class LikelihoodDetector:
    """Score one series point by point; ``update(value)`` returns a score in [0, 1]."""

    def __init__(self, *, slow: float = 0.01, short: int = 10, long: int = 1500,
                 warmup: int = 50, spatial: float | None = 0.1) -> None:
        self.spatial = spatial
        self.slow_alpha = slow
        self.short = short
        self.long = long
        self.warmup = warmup
        self.n = 0
        self.mean = 0.0
        self.var = 0.0
        self.scores: deque[float] = deque(maxlen=long)
        self.recent: deque[float] = deque(maxlen=short)
        self.score_sum = 0.0
        self.score_sq = 0.0
        self.recent_sum = 0.0
        self.low = math.inf
        self.high = -math.inf

    def expected(self) -> tuple[float, float]:
        """The range the next value is expected in (mean plus or minus three spreads)."""
        spread = math.sqrt(self.var) if self.var > 0 else 0.0
        return self.mean - 3 * spread, self.mean + 3 * spread

    def update(self, value: float) -> float:
        """Score ``value`` against the past, then learn from it."""
        self.n += 1
        if self.n == 1:
            self.mean = value
            self.low = self.high = value
            return 0.0
        spread = math.sqrt(self.var) if self.var > 0 else 0.0
        scale = max(spread, 1e-9 + 1e-6 * (abs(self.mean) + (self.high - self.low)))
        raw = abs(value - self.mean) / scale
        surprise = min(raw, 50.0)
        outside = False
        if self.spatial is not None and self.n > self.warmup:
            margin = self.spatial * (self.high - self.low)
            outside = value > self.high + margin or value < self.low - margin
        # learn
        delta = value - self.mean
        self.mean += self.slow_alpha * delta
        self.var = (1 - self.slow_alpha) * (self.var + self.slow_alpha * delta * delta)
        self.low, self.high = min(self.low, value), max(self.high, value)
        # likelihood of the recent average surprise against the past distribution of surprises
        if len(self.recent) == self.short:
            self.recent_sum -= self.recent[0]
        self.recent.append(surprise)
        self.recent_sum += surprise
        score = 0.0
        if self.n <= self.warmup:
            return score  # the spread is still being learnt: its surprises would distort the distribution
        count = len(self.scores)
        if count >= self.warmup:
            mu = self.score_sum / count
            sd = math.sqrt(max(self.score_sq / count - mu * mu, 0.0)) or 1e-3
            score = 1.0 - _tail((self.recent_sum / len(self.recent) - mu) / sd)
        if count == self.long:
            old = self.scores[0]
            self.score_sum -= old
            self.score_sq -= old * old
        self.scores.append(surprise)
        self.score_sum += surprise
        self.score_sq += surprise * surprise
        return 1.0 if outside else score


def scores(values: Iterable[float], **options: float) -> list[float]:
    """The detector's score of every value of a series, in order."""
    detector = LikelihoodDetector(**options)  # type: ignore[arg-type]
    return [detector.update(v) for v in values]


def detections(series_scores: list[float], threshold: float, cooldown: int) -> list[int]:
    """Indexes where the score reaches ``threshold``, at most one per ``cooldown`` points."""
    found: list[int] = []
    quiet_until = -1
    for index, score in enumerate(series_scores):
        if index > quiet_until and score >= threshold:
            found.append(index)
            quiet_until = index + cooldown
    return found
