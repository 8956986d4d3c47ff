"""Normalization steps on hand-checkable inputs, the tag map, analysis report and selection."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.io import InputError
from instag.select.data import load_tag_file
from instag.select.normalize import (NormalizeParams, TagMap, association_aggregate, auto_min_freq, count_tags,
                                     frequency_filter, normalize, rule_aggregate, rule_key, semantic_aggregate,
                                     sentence_transformer_embedder)
from instag.select.sample import SetStats, select_indices
from tests.conftest import read_jsonl, write_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def embed():
    return sentence_transformer_embedder()  # the packaged all-MiniLM-L6-v2, offline


def test_frequency_filter_drops_rare_tags():
    freq = count_tags([["a", "b"], ["a"], ["a", "c", "c"]])
    assert freq == Counter({"a": 3, "b": 1, "c": 1})  # a tag counts once per query
    assert frequency_filter(freq, 2) == {"b": None, "c": None}
    assert auto_min_freq(1_000_000) == 20 and auto_min_freq(1500) == 1 and auto_min_freq(100_000) == 2


def test_rule_aggregation_merges_spelling_variants_into_most_frequent():
    assert rule_key("Python Programming") == rule_key("python programming!") == "python program"
    assert rule_key("  Data-Analysis  ") == "data analysi"
    freq = Counter({"python programming": 5, "Python Programming": 2, "python programming!": 1,
                    "programming in python": 3, "Data Analysis": 1, "data-analysis": 4})
    assert rule_aggregate(freq) == {"Python Programming": "python programming",
                                    "python programming!": "python programming",
                                    "Data Analysis": "data-analysis"}


def test_semantic_aggregation_merges_paraphrases(embed):
    freq = Counter({"python programming": 5, "programming in python": 3, "math": 4, "mathematics": 2,
                    "creative writing": 3, "cooking": 2})
    mapping, seconds = semantic_aggregate(freq, embed, eps=0.1, min_samples=2)
    assert mapping == {"programming in python": "python programming", "mathematics": "math"}
    assert seconds > 0


def test_association_aggregation_merges_always_co_occurring_tags():
    lists = [["math", "arithmetic"]] * 50 + [["math", "word problem"]] * 10 + [["coding"]] * 45 + [["math"]] * 5
    freq = count_tags(lists)
    # arithmetic -> math holds in 50/50 queries (confidence 1.0); math -> arithmetic only 50/65
    assert association_aggregate(lists, freq, min_support=40, min_confidence=0.99) == {"arithmetic": "math"}
    assert association_aggregate(lists, freq, min_support=60, min_confidence=0.99) == {}  # support 50 < 60
    lists2 = lists + [["arithmetic"]]  # now arithmetic -> math has confidence 50/51 < 0.99
    assert association_aggregate(lists2, count_tags(lists2), min_support=40, min_confidence=0.99) == {}


def _fpgrowth_association(lists, freq, min_support, min_confidence):
    """The rules as mlxtend's FP-Growth (max_len=2) finds them, merged as association_aggregate merges."""
    import pandas as pd
    from mlxtend.frequent_patterns import fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    from instag.select.normalize import _merge_groups

    enc = TransactionEncoder()
    onehot = pd.DataFrame(enc.fit(lists).transform(lists), columns=enc.columns_)
    itemsets = fpgrowth(onehot, min_support=min_support / len(lists), use_colnames=True, max_len=2)
    groups = {t: {t} for t in freq}
    for items, support in zip(itemsets["itemsets"], itemsets["support"]):
        if len(items) == 2:
            a, b = sorted(items)
            both = round(support * len(lists))
            if both / freq[a] >= min_confidence or both / freq[b] >= min_confidence:
                merged = groups[a] | groups[b]
                for t in merged:
                    groups[t] = merged
    return _merge_groups({min(g): sorted(g) for g in groups.values()}, freq)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_association_pairs_are_those_fpgrowth_finds(seed):
    """Pairs counted from the sparse co-occurrence matrix merge exactly what FP-Growth's rules merge."""
    import random

    rng = random.Random(seed)
    vocab = [f"tag {k}" for k in range(40)]
    lists = []
    for _ in range(3000):
        tags = rng.sample(vocab[:25], rng.randint(1, 5))
        if "tag 3" in tags or rng.random() < 0.02:
            tags.append("tag 30")  # tag 3 -> tag 30 always; tag 30 -> tag 3 not
        if "tag 7" in tags:
            tags += ["tag 31", "tag 31"]  # a tag written twice counts once
        lists.append(tags)
    freq = count_tags(lists)
    for min_support, min_confidence in ((40, 0.99), (40, 0.5), (200, 0.3)):
        expected = _fpgrowth_association(lists, freq, min_support, min_confidence)
        assert association_aggregate(lists, freq, min_support, min_confidence) == expected
    assert association_aggregate(lists, freq, 40, 0.99) == {"tag 3": "tag 30", "tag 7": "tag 31"}


