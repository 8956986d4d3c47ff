"""`instag eval` on hand-made gold/prediction pairs: per-source numbers, over-predicted and missed tags,
tags per query, missing ids and non-ok statuses, several gold files, a ceiling, the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.distill.evaluate import evaluate_predictions, score_run
from instag.select.normalize import rule_key
from tests.conftest import write_jsonl

OLD_KEYS = {"queries", "missing_predictions", "parse_failures", "parse_failure_rate", "avg_pred_tags",
            "avg_gold_tags", "semantic_threshold", "levels"}


def rec(id_, source, tags, status="ok"):
    return {"id": id_, "source": source, "query": f"query {id_}", "status": status, "model": "fake-tagger",
            "tags": [{"tag": t, "explanation": "x"} for t in tags]}


@pytest.fixture
def files(tmp_path):
    gold_a = write_jsonl(tmp_path / "gold_a.jsonl", [
        rec("a1", "math", ["math", "arithmetic", "word problem"]),
        rec("a2", "math", ["math", "algebra"]),
        rec("a3", "code", ["python programming", "debugging"]),
        rec("a4", "code", ["python programming"]),
        rec("a5", "code", [], status="unparsed")])  # not usable gold: left out entirely
    gold_b = write_jsonl(tmp_path / "gold_b.jsonl", [
        rec("b1", "sharegpt", ["role play", "story writing"]),
        rec("b2", "sharegpt", ["translation", "story writing"])])
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        rec("a1", "math", ["Math", "role play", "math word problem"]),
        rec("a2", "math", ["math", "role play", "algebra", "math word problem"]),
        rec("a3", "code", [], status="unparsed"),
        # a4: no prediction
        rec("b1", "sharegpt", ["Role-play", "story"]),
        rec("b2", "sharegpt", [], status="empty"),
        rec("zz", "other", ["ignored"])])  # not in the gold
    return gold_a, gold_b, pred


def one_hot_by_rule_key():
    """A fake embedder: one vector per rule key, so the semantic level equals the rule level; counts calls."""
    keys: dict[str, int] = {}
    calls = []

    def embed(texts):
        calls.append(len(texts))
        idx = [keys.setdefault(rule_key(t), len(keys)) for t in texts]
        out = np.zeros((len(texts), 64))
        out[np.arange(len(texts)), idx] = 1.0
        return out
    return embed, calls


def test_per_source_numbers_by_hand(files):
    gold_a, _, pred = files
    m = evaluate_predictions(pred, gold_a, embed=None)
    assert OLD_KEYS <= set(m) and "gold_files" not in m
    # overall: a1..a3 scored (a3 unparsed, as no tags), a4 missing
    assert (m["queries"], m["missing_predictions"], m["parse_failures"]) == (3, 1, 1)
    assert m["statuses"] == {"missing": 1, "ok": 2, "unparsed": 1}
    assert (m["levels"]["rule"]["tp"], m["levels"]["rule"]["n_pred"], m["levels"]["rule"]["n_gold"]) == (3, 7, 7)
    math, code = m["by_source"]["math"], m["by_source"]["code"]
    assert set(m["by_source"]) == {"math", "code"}
    # math: a1 "Math"~"math" at rule level only; a2 math and algebra at both
    assert math["queries"] == 2 and math["missing_predictions"] == 0 and math["parse_failures"] == 0
    assert (math["levels"]["exact"]["tp"], math["levels"]["rule"]["tp"]) == (2, 3)
    assert math["levels"]["rule"]["precision"] == pytest.approx(3 / 7)
    assert math["levels"]["rule"]["recall"] == pytest.approx(3 / 5)
    assert math["levels"]["rule"]["f1"] == pytest.approx(0.5)
    assert math["levels"]["exact"]["f1"] == pytest.approx(1 / 3)
    assert code["queries"] == 1 and code["missing_predictions"] == 1 and code["parse_failures"] == 1
    assert code["parse_failure_rate"] == 1.0
    assert code["levels"]["rule"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "n_pred": 0, "n_gold": 2}


def test_tags_per_query_overall_and_per_source(files):
    gold_a, _, pred = files
    m = evaluate_predictions(pred, gold_a, embed=None)
    tpq = m["tags_per_query"]
    assert tpq["pred"]["mean"] == pytest.approx(7 / 3) and tpq["gold"]["mean"] == pytest.approx(7 / 3)
    assert m["avg_pred_tags"] == tpq["pred"]["mean"]  # today's key, same number
    assert list(tpq["pred"]["hist"]) == ["0", "1", "2", "3", "4", "5", "6", "7", "8+"]
    assert {k: v for k, v in tpq["pred"]["hist"].items() if v} == {"0": 1, "3": 1, "4": 1}
    assert {k: v for k, v in tpq["gold"]["hist"].items() if v} == {"2": 2, "3": 1}
    by = m["by_source"]
    assert by["math"]["tags_per_query"]["pred"]["mean"] == 3.5 and by["math"]["tags_per_query"]["gold"]["mean"] == 2.5
    assert by["code"]["tags_per_query"]["pred"]["mean"] == 0.0 and by["code"]["tags_per_query"]["gold"]["hist"]["2"] == 1


def test_complexity_rank_correlation_of_tag_counts(tmp_path, files):
    gold_a, _, pred = files
    # scored: a1 3 vs 3, a2 4 vs 2, a3 0 (unparsed) vs 2: ranks (2, 3, 1) against (3, 1.5, 1.5) do not co-vary
    assert evaluate_predictions(pred, gold_a, embed=None)["complexity_spearman"] == 0.0
    tags = [f"tag {i}" for i in range(6)]
    gold = write_jsonl(tmp_path / "g.jsonl", [rec(str(i), "s", tags[:n]) for i, n in enumerate([1, 2, 5, 3])])
    same_order = write_jsonl(tmp_path / "p.jsonl", [rec(str(i), "s", tags[:n]) for i, n in enumerate([2, 3, 6, 4])])
    m = evaluate_predictions(same_order, gold, embed=None)
    assert m["complexity_spearman"] == 1.0 and m["by_source"]["s"]["complexity_spearman"] == 1.0
    flat = write_jsonl(tmp_path / "f.jsonl", [rec(str(i), "s", tags[:3]) for i in range(4)])
    assert evaluate_predictions(flat, gold, embed=None)["complexity_spearman"] is None  # nothing to rank by
    from instag.distill.report import section

    text = section("t", m, None)
    assert "rank corr. with gold" in text and "rank correlation with gold 1.000" in text


def test_histogram_puts_eight_and_more_in_one_bin(tmp_path):
    many = [f"tag {i}" for i in range(11)]
    gold = write_jsonl(tmp_path / "g.jsonl", [rec("1", "s", many[:8]), rec("2", "s", many[:1])])
    pred = write_jsonl(tmp_path / "p.jsonl", [rec("1", "s", many), rec("2", "s", many[:9])])
    hist = evaluate_predictions(pred, gold, embed=None)["tags_per_query"]
    assert hist["pred"]["hist"]["8+"] == 2 and hist["gold"]["hist"]["8+"] == 1 and hist["gold"]["hist"]["1"] == 1


def test_over_predicted_and_most_missed_at_rule_level(files):
    gold_a, gold_b, pred = files
    tags = evaluate_predictions(pred, [gold_a, gold_b], embed=None)["tags"]
    over = [(r["tag"], r["pred"], r["gold"], r["excess"], r["ratio"]) for r in tags["over_predicted"]]
    # "Role-play" and "role play" are one rule key, shown by the gold's spelling; ties: more predicted first
    assert over == [("role play", 3, 1, 2, 3.0), ("math word problem", 2, 0, 2, None), ("story", 1, 0, 1, None)]
    missed = [(r["tag"], r["gold"], r["matched"], r["missed"]) for r in tags["most_missed"]]
    assert missed[0] == ("story writing", 2, 0, 2)
    # then one miss each, ties by name; a4 has no prediction, so its "python programming" is not counted;
    # "math" (matched twice) and "role play" (matched) are not missed
    assert [t for t, *_ in missed[1:]] == ["arithmetic", "debugging", "python programming", "translation",
                                           "word problem"]
    assert tags["most_missed"][0]["recall"] == 0.0 and tags["most_missed"][0]["key"] == rule_key("story writing")


def test_several_gold_files_give_sections_and_a_combined_top_level(files):
    gold_a, gold_b, pred = files
    embed, calls = one_hot_by_rule_key()
    m = evaluate_predictions(pred, [gold_a, gold_b], embed=embed)
    assert len(calls) == 1  # every tag embedded once, for all sections and sources
    a, b = m["gold_files"]
    assert a["gold"] == str(gold_a) and b["gold"] == str(gold_b)
    assert a["levels"]["rule"]["tp"] == 3 and set(a["by_source"]) == {"math", "code"}
    # b1: "Role-play"~"role play" matches, "story" is not "story writing"; b2 empty: no tags, a failure
    assert (b["queries"], b["parse_failures"], b["statuses"]) == (2, 1, {"empty": 1, "ok": 1})
    assert b["levels"]["rule"]["precision"] == 0.5 and b["levels"]["rule"]["recall"] == 0.25
    assert (m["queries"], m["missing_predictions"], m["parse_failures"]) == (5, 1, 2)
    assert m["statuses"] == {"empty": 1, "missing": 1, "ok": 3, "unparsed": 1}
    assert (m["levels"]["rule"]["tp"], m["levels"]["rule"]["n_pred"], m["levels"]["rule"]["n_gold"]) == (4, 9, 11)
    assert m["levels"]["semantic"] == m["levels"]["rule"]  # the fake embedder is one vector per rule key
    assert set(m["by_source"]) == {"math", "code", "sharegpt"}


def test_score_run_writes_metrics_and_report_with_ceiling(files, tmp_path):
    gold_a, gold_b, pred = files
    embed, _ = one_hot_by_rule_key()
    # the ceiling: the gold scored against itself (a teacher re-tag would go here)
    ref = score_run([gold_a, gold_b], [gold_a, gold_b], tmp_path / "self", embed=embed)
    assert ref["levels"]["exact"]["f1"] == 1.0
    m = score_run(pred, [gold_a, gold_b], tmp_path / "run", embed=embed, ceiling=tmp_path / "self" / "metrics.json")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert OLD_KEYS <= set(saved) and saved["levels"] == m["levels"]
    assert saved["model"] == "fake-tagger" and saved["predictions"] == str(pred)
    assert saved["ceiling"]["levels"]["rule"]["f1"] == 1.0
    assert saved["ceiling"]["gold_files"]["gold_b.jsonl"]["queries"] == 2
    report = (tmp_path / "run" / "report.md").read_text()
    for heading in ("## Summary", "## All gold files", "## `gold_a.jsonl`", "## `gold_b.jsonl`", "### By source",
                    "### Tags per query", "### Tags"):
        assert heading in report
    assert "| `gold_b.jsonl` | 2 | 0 | 1 | 0.000 | 0.500 | 0.250 | 0.333 | 0.333 | 1.00 | 2.00 |" in report
    assert "| ceiling all | 6 | 0 | 0 | 1.000 |" in report
    # per source, with the ceiling's rule F1 beside
    assert "| math | 2 | 0 | 0 | 0.333 | 0.429 | 0.600 | 0.500 | 0.500 | 3.50 | 2.50 | 1.000 |" in report
    assert "| role play | 3 | 1 | 2 | 3.00 |" in report and "| math word problem | 2 | 0 | 2 | new |" in report
    assert "| story writing | 2 | 0 | 2 | 0.000 |" in report
    assert "| math | model | 3.50 | 0 | 0 | 0 | 1 | 1 | 0 | 0 | 0 | 0 |" in report


def test_semantic_level_left_out_shows_as_absent(files, tmp_path):
    from instag.distill.report import render_report

    gold_a, _, pred = files
    m = evaluate_predictions(pred, gold_a, embed=None)
    m.update(model="x", gold=str(gold_a))
    assert "| semantic | – | – | – |" in render_report(m)


def test_cli_scores_a_predictions_file(files, tmp_path, monkeypatch):
    import instag.select.normalize as normalize

    gold_a, gold_b, pred = files
    monkeypatch.setattr(normalize, "sentence_transformer_embedder", lambda *a, **k: one_hot_by_rule_key()[0])
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--predictions", str(pred), "--gold", str(gold_a), "--gold", str(gold_b),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert [g["gold"] for g in m["gold_files"]] == [str(gold_a), str(gold_b)]
    assert (out / "report.md").exists() and not (out / "predictions.jsonl").exists()
    both = CliRunner().invoke(app, ["eval", "-m", "local", "-p", str(pred), "--gold", str(gold_a)])
    assert both.exit_code == 2
    bad = CliRunner().invoke(app, ["eval", "-p", str(pred), "--gold", str(gold_a), "-o", str(out),
                                   "--ceiling", str(gold_a)])
    assert bad.exit_code == 2 and "not a metrics.json" in bad.output


def test_run_eval_tags_every_gold_file_into_one_predictions_file(files, tmp_path, monkeypatch):
    import instag.tagger.run as run
    from instag.distill.evaluate import run_eval

    gold_a, gold_b, _ = files
    tagged = []

    def fake_tag_file(inp, out, opts):  # the teacher's own tags, as if a perfect model had tagged them
        tagged.append(inp.name)
        with open(out, "a") as f:
            f.write(inp.read_text())
        return run.TagSummary(input=str(inp), output=str(out), tagged=2, seconds=1.0)
    monkeypatch.setattr(run, "tag_file", fake_tag_file)
    with pytest.raises(ValueError, match="not a metrics.json"):  # a bad ceiling fails before any tagging
        run_eval("some-model", [gold_a, gold_b], tmp_path / "e", embed=one_hot_by_rule_key()[0], ceiling=gold_a)
    assert tagged == []
    m = run_eval("some-model", [gold_a, gold_b], tmp_path / "e", embed=one_hot_by_rule_key()[0], progress=False)
    assert tagged == ["gold_a.jsonl", "gold_b.jsonl"] and m["model"] == "some-model"
    assert m["queries_per_s"] == 2.0 and m["levels"]["exact"]["f1"] == 1.0 and len(m["gold_files"]) == 2
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["seconds"] == m["seconds"]
