"""Score detectors on the Numenta Anomaly Benchmark (NAB v1.1), following NAB's own scoring rules.

``evaluate(nab_dir)`` streams every series of the chosen categories through the
detector (which sees only the past), turns scores into detections at one
threshold for the whole corpus, and reports per category: the NAB standard
score (normalised: 0 for a detector that never fires, 100 for one that hits
every window at its left edge), window recall and precision, and false-positive
events per 1,000 rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import attrs

from .detectors import THRESHOLDS, detections, scores

PROFILES = {"standard": (1.0, 1.0, 0.11), "reward_low_FP": (1.0, 1.0, 0.22), "reward_low_FN": (1.0, 2.0, 0.11)}
DEFAULT_CATEGORIES = ("realKnownCause", "artificialWithAnomaly", "realAWSCloudwatch")
#: points of quiet after a detection (one incident, one report)
COOLDOWN = 300


def _sigmoid(x: float) -> float:
    if x > 3:
        return -1.0
    return 2 / (1 + math.exp(5 * x)) - 1


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.split(".")[0])


@attrs.define
class SeriesResult:
    """One series' raw score and window counts at one threshold."""

    name: str
    rows: int
    windows: int
    raw: float
    hits: int
    fp_events: int


def score_series(times: list[dt.datetime], detected: list[int], windows: list[tuple[dt.datetime, dt.datetime]],
                 profile: tuple[float, float, float] = PROFILES["standard"]) -> tuple[float, int, int]:
    """NAB's raw score of detections (row indexes) on one series; also windows hit and false-positive events."""
    a_tp, a_fn, a_fp = profile
    n = len(times)
    probation = min(math.floor(0.15 * n), 750)
    bounds = []
    for start, end in windows:
        left = next((i for i, t in enumerate(times) if t >= start), n)
        right = max(i for i, t in enumerate(times) if t <= end) if any(t <= end for t in times) else left
        bounds.append((left, right))
    raw = 0.0
    hit = [False] * len(bounds)
    fp_events = 0
    last_fp = -2
    for i in detected:
        if i < probation:
            continue
        inside = next((k for k, (lo, hi) in enumerate(bounds) if lo <= i <= hi), None)
        if inside is not None:
            if not hit[inside]:
                lo, hi = bounds[inside]
                width = hi - lo + 1
                raw += a_tp * _sigmoid(-(hi - i + 1) / width) / _sigmoid(-1.0)
                hit[inside] = True
            continue
        previous = [k for k, (lo, hi) in enumerate(bounds) if hi < i]
        if previous:
            lo, hi = bounds[previous[-1]]
            width = hi - lo + 1
            raw += a_fp * _sigmoid(abs(hi - i) / max(width - 1, 1))
        else:
            raw -= a_fp
        if i != last_fp + 1:
            fp_events += 1
        last_fp = i
    raw -= a_fn * hit.count(False)
    return raw, hit.count(True), fp_events


def load_series(path: Path) -> tuple[list[dt.datetime], list[float]]:
    """A NAB data file's timestamps and values."""
    times, values = [], []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            times.append(_parse(row["timestamp"]))
            values.append(float(row["value"]))
    return times, values


def evaluate(nab_dir: Path, categories: tuple[str, ...] = DEFAULT_CATEGORIES, *, threshold: float | None = None,
             sensitivity: str = "medium", cooldown: int = COOLDOWN) -> dict[str, Any]:
    """Score the detector on ``categories`` of the NAB corpus in ``nab_dir``; return per-category figures."""
    threshold = THRESHOLDS[sensitivity] if threshold is None else threshold
    labels = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    per_category: dict[str, list[SeriesResult]] = {}
    for category in categories:
        folder = nab_dir / "data" / category
        if not folder.is_dir():
            raise FileNotFoundError(f"no NAB category {category!r} under {nab_dir / 'data'}")
        for path in sorted(folder.glob("*.csv")):
            key = f"{category}/{path.name}"
            times, values = load_series(path)
            windows = [(_parse(a), _parse(b)) for a, b in labels.get(key, [])]
            detected = detections(scores(values), threshold, cooldown)
            raw, hits, fp_events = score_series(times, detected, windows)
            per_category.setdefault(category, []).append(SeriesResult(key, len(values), len(windows), raw, hits, fp_events))
    return {"threshold": threshold, "cooldown": cooldown, "categories": {c: _summary(r) for c, r in per_category.items()},
            "all": _summary([r for results in per_category.values() for r in results])}


def _summary(results: list[SeriesResult]) -> dict[str, Any]:
    windows = sum(r.windows for r in results)
    raw = sum(r.raw for r in results)
    hits = sum(r.hits for r in results)
    fp = sum(r.fp_events for r in results)
    rows = sum(r.rows for r in results)
    a_tp, a_fn, _ = PROFILES["standard"]
    null, perfect = -a_fn * windows, a_tp * windows
    return {
        "series": len(results), "rows": rows, "windows": windows,
        "score": 100 * (raw - null) / (perfect - null) if windows else None,
        "recall": hits / windows if windows else None,
        "precision": hits / (hits + fp) if hits + fp else None,
        "fp_events_per_1000_rows": 1000 * fp / rows if rows else 0.0,
    }