def test_normalize_composes_steps_into_an_auditable_map(embed):
    lists = ([["Python Programming", "sorting"]] * 3 + [["python programming!", "sorting"]]
             + [["programming in python"]] * 2 + [["rare tag"]] + [["python programming"]] * 4)
    tm = normalize(lists, NormalizeParams(min_freq=1, eps=0.1), embed=embed)
    assert tm.to["python programming!"] == "python programming"
    assert tm.steps["python programming!"] == ["rule"]
    assert tm.to["programming in python"] == "python programming"
    assert tm.steps["programming in python"] == ["semantic"]
    assert tm.to["Python Programming"] == "python programming"
    assert tm.to["sorting"] == "sorting" and tm.to["rare tag"] == "rare tag"
    assert [r.step for r in tm.reports] == ["frequency", "rule", "semantic", "association"]
    rule = tm.reports[1]
    assert (rule.tags_before, rule.tags_after, rule.merged_tags) == (6, 4, 2)
    # with a frequency threshold the rare tag is dropped, and the map says by which step
    tm2 = normalize(lists, NormalizeParams(min_freq=2, steps=("frequency", "rule")))
    assert tm2.to["rare tag"] is None and tm2.steps["rare tag"] == ["frequency"]
    assert tm2.to["python programming!"] is None  # rare before rule aggregation could merge it (InsTag order)


def test_tag_map_round_trip_and_apply_to_new_data():
    tm = normalize([["Python Programming"], ["python programming"], ["python programming"], ["rare"]],
                   NormalizeParams(min_freq=2, steps=("frequency", "rule")))
    again = TagMap.from_json(json.loads(json.dumps(tm.to_json())))
    assert again.to == tm.to and again.steps == tm.steps
    assert [r.step for r in again.reports] == ["frequency", "rule"]
    # unseen spelling -> matched by rule key; unseen tag -> kept; dropped tag -> gone
    assert again.apply(["PYTHON programming!!", "brand new", "rare", "python programming"]) == \
        ["python programming", "brand new"]


def _tag_records():
    recs = []
    for i in range(30):
        tags = [{"tag": t, "explanation": ""} for t in (["Math", "word problem"] if i % 3 else ["coding", "python"])]
        recs.append({"id": f"q{i}", "source": "a" if i < 20 else "b", "query": f"query {i}", "tags": tags,
                     "status": "ok"})
    recs.append({"id": "bad", "source": "a", "query": "x", "tags": [], "raw": "prose", "status": "unparsed"})
    return recs


def test_normalize_cli_writes_records_and_map(tmp_path):
    inp = write_jsonl(tmp_path / "tags.jsonl", _tag_records())
    out, tag_map = tmp_path / "norm.jsonl", tmp_path / "map.json"
    res = runner.invoke(app, ["normalize", str(inp), "-o", str(out), "--map", str(tag_map),
                              "--steps", "frequency,rule,association", "--min-support", "5"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 31  # nothing is lost: the unparsed record is written with no normalized tags
    by_id = {r["id"]: r for r in recs}
    assert by_id["bad"]["normalized_tags"] == [] and by_id["bad"]["raw"] == "prose"
    assert by_id["q1"]["tags"][0]["tag"] == "Math"  # originals kept
    # "word problem" always co-occurs with "Math" (and vice versa): merged into one tag
    assert len(by_id["q1"]["normalized_tags"]) == 1
    m = json.loads(tag_map.read_text())
    assert set(m["map"]) == {"Math", "word problem", "coding", "python"}
    assert [s["step"] for s in m["steps"]] == ["frequency", "rule", "association"]
    # --apply-map reproduces the same normalized tags on the same data
    out2 = tmp_path / "norm2.jsonl"
    res = runner.invoke(app, ["normalize", str(inp), "-o", str(out2), "--apply-map", str(tag_map)])
    assert res.exit_code == 0, res.output
    assert [r["normalized_tags"] for r in read_jsonl(out2)] == [r["normalized_tags"] for r in recs]


def test_bad_tag_files(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"id": "1", "tags": []}, {"id": "2", "query": "no tags"}])
    with pytest.raises(InputError, match=r"x.jsonl:2: record has no 'tags' field"):
        load_tag_file(p)
    res = runner.invoke(app, ["select", str(p), "-o", str(tmp_path / "s.jsonl"), "-n", "1"])
    assert res.exit_code == 2 and "x.jsonl:2: record has no 'tags' field" in res.output
    tf = load_tag_file(write_jsonl(tmp_path / "y.jsonl", _tag_records()))
    assert tf.skipped == Counter({"unparsed": 1}) and len(tf.usable) == 30


