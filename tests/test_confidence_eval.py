"""Per-tag confidences: calibration in the eval (bins, ECE, PR curve, plots, report), the isotonic
calibrator, normalize's min_tag_confidence, and analyze's confidence distribution; files without
confidences behave as before. A fixed fake embedder stands in for MiniLM."""

import json
import math

import numpy as np
import pytest

from instag.distill.calibration import (PR_THRESHOLDS, IsotonicCalibrator, calibration_gain,
                                        expected_calibration_error, reliability_table, tag_outcomes)
from instag.distill.evaluate import calibration_outcomes, evaluate_predictions, score_run
from instag.distill.matching import semantic_pairs
from instag.select.analyze import analyze_files
from instag.select.data import tag_confidences
from instag.select.normalize import NormalizeParams, TagMap, normalize
from instag.select.pipeline import normalize_file
from tests.conftest import read_jsonl, write_jsonl

# one dimension per meaning; "translate" is 0.9 cosine from "translation" (a match at 0.8, not an exact one)
_DIMS = ["math", "algebra", "poetry", "coding", "debugging", "debug help", "translation", "extra", "role play",
         "story writing", "summarization"]
_SAME = {"mathematics": "math", "code": "coding"}


def fake_embed(texts):
    out = np.zeros((len(texts), len(_DIMS)))
    for k, t in enumerate(texts):
        if t == "translate":
            out[k, _DIMS.index("translation")], out[k, _DIMS.index("extra")] = 0.9, math.sqrt(1 - 0.81)
        else:
            out[k, _DIMS.index(_SAME.get(t, t))] = 1.0
    return out


def rec(id_, tags, source="s", status="ok"):
    """tags: strings (no confidence) or (tag, confidence) pairs, confidence None leaving the key out."""
    out = []
    for t in tags:
        tag, conf = (t, None) if isinstance(t, str) else t
        out.append({"tag": tag, "explanation": "x", **({} if conf is None else {"confidence": conf})})
    return {"id": id_, "source": source, "query": f"query {id_}", "status": status, "model": "fake", "tags": out}


GOLD = [rec("q1", ["math", "algebra"]), rec("q2", ["coding", "debugging"]), rec("q3", ["translation"]),
        rec("q4", ["role play", "story writing"]), rec("q5", ["summarization"])]
PRED = [rec("q1", [("mathematics", 0.9), ("algebra", 0.8), ("poetry", 0.2)]),
        rec("q2", [("code", 0.65), ("math", 0.45), ("debug help", None)]),
        # the low-confidence exact tag takes the gold tag; the confident near-duplicate matches once it is gone
        rec("q3", [("translation", 0.1), ("translate", 0.95)]),
        rec("q4", [], status="unparsed")]  # q5: no prediction


@pytest.fixture
def pair_files(tmp_path):
    return write_jsonl(tmp_path / "pred.jsonl", PRED), write_jsonl(tmp_path / "gold.jsonl", GOLD)


def test_matching_says_which_tags_matched():
    from instag.distill.matching import tag_vectors

    vec = tag_vectors([["translation", "translate"]], fake_embed)
    assert semantic_pairs(["translation", "translate"], ["translation"], vec) == [("translation", "translation")]
    assert semantic_pairs(["translate"], ["translation"], vec) == [("translate", "translation")]
    assert semantic_pairs(["translate"], ["translation"], vec, threshold=0.95) == []


def test_bins_and_ece_by_hand():
    conf = [0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 1.0, None, 0.3]
    ok = [False, True, False, True, True, True, False, True, True]
    t = reliability_table(conf, ok)
    assert t["n_with_confidence"] == 8 and t["n_without_confidence"] == 1
    counts = [b["count"] for b in t["bins"]]
    assert counts == [1, 2, 0, 1, 0, 0, 0, 0, 0, 4]  # 0.3 opens bin 3, 1.0 closes bin 9
    b1, b9 = t["bins"][1], t["bins"][9]
    assert (b1["lo"], b1["hi"], b1["mean_confidence"], b1["precision"]) == (0.1, 0.2, pytest.approx(0.15), 0.5)
    assert b9["mean_confidence"] == pytest.approx(0.9625) and b9["precision"] == 0.75
    assert t["bins"][2]["precision"] is None and t["bins"][2]["mean_confidence"] is None
    # |0 - .05| * 1 + |.5 - .15| * 2 + |1 - .3| * 1 + |.75 - .9625| * 4, over 8 tags
    assert t["ece"] == pytest.approx((0.05 + 0.7 + 0.7 + 0.85) / 8)
    assert expected_calibration_error([None], [True]) is None


