"""Fit an adapter's confidence calibration on held-out predictions, and check it on others.

    python scripts/fit_confidence_calibration.py --pred eval/dev/predictions.jsonl --gold data/seed/dev.jsonl \
        -o models/instag-tagger-smollm2-135m/confidence_calibration.json \
        [--check eval/heldout/predictions.jsonl data/seed/held_out_sharegpt.jsonl ...]

The predictions must carry the engine's raw confidences (tagged by the adapter before it shipped a
calibration, e.g. `instag eval` of the run directory). A predicted tag is correct when it matches a teacher
tag at `instag eval`'s semantic level; an isotonic regression of correct on confidence
(instag.distill.calibration.IsotonicCalibrator) is written as the adapter's confidence_calibration.json,
which the local engines and `instag serve` then apply to every tag's raw probability. ``--check PRED GOLD``
(repeatable) prints the expected calibration error of other predictions before and after, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.distill.calibration import IsotonicCalibrator, calibration_gain, expected_calibration_error  # noqa: E402
from instag.distill.evaluate import calibration_outcomes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pred", type=Path, required=True)
    ap.add_argument("--gold", type=Path, nargs="+", required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--check", nargs=2, action="append", default=[], metavar=("PRED", "GOLD"))
    args = ap.parse_args()
    fit = calibration_outcomes(args.pred, args.gold)
    cal = IsotonicCalibrator.fit(fit.confidence, fit.correct)
    args.output.write_text(json.dumps(cal.to_json(), indent=1) + "\n")
    report = {"fitted_on": {"pred": str(args.pred), "gold": [str(g) for g in args.gold], "tags": len(fit.tag),
                            "ece_before": expected_calibration_error(fit.confidence, fit.correct),
                            "ece_after": expected_calibration_error(cal.apply_array(fit.confidence), fit.correct)},
              "checks": []}
    for pred, gold in args.check:
        out = calibration_outcomes(Path(pred), Path(gold))
        report["checks"].append({"pred": pred, "gold": gold, **calibration_gain(cal, out.confidence, out.correct)})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