# ---------------------------------------------------------------- selection


def test_complexity_first_diverse_sampling_by_hand():
    lists = [["a"], ["a", "b", "c"], ["a", "b"], ["d"], ["c", "d"], ["a", "b", "c"], []]
    # order by tag count: [1, 5] (3 tags), [2, 4] (2), [0, 3] (1), [6] (0); a query is taken only if it
    # brings an uncovered tag; pass 1: 1 (a,b,c), 4 (d new) -> then 2, 5, 0, 3 bring nothing new
    # pass 2 (coverage reset): 5 or the next 3-tag query first ...
    got = select_indices(lists, 7, "complexity", seed=0)
    assert got[:2] == [1, 4] or got[:2] == [5, 4]
    assert 6 not in got  # a query with no tags never brings a new tag
    assert sorted(got) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("strategy", ["complexity", "diverse", "random"])
def test_selection_invariants(strategy):
    import random

    rng = random.Random(1)
    vocab = [f"t{i}" for i in range(300)]
    lists = [rng.sample(vocab[: rng.randint(8, 300)], rng.randint(0, 8)) for _ in range(2000)]
    got = select_indices(lists, 300, strategy, seed=7)
    assert len(got) == len(set(got)) == 300
    assert got == select_indices(lists, 300, strategy, seed=7)  # deterministic for a seed
    covered, seen = set(), []
    for i in got:
        covered |= set(lists[i])
        seen.append(len(covered))
    assert seen == sorted(seen)  # coverage never decreases
    if strategy != "random":
        assert all(lists[i] for i in got)  # coverage strategies never take a query without tags
    if strategy == "complexity":
        assert len(lists[got[0]]) == max(map(len, lists))


def test_complexity_first_beats_random_on_complexity_and_diversity():
    import random

    rng = random.Random(0)
    vocab = [f"t{i}" for i in range(1000)]
    weights = [1 / (k + 1) for k in range(1000)]  # Zipf-like
    lists = [list(set(rng.choices(vocab, weights, k=rng.randint(1, 8)))) for _ in range(5000)]
    cf = SetStats.of([lists[i] for i in select_indices(lists, 300, "complexity")])
    rnd = SetStats.of([lists[i] for i in select_indices(lists, 300, "random")])
    assert cf.avg_tags > rnd.avg_tags and cf.unique_tags > rnd.unique_tags


def test_select_and_analyze_cli(tmp_path):
    inp = write_jsonl(tmp_path / "tags.jsonl", _tag_records())
    out = tmp_path / "sel.jsonl"
    res = runner.invoke(app, ["select", str(inp), "-o", str(out), "-n", "5", "--seed", "3"])
    assert res.exit_code == 0, res.output
    sel = read_jsonl(out)
    # only two distinct tag sets exist: one pass takes one of each, then passes reset coverage
    assert len(sel) == 5 and len({r["id"] for r in sel}) == 5
    assert [r["selection"]["rank"] for r in sel] == list(range(5))
    res = runner.invoke(app, ["analyze", str(inp), "-o", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    by = {d["name"]: d for d in summary["datasets"]}
    assert by["a"]["queries"] == 20 and by["a"]["skipped"] == 1 and by["b"]["queries"] == 10
    assert by["a"]["unique_tags"] == 4 and by["a"]["avg_tags"] == 2.0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<td>a</td>" in page