def test_calibration_in_metrics_by_hand(pair_files):
    pred, gold = pair_files
    m = evaluate_predictions(pred, gold, embed=fake_embed)
    sem = m["levels"]["semantic"]
    assert (sem["tp"], sem["n_pred"], sem["n_gold"]) == (4, 8, 7)
    cal = m["calibration"]
    assert cal["level"] == "semantic" and cal["n_tags"] == 8
    assert (cal["n_with_confidence"], cal["n_without_confidence"]) == (7, 1)  # "debug help" has none
    # (conf, correct): .9 T, .8 T, .2 F, .65 T, .45 F, .1 T (the exact "translation"), .95 F ("translate")
    assert [b["count"] for b in cal["bins"]] == [0, 1, 1, 0, 1, 0, 1, 0, 1, 2]
    assert cal["bins"][9]["precision"] == 0.5 and cal["bins"][9]["mean_confidence"] == pytest.approx(0.925)
    assert cal["ece"] == pytest.approx((0.9 + 0.2 + 0.45 + 0.35 + 0.2 + 2 * 0.425) / 7)

    # keep_one (the rule of instag tag's threshold): q1 keeps "mathematics" (0.9) at 0.95 too
    from instag.distill.calibration import pr_curve
    from instag.distill.matching import tag_vectors

    preds, golds = [["mathematics", "algebra", "poetry"]], [["math", "algebra"]]
    vec = tag_vectors(preds + golds, fake_embed)
    one = pr_curve(preds, [[0.9, 0.8, 0.2]], golds, vec, thresholds=[0.95], keep_one=True)[0]
    assert (one["tp"], one["n_pred"]) == (1, 1)
    assert pr_curve(preds, [[0.9, 0.8, 0.2]], golds, vec, thresholds=[0.95])[0]["n_pred"] == 0

    curve = {r["threshold"]: r for r in cal["pr_curve"]}
    assert list(curve) == list(PR_THRESHOLDS) and PR_THRESHOLDS[-1] == 0.95 and len(PR_THRESHOLDS) == 20
    # threshold 0 keeps everything: the plain semantic level
    assert {k: curve[0.0][k] for k in sem} == pytest.approx(sem)
    assert curve[0.0]["kept_share"] == 1.0
    # 0.5 keeps .9 .8 .65 .95 and the unknown "debug help"; "translate" now matches "translation"
    r = curve[0.5]
    assert (r["tp"], r["n_pred"], r["n_gold"]) == (4, 5, 7)
    assert (r["precision"], r["recall"], r["kept_share"]) == pytest.approx((0.8, 4 / 7, 5 / 8))
    # the other end: "translate" (0.95) and the unknown tag
    assert (curve[0.95]["tp"], curve[0.95]["n_pred"]) == (1, 2)
    assert curve[0.95]["recall"] == pytest.approx(1 / 7)

    # the same verdicts from the saved files, for fitting a calibrator
    out = calibration_outcomes(pred, gold, embed=fake_embed)
    assert out.n_pred == 8 and out.n_gold == 7 and int(out.correct.sum()) == 4
    assert dict(zip(out.tag, out.correct.tolist()))["translate"] is False


