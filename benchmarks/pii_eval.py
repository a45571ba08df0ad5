"""Precision and recall of the PII plugin's detectors on public corpora (``../shared/data/pii`` and ``secrets``).

    uv run python -m benchmarks.pii_eval

* presidio-research's synthetic sentences: per entity type, a gold span is found when a finding of that
  type overlaps it; a finding that overlaps no gold span of its type is a false positive.
* gitleaks' rule samples: recall on the true positives of the providers the plugin covers, and the share of
  all false-positive samples that the plugin flags.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

TYPES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "US_SSN": "SSN", "CREDIT_CARD": "CREDIT_CARD",
         "IP_ADDRESS": "IP_ADDRESS", "IBAN_CODE": "IBAN"}
#: gitleaks rules of the providers the plugin promises (OpenAI, Anthropic, AWS, GitHub, Slack, Google, Hugging Face,
#: Stripe), JWTs and private keys
PROVIDER_RULES = ("openai", "anthropic", "aws-access", "github", "slack", "gcp-api-key", "huggingface", "stripe", "jwt",
                  "private-key")


def synthetic(scanner: Any) -> dict[str, dict[str, float]]:
    """Per-type precision and recall on presidio-research's synth_dataset_v2."""
    rows = json.loads((DATA / "pii" / "presidio-research" / "synth_dataset_v2.json").read_text())
    stats = {name: {"tp": 0, "fn": 0, "fp": 0} for name in TYPES.values()}
    for row in rows:
        text = row["full_text"]
        gold = [(s["start_position"], s["end_position"], TYPES.get(s["entity_type"])) for s in row["spans"]]
        found = scanner.find(text)
        for start, end, kind in gold:
            if kind is None:
                continue
            hit = any(f_kind == kind and f_start < end and start < f_end for f_start, f_end, f_kind in found)
            stats[kind]["tp" if hit else "fn"] += 1
        for f_start, f_end, f_kind in found:
            if f_kind in stats and not any(kind == f_kind and f_start < end and start < f_end for start, end, kind in gold):
                stats[f_kind]["fp"] += 1
    return {name: _pr(s) for name, s in stats.items()}


def _pr(s: dict[str, int]) -> dict[str, float]:
    tp, fn, fp = s["tp"], s["fn"], s["fp"]
    return {"gold": tp + fn, "found": tp + fp, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "precision": tp / (tp + fp) if tp + fp else 1.0}


def gitleaks(scanner: Any) -> dict[str, Any]:
    """Recall on the covered providers' true positives; flag rate on every false-positive sample."""
    rows = [json.loads(line) for line in (DATA / "secrets" / "gitleaks" / "gitleaks_rule_samples.jsonl").open()]
    covered = [r for r in rows if r["label"].startswith("t") and r["rule_id"].startswith(PROVIDER_RULES)]
    negatives = [r for r in rows if r["label"].startswith("f")]
    missed = [r["rule_id"] for r in covered if not scanner.find(r["text"])]
    flagged = [r["rule_id"] for r in negatives if scanner.find(r["text"])]
    return {"true_positives": len(covered), "recall": 1 - len(missed) / len(covered), "missed": missed,
            "false_positive_samples": len(negatives), "flagged_share": len(flagged) / len(negatives),
            "flagged": flagged}


def typical_event_us(scanner_redact: Any, repeat: int = 2000) -> float:
    """Mean µs to redact a typical event: a 500-character prompt and 6 metadata fields."""
    from vibekit_telemetry import TelemetryEvent

    prompt = ("Please review the attached pull request and summarise the changes to the billing service. "
              "The tests in test_invoices.py fail on CI since yesterday; the error mentions a timeout when the "
              "worker calls the payments API. Suggest a fix, keep the public interface, and explain any risk to "
              "existing customers. Also check whether the retry policy in config/settings.yaml still matches the "
              "agreement with the provider, version 2.3, and whether logging is too verbose in production. ")[:500]
    event = TelemetryEvent(event_type="start", category="claude", action="code", prompt=prompt, session_id="s1",
                           metadata={"model": "claude-sonnet-4-5", "temperature": 0.2, "user": "u-1842",
                                     "repo": "billing-service", "branch": "fix/timeouts", "attempt": 2})
    started = time.perf_counter()
    for _ in range(repeat):
        scanner_redact(event)
    return (time.perf_counter() - started) / repeat * 1e6


def run() -> dict[str, Any] | None:
    """All figures, or ``None`` when the corpora or the plugin are missing."""
    try:
        from vibekit_telemetry_pii import PIIRedactor
    except ImportError:
        return None
    if not (DATA / "pii").is_dir() or not (DATA / "secrets").is_dir():
        return None
    redactor = PIIRedactor()
    return {"synthetic": synthetic(redactor.scanner), "gitleaks": gitleaks(redactor.scanner),
            "typical_event_us": typical_event_us(redactor.before_track)}


def main() -> int:
    """Print the figures."""
    result = run()
    if result is None:
        print("skipped: the PII plugin or ../shared/data/pii and ../shared/data/secrets are missing")
        return 0
    print(f"{'type':12} {'gold':>5} {'found':>6} {'precision':>10} {'recall':>8}")
    for name, s in result["synthetic"].items():
        print(f"{name:12} {s['gold']:>5} {s['found']:>6} {s['precision']:>10.3f} {s['recall']:>8.3f}")
    g = result["gitleaks"]
    print(f"gitleaks: recall {g['recall']:.3f} on {g['true_positives']} true positives of the covered providers "
          f"(missed: {', '.join(g['missed']) or 'none'}); {g['flagged_share']:.1%} of {g['false_positive_samples']} "
          f"false-positive samples flagged")
    print(f"typical event (500-character prompt, 6 metadata fields): {result['typical_event_us']:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
