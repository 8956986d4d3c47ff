"""scripts/seed_assemble.py on temporary copies of the seed files: batches map to queries by position."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest

from tests.conftest import REPO, read_jsonl


@pytest.fixture(scope="module")
def assemble():
    spec = importlib.util.spec_from_file_location("seed_assemble", REPO / "scripts" / "seed_assemble.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["seed_assemble"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def seed(tmp_path):
    """The first 120 queries (the last batch is partial), batches 001-002 as committed, and one new query
    that is not tagged yet."""
    lines = (REPO / "data" / "seed" / "queries.jsonl").read_text(encoding="utf-8").split("\n")[:120]
    extra = {"id": "sharegpt/x_0", "source": "sharegpt", "query": "fix my code", "split": "held_out_sharegpt"}
    (tmp_path / "queries.jsonl").write_text("\n".join(lines) + "\n" + json.dumps(extra) + "\n", encoding="utf-8")
    (tmp_path / "batches").mkdir()
    for n in (1, 2):
        shutil.copy(REPO / "data" / "seed" / "batches" / f"batch_00{n}.jsonl", tmp_path / "batches")
    return tmp_path


def test_aligned_batches_assemble(assemble, seed, capsys):
    assert assemble.main(seed) == 0
    out = capsys.readouterr().out
    assert "tagged 100/121" in out and "held_out_sharegpt: 0 tagged, 1 untagged" in out
    tags = read_jsonl(seed / "seed_tags.jsonl")
    queries = read_jsonl(seed / "queries.jsonl")
    assert [r["id"] for r in tags] == [q["id"] for q in queries[:100]]
    # The same bytes as the committed files for those queries
    committed = (REPO / "data" / "seed" / "seed_tags.jsonl").read_text(encoding="utf-8").split("\n")[:100]
    assert (seed / "seed_tags.jsonl").read_text(encoding="utf-8") == "\n".join(committed) + "\n"
    assert (seed / "held_out_sharegpt.jsonl").read_text() == ""
    assert len(read_jsonl(seed / "train.jsonl")) + len(read_jsonl(seed / "held_out.jsonl")) == 100


def test_shifted_batch_is_rejected_with_file_and_line(assemble, seed, capsys):
    b2 = seed / "batches" / "batch_002.jsonl"
    rows = b2.read_text(encoding="utf-8").split("\n")[:-1]
    b2.write_text("\n".join(rows[1:] + rows[:1]) + "\n", encoding="utf-8")  # every row one position off
    assert assemble.main(seed) == 1
    out = capsys.readouterr().out
    q = read_jsonl(seed / "queries.jsonl")
    assert f"problem: batch_002.jsonl:1: id {q[51]['id']!r} but queries.jsonl:51 is {q[50]['id']!r}" in out
    # The whole misaligned batch is left out; batch 001 still counts.
    assert [r["id"] for r in read_jsonl(seed / "seed_tags.jsonl")] == [x["id"] for x in q[:50]]


def test_short_and_misnamed_batches(assemble, seed, capsys):
    b2 = seed / "batches" / "batch_002.jsonl"
    b2.write_text("\n".join(b2.read_text(encoding="utf-8").split("\n")[:49]) + "\n", encoding="utf-8")
    shutil.copy(seed / "batches" / "batch_001.jsonl", seed / "batches" / "extra.jsonl")
    # batch_003 would tag lines 101-150 but the first 50 rows of batch_001 are other queries
    shutil.copy(seed / "batches" / "batch_001.jsonl", seed / "batches" / "batch_003.jsonl")
    assert assemble.main(seed) == 1
    out = capsys.readouterr().out
    assert "batch_002.jsonl: 49 rows, but it must tag queries.jsonl:51-100 (50 rows)" in out
    assert "extra.jsonl: not a batch name" in out
    assert "batch_003.jsonl:1: id" in out and "queries.jsonl:101 is" in out
    assert "batch_003.jsonl:22: id" in out and "past the batch's last query (queries.jsonl:121)" in out


def test_self_agreement_retag_is_checked_by_position(assemble):
    """The committed blind re-tag lines up with its sample; a shifted or short copy names file and line."""
    spec = importlib.util.spec_from_file_location("seed_self_agreement", REPO / "scripts" / "seed_self_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = REPO / "data" / "seed" / "self_agreement"
    queries = [json.loads(line) for line in assemble.jsonl_lines(out / "queries.jsonl")]
    lines = assemble.jsonl_lines(out / "retag.jsonl")
    records, problems = mod.check_retag(queries, lines)
    assert problems == [] and [r["id"] for r in records] == [q["id"] for q in queries] and len(records) == 100
    held = {r["id"] for r in read_jsonl(REPO / "data" / "seed" / "held_out_sharegpt.jsonl")}
    assert {q["id"] for q in queries} <= held and all("tags" not in q for q in queries)  # blind: no tags

    _, problems = mod.check_retag(queries, lines[:10] + lines[11:])  # line 11 dropped: 12 onwards shift up
    assert problems[0].startswith("retag.jsonl:11: id ") and problems[-1] == "retag.jsonl: 99 rows for 100 queries"