def test_score_run_writes_plots_and_report(tmp_path, pair_files):
    pred, gold = pair_files
    gold2 = write_jsonl(tmp_path / "other_gold.jsonl", [rec("q9", ["poetry"])])
    write_jsonl(pred, PRED + [rec("q9", [("poetry", 0.7)])])
    out = tmp_path / "eval"
    m = score_run(pred, [gold, gold2], out, embed=fake_embed)
    saved = json.loads((out / "metrics.json").read_text())
    assert "calibration" in saved and "plots" not in saved["calibration"]  # all files together: no plots
    sections = {s["gold"]: s for s in saved["gold_files"]}
    assert sections[str(gold)]["calibration"]["plots"] == {"reliability": "reliability_gold.png",
                                                         "precision_recall": "precision_recall_gold.png"}
    assert sections[str(gold2)]["calibration"]["plots"]["reliability"] == "reliability_other_gold.png"
    for name in ("reliability_gold.png", "precision_recall_gold.png", "reliability_other_gold.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m["calibration"]["pr_curve"][0]["tp"] == m["levels"]["semantic"]["tp"]
    report = (out / "report.md").read_text()
    assert report.count("### Confidence calibration") == 3
    assert "![reliability](reliability_gold.png)" in report
    assert "| 0.5 | 0.800 | 0.571 |" in report  # the gold.jsonl section's PR row at 0.5
    assert "(ECE) **0.421**" in report

    # one gold file: its plots are the top-level section's
    m1 = score_run(pred, gold, tmp_path / "one", embed=fake_embed)
    assert m1["calibration"]["plots"]["reliability"] == "reliability_gold.png"
    assert (tmp_path / "one" / "reliability_gold.png").exists()


def test_no_confidence_no_calibration(tmp_path):
    strip = [dict(r, tags=[{k: v for k, v in t.items() if k != "confidence"} for t in r["tags"]]) for r in PRED]
    pred, gold = write_jsonl(tmp_path / "pred.jsonl", strip), write_jsonl(tmp_path / "gold.jsonl", GOLD)
    m = score_run(pred, gold, tmp_path / "eval", embed=fake_embed)
    assert "calibration" not in m and "calibration" not in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert not list((tmp_path / "eval").glob("*.png"))
    assert "calibration" not in (tmp_path / "eval" / "report.md").read_text().lower()
    # and without an embedder there is no semantic level to calibrate against
    confident = write_jsonl(tmp_path / "confident.jsonl", PRED)
    assert "calibration" not in evaluate_predictions(confident, gold, embed=None)


def test_tag_confidences_tolerate_bad_values():
    r = {"tags": [{"tag": "a", "confidence": 0.4}, {"tag": "b"}, {"tag": " ", "confidence": 0.9},
                  {"tag": "c", "confidence": "high"}, {"tag": "d", "confidence": True},
                  {"tag": "e", "confidence": float("nan")}, {"tag": "f", "confidence": 1.5}, "g"]}
    assert tag_confidences(r) == [0.4, None, None, None, None, 1.0, None]  # aligned with a, b, c, d, e, f, g
    assert tag_confidences({"tags": []}) == [] and tag_confidences({"normalized_tags": ["x"]}) == []


def _miscalibrated(seed, n=3000):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    return conf, rng.uniform(0, 1, n) < conf ** 3  # overconfident: right with probability conf^3


def test_isotonic_calibrator_round_trip_and_lower_ece(tmp_path):
    from sklearn.isotonic import IsotonicRegression

    conf, ok = _miscalibrated(0)
    cal = IsotonicCalibrator.fit(list(conf) + [None], list(ok) + [True])  # the unknown pair is left out
    # one point in the middle of each of scikit-learn's flat blocks, at its value, joined by straight lines:
    # monotone, and no near-vertical step for float noise to jump across
    ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(conf, ok.astype(float))
    probe = np.linspace(-0.1, 1.1, 57)
    assert np.allclose(cal.apply_array(cal.x), ir.predict(np.array(cal.x)))
    assert np.all(np.diff(cal.apply_array(probe)) >= 0)
    assert max(np.diff(cal.y) / np.diff(cal.x)) < max(np.diff(ir.y_thresholds_) / np.maximum(np.diff(ir.X_thresholds_), 1e-12))
    data = json.loads(json.dumps(cal.to_json()))
    assert data["method"] == "isotonic" and len(data["x"]) == len(data["y"])
    again = IsotonicCalibrator.from_json(data)
    assert [again.apply(c) for c in probe] == [cal.apply(c) for c in probe]
    assert IsotonicCalibrator.load(cal.save(tmp_path / "cal.json")).to_json() == cal.to_json()
    assert cal.apply(None) is None and np.isnan(cal.apply_array([None, 0.5])[0])
    with pytest.raises(ValueError):
        IsotonicCalibrator.from_json({"method": "platt", "x": [0], "y": [0]})
    with pytest.raises(ValueError):
        IsotonicCalibrator.fit([None], [True])

    test_conf, test_ok = _miscalibrated(1)  # other pairs than those it was fitted on
    gain = calibration_gain(again, test_conf, test_ok)
    assert gain["n"] == 3000
    assert gain["ece_before"] > 0.15 and gain["ece_after"] < 0.05


def test_tag_outcomes_without_confidences_are_unknown():
    out = tag_outcomes([["math", "poetry"]], None, [["mathematics"]], fake_embed)
    assert out.correct.tolist() == [True, False] and np.isnan(out.confidence).all() and out.n_gold == 1
    with pytest.raises(ValueError):
        tag_outcomes([["math"]], None, [["math"]])


NORM_RECORDS = [
    rec("r1", [("math", 0.9), ("poetry", 0.2), "coding"]),
    rec("r2", [("math", 0.3), ("poetry", 0.95)]),
    rec("r3", [("math", 0.8), ("riddle", 0.1), ("math", 0.2)]),  # math twice: its highest confidence counts
    rec("r4", [("riddle", 0.99)], status="unparsed"),  # not usable: ignored by the filter and the counts
]


def test_normalize_min_tag_confidence_drops_exactly_the_low_tags(tmp_path):
    src = write_jsonl(tmp_path / "tags.jsonl", NORM_RECORDS)
    params = NormalizeParams(min_freq=1, steps=("frequency", "rule"), min_tag_confidence=0.5)
    res = normalize_file(src, tmp_path / "norm.jsonl", tmp_path / "map.json", params)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "norm.jsonl")}
    assert out["r1"]["normalized_tags"] == ["math", "coding"]
    assert out["r2"]["normalized_tags"] == ["poetry"]
    assert out["r3"]["normalized_tags"] == ["math"]
    assert out["r4"]["normalized_tags"] == []
    for r in NORM_RECORDS:  # the original tags keep everything, confidences included
        assert out[r["id"]]["tags"] == r["tags"]

    tmap = json.loads((tmp_path / "map.json").read_text())
    assert tmap["params"]["min_tag_confidence"] == 0.5
    # riddle was below 0.5 wherever it was confident-scored: its occurrences go, its spelling stays mapped
    assert tmap["map"]["riddle"] == {"to": "riddle", "steps": [], "low_confidence": 1}
    assert tmap["map"]["math"] == {"to": "math", "steps": [], "low_confidence": 1}  # dropped in r2 only
    assert tmap["map"]["poetry"]["low_confidence"] == 1 and tmap["map"]["poetry"]["to"] == "poetry"
    assert "low_confidence" not in tmap["map"]["coding"]
    step = tmap["steps"][0]
    assert [s["step"] for s in tmap["steps"]] == ["confidence", "frequency", "rule"]
    assert (step["occurrences_before"], step["occurrences_after"]) == (7, 4)
    assert (step["tags_before"], step["tags_after"], step["dropped_tags"]) == (4, 3, 1)
    assert step["params"] == {"min_tag_confidence": 0.5, "dropped_occurrences": 3, "unknown_confidence": 1}
    assert res.tags_before == 4 and res.tags_after == 3

    # the map read back applies the same threshold; one given explicitly wins
    tm = TagMap.from_json(tmap)
    assert tm.low_confidence == {"math": 1, "poetry": 1, "riddle": 1}
    normalize_file(src, tmp_path / "again.jsonl", None, NormalizeParams(), apply_map=tmp_path / "map.json")
    again = {r["id"]: r["normalized_tags"] for r in read_jsonl(tmp_path / "again.jsonl")}
    assert again == {k: v["normalized_tags"] for k, v in out.items()}
    normalize_file(src, tmp_path / "strict.jsonl", None, NormalizeParams(min_tag_confidence=0.85),
                   apply_map=tmp_path / "map.json")
    strict = {r["id"]: r["normalized_tags"] for r in read_jsonl(tmp_path / "strict.jsonl")}
    assert strict == {"r1": ["math", "coding"], "r2": ["poetry"], "r3": [], "r4": []}
    # a map made with a threshold, applied to confident occurrences or to tags without a confidence (a
    # teacher's), keeps the tags that the threshold dropped from the data it was made on
    assert tm.apply(["math", "riddle"], [0.9, 0.95]) == ["math", "riddle"]
    assert tm.apply(["riddle"]) == ["riddle"]
    with pytest.raises(ValueError):
        normalize([["a"]], NormalizeParams(min_tag_confidence=1.5), confidences=[[0.5]])


