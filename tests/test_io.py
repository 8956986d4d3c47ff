import csv
import json

import pytest

from instag.io import InputError, JsonlAppender, ReadStats, read_queries, repair_tail, stable_id
from tests.conftest import write_jsonl


def texts(path, **kw):
    return [(q.id, q.query, q.source, q.turn) for q in read_queries(path, **kw)]


def test_alpaca_instruction_and_input(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "bonjour", "id": 7},
                                           {"instruction": "Say hi", "input": ""}])
    got = texts(p)
    assert got[0] == ("7", "Translate\n\nbonjour", "a", None)
    assert got[1] == (stable_id("Say hi"), "Say hi", "a", None)


@pytest.mark.parametrize("key", ["query", "question", "prompt"])
def test_plain_text_fields(tmp_path, key):
    p = write_jsonl(tmp_path / "q.jsonl", [{key: "What is 2+2?", "source": "math"}])
    assert texts(p) == [(stable_id("What is 2+2?"), "What is 2+2?", "math", None)]


CHAT_OPENAI = {"id": "c1", "messages": [
    {"role": "system", "content": "be nice"}, {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "answer"},
    {"role": "user", "content": [{"type": "text", "text": "second question"}]}]}
CHAT_SHAREGPT = {"id": "c2", "conversations": [
    {"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi"},
    {"from": "human", "value": "tell me a joke"}]}


def test_chat_shapes_first_user_turn(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [CHAT_OPENAI, CHAT_SHAREGPT])
    assert [(i, q) for i, q, _, _ in texts(p)] == [("c1", "first question"), ("c2", "hello there")]


def test_chat_shapes_all_turns(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [CHAT_OPENAI, CHAT_SHAREGPT])
    got = texts(p, all_turns=True)
    assert [(i, q, t) for i, q, _, t in got] == [
        ("c1#0", "first question", 0), ("c1#1", "second question", 1),
        ("c2#0", "hello there", 0), ("c2#1", "tell me a joke", 1)]


def test_field_override(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [{"question": "ignored", "text": "use me"}])
    assert texts(p, field="text")[0][1] == "use me"


def test_json_array_csv_parquet_and_saved_dataset_read_alike(tmp_path):
    import datasets
    import pandas as pd

    rows = [{"id": "r1", "instruction": "Explain recursion", "input": ""},
            {"id": "r2", "instruction": "Summarize", "input": "A long text."}]
    expected = [("r1", "Explain recursion"), ("r2", "Summarize\n\nA long text.")]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "instruction", "input"])
        w.writeheader()
        w.writerows(rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.json", "d.csv", "d.parquet", "saved"):
        assert [(i, q) for i, q, _, _ in texts(tmp_path / name)] == expected, name


def test_stable_ids_do_not_depend_on_position(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"query": "x"}, {"query": "y"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"query": "y"}, {"query": "x"}])
    assert sorted(i for i, *_ in texts(a)) == sorted(i for i, *_ in texts(b))


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        list(read_queries(tmp_path / "nope.jsonl"))


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"query": "ok"}\n\n{"query": "broken\n{"query": "fine"}\n')
    with pytest.raises(InputError) as e:
        list(read_queries(p))
    assert str(e.value).startswith(f"{p}:3: malformed JSON")


def test_record_without_query_names_line(tmp_path):
    p = write_jsonl(tmp_path / "noq.jsonl", [{"query": "ok"}, {"answer": "no question here"}])
    with pytest.raises(InputError, match=r"noq.jsonl:2: record has no query text"):
        list(read_queries(p))


def test_empty_query_text(tmp_path):
    p = write_jsonl(tmp_path / "empty.jsonl", [{"instruction": "   ", "input": ""}])
    with pytest.raises(InputError, match=r"empty.jsonl:1: record has an empty query text"):
        list(read_queries(p))


def test_non_object_record_in_json_array(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[{"query": "a"}, 5]')
    with pytest.raises(InputError, match=r"arr.json \[record 1\]: record is a int"):
        list(read_queries(p))


def test_unsupported_format_and_unreadable_parquet(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported input format '.txt'"):
        list(read_queries(tmp_path / "x.txt"))
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        list(read_queries(tmp_path / "x.parquet"))


def test_skip_bad_counts_and_continues(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"query": "one"}\n{oops\n{"other": 1}\n{"query": "two"}\n')
    stats = ReadStats()
    got = [q.query for q in read_queries(p, skip_bad=True, stats=stats)]
    assert got == ["one", "two"]
    assert [e.where for e in stats.bad] == [2, 3]
    assert stats.records == 4 and stats.queries == 2


# ------------------------------------------------------------------ append-only output


def test_torn_last_line_is_repaired(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "ta')
    assert repair_tail(p) == len('{"id": "c", "ta')
    with JsonlAppender(p) as w:
        w.write({"id": "c"})
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == ["a", "b", "c"]
