"""Fit an adapter's confidence calibration on held-out predictions, and check it on others.

    python scripts/fit_confidence_calibration.py --pred eval/dev/predictions.jsonl --gold data/seed/dev.jsonl \
        -o models/instag-tagger-smollm2-135m/confidence_calibration.json \
        [--check eval/heldout/predictions.jsonl data/seed/held_out_sharegpt.jsonl ...]

The predictions must carry the engine's raw confidences (tagged by the adapter before it shipped a
calibration, e.g. `instag eval` of the run directory). A predicted tag is correct when it matches a teacher
tag at `instag eval`'s semantic level; an isotonic regression of correct on confidence
(instag.distill.calibration.IsotonicCalibrator) is written as the adapter's confidence_calibration.json,
which the local engines and `instag serve` then apply to every tag's raw probability. The same file records
``f1_threshold``: the calibrated confidence below which dropping a query's tags (its most confident one
always kept) gives the best semantic F1 on these predictions (0 where dropping none does), for users who
want precision (`instag tag --min-tag-confidence`). Only with ``--apply-threshold`` does it also become the
tagger's default ``min_tag_confidence`` (`instag tag` then moves such tags to ``low_confidence_tags``): by
default the tagger keeps every tag, since any threshold flattens InsTag's complexity (tags per query), whose
rank correlation with the teacher's the report prints per threshold (``complexity_spearman_by_threshold``).
``--check PRED GOLD`` (repeatable) prints the expected calibration error of other predictions before and
after, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.distill.calibration import (IsotonicCalibrator, calibration_gain, expected_calibration_error,  # noqa: E402
                                        pr_curve)
from instag.distill.evaluate import calibration_outcomes, load_pairs  # noqa: E402
from instag.distill.matching import tag_vectors  # noqa: E402

THRESHOLDS = [round(0.025 * i, 3) for i in range(25)]  # 0 .. 0.6: where dropping tags can pay


def best_threshold(cal: IsotonicCalibrator, pred: Path, gold: list[Path]) -> tuple[float, list[dict]]:
    """The calibrated confidence below which dropping a query's tags (its most confident one always kept,
    as `instag tag` does) gives the best semantic F1 on these predictions, and the curve it was read off
    (each row with the rank correlation of the kept tag counts with the teacher's)."""
    from instag.select.normalize import sentence_transformer_embedder

    frame = load_pairs(pred, gold)
    frame = frame[frame["status"] != "missing"]
    preds, golds = list(frame["pred"]), list(frame["gold"])
    confs = [[None if c is None else float(cal.apply(c)) for c in cs] for cs in frame["pred_conf"]]
    vec = tag_vectors(preds + golds, sentence_transformer_embedder())
    curve = pr_curve(preds, confs, golds, vec, thresholds=THRESHOLDS, keep_one=True)
    best = max(curve, key=lambda r: (round(r["f1"], 4), -r["threshold"]))
    return best["threshold"], curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pred", type=Path, required=True)
    ap.add_argument("--gold", type=Path, nargs="+", required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--check", nargs=2, action="append", default=[], metavar=("PRED", "GOLD"))
    ap.add_argument("--apply-threshold", action="store_true", help="make the best-F1 threshold the tagger's default")
    args = ap.parse_args()
    fit = calibration_outcomes(args.pred, args.gold)
    cal = IsotonicCalibrator.fit(fit.confidence, fit.correct)
    threshold, curve = best_threshold(cal, args.pred, args.gold)
    args.output.write_text(json.dumps({**cal.to_json(), "f1_threshold": threshold,
                                       "min_tag_confidence": threshold if args.apply_threshold else 0.0},
                                      indent=1) + "\n")
    report = {"fitted_on": {"pred": str(args.pred), "gold": [str(g) for g in args.gold], "tags": len(fit.tag),
                            "ece_before": expected_calibration_error(fit.confidence, fit.correct),
                            "ece_after": expected_calibration_error(cal.apply_array(fit.confidence), fit.correct)},
              "f1_threshold": threshold, "applied": args.apply_threshold,
              "f1_by_threshold": {str(r["threshold"]): round(r["f1"], 4) for r in curve},
              "complexity_spearman_by_threshold": {str(r["threshold"]): r["complexity_spearman"] for r in curve},
              "checks": []}
    for pred, gold in args.check:
        out = calibration_outcomes(Path(pred), Path(gold))
        report["checks"].append({"pred": pred, "gold": gold, **calibration_gain(cal, out.confidence, out.correct)})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