def test_normalize_without_confidences_as_before(tmp_path):
    src = write_jsonl(tmp_path / "tags.jsonl", NORM_RECORDS)
    normalize_file(src, tmp_path / "norm.jsonl", tmp_path / "map.json",
                   NormalizeParams(min_freq=1, steps=("frequency", "rule")))
    out = {r["id"]: r["normalized_tags"] for r in read_jsonl(tmp_path / "norm.jsonl")}
    assert out == {"r1": ["math", "poetry", "coding"], "r2": ["math", "poetry"], "r3": ["math", "riddle"], "r4": []}
    tmap = json.loads((tmp_path / "map.json").read_text())
    assert [s["step"] for s in tmap["steps"]] == ["frequency", "rule"]
    assert all("low_confidence" not in e for e in tmap["map"].values())
    # a threshold over tags that have no confidence keeps them all
    tm = normalize([["a", "b"], ["a"]], NormalizeParams(min_freq=1, steps=(), min_tag_confidence=0.9))
    assert tm.to == {"a": "a", "b": "b"} and tm.reports[0].params["unknown_confidence"] == 3


def test_analyze_confidence_distribution(tmp_path):
    rows = [rec("a1", [("x", 0.1), ("y", 0.4), ("z", 0.9)], source="alpha"),
            rec("a2", [("x", 0.6), ("w", None)], source="alpha"),
            rec("b1", [("x", 0.7), ("y", 0.8)], source="beta"),
            rec("b2", [("x", 0.05)], source="beta", status="unparsed"),  # not usable: not counted
            rec("c1", ["x", "y"], source="gamma")]  # no confidences at all
    src = write_jsonl(tmp_path / "tags.jsonl", rows)
    analyze_files([src], tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    ds = {d["name"]: d for d in summary["datasets"]}
    alpha = ds["alpha"]["confidence"]
    a = [0.1, 0.4, 0.9, 0.6]
    assert (alpha["tags"], alpha["tags_without"]) == (4, 1)
    assert [alpha[k] for k in ("p10", "p50", "p90")] == pytest.approx(list(np.quantile(a, [0.1, 0.5, 0.9])))
    assert alpha["share_below_0_5"] == 0.5 and alpha["mean"] == pytest.approx(0.5)
    assert alpha["hist"] == [0, 1, 0, 0, 1, 0, 1, 0, 0, 1]
    assert ds["beta"]["confidence"]["share_below_0_5"] == 0.0 and ds["beta"]["confidence"]["tags"] == 2
    assert "confidence" not in ds["gamma"]
    assert ds["(all)"]["confidence"]["tags"] == 6 and ds["(all)"]["confidence"]["tags_without"] == 3
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Tag confidence" in page and "alt='confidence'" in page

    plain = write_jsonl(tmp_path / "plain.jsonl", [rows[-1], rec("c2", ["y"], source="delta")])
    analyze_files([plain], tmp_path / "plain_report")
    summary = json.loads((tmp_path / "plain_report" / "summary.json").read_text())
    assert all("confidence" not in d for d in summary["datasets"])
    page = (tmp_path / "plain_report" / "index.html").read_text()
    assert "Tag confidence" not in page and "alt='confidence'" not in page
