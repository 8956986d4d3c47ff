"""Per-tag confidence: the definition on hand-made token streams, and the transformers engine for real."""

import json
import math

from instag.tagger.confidence import attach, chat_token_ends, tag_confidences, token_ends
from instag.tagger.prompt import ANSWER_PREFIX
from tests.conftest import REPO, read_jsonl, write_jsonl


def test_a_tag_is_its_tokens_through_its_closing_quote():
    answer = '["code generation", "python"]'
    gen = answer[len('["'):]
    pieces = ["code", " generation", '", "', "python", '"]']
    ends = token_ends(pieces, gen)
    assert ends == [4, 15, 19, 25, 27]
    conf = tag_confidences(answer, 2, ["code generation", "python"], ends, [-0.1, -0.2, -0.3, -0.4, -0.5], "tags")
    # code generation: its two tokens and '", "' (which closes it); python: its token and '"]'
    assert conf == [round(math.exp(-0.6), 4), round(math.exp(-0.9), 4)]


def test_explanations_format_and_a_token_shared_by_two_tags():
    tags = [{"tag": "math", "explanation": "uses python"}, {"tag": "python", "explanation": "x"}]
    answer = json.dumps(tags)
    prefix = ANSWER_PREFIX["tags+explanations"]
    gen = answer[len(prefix):]
    # one token per character: every tag's probability is that of its characters and closing quote
    pieces = list(gen)
    lps = [-0.01 * (i + 1) for i in range(len(pieces))]
    out = [dict(t) for t in tags]
    attach(out, answer, len(prefix), token_ends(pieces, gen), lps, "tags+explanations")
    start = answer.index('"tag": "python"') + len('"tag": "') - len(prefix)  # not the "python" in the explanation
    want = math.exp(sum(lps[start:start + len("python") + 1]))
    assert out[1]["confidence"] == round(want, 4)
    assert out[0]["confidence"] == round(math.exp(sum(lps[0:5])), 4)  # "math" + its quote


def test_offsets_fall_back_to_decoding_when_pieces_do_not_join():
    text = "caf\u00e9"
    pieces = ["ca", "f\ufffd", "\ufffd"]  # a character split over two tokens decodes to replacement marks
    ids = [1, 2, 3]
    decoded = {1: "ca", 2: "caf", 3: "caf\u00e9"}
    assert token_ends(pieces, text) is None
    assert token_ends(pieces, text, lambda x: decoded[len(x)], ids) == [2, 3, 4]


def test_server_logprobs_line_up_with_the_answer_past_its_end_of_turn_token():
    """A vLLM server's chat logprobs list the end-of-turn token the answer text leaves out, and carry each
    token's bytes (exact where a character is split over tokens)."""
    text = 'caf\u00e9", "python"]'
    content = [{"token": "ca", "bytes": list(b"ca"), "logprob": -0.1},
               {"token": "f\ufffd", "bytes": list(b"f\xc3"), "logprob": -0.2},
               {"token": "\ufffd\"", "bytes": list(b"\xa9\""), "logprob": -0.3},
               {"token": ', "', "bytes": list(b', "'), "logprob": -0.0},
               {"token": 'python"]', "bytes": list(b'python"]'), "logprob": -0.5},
               {"token": "<|im_end|>", "bytes": list(b"<|im_end|>"), "logprob": 0.0}]
    ends, lps = chat_token_ends(content, text)
    assert ends == [2, 3, 5, 8, 16, 26] and lps[-1] == 0.0
    answer = '["' + text
    assert tag_confidences(answer, 2, ["caf\u00e9", "python"], ends, lps, "tags") == [
        round(math.exp(-0.6), 4), round(math.exp(-0.5), 4)]
    # texts alone: the split character does not join, so they do not line up
    assert chat_token_ends([{k: v for k, v in c.items() if k != "bytes"} for c in content], text) is None
    assert token_ends(["ab", "c", "<|im_end|>"], "abc") == [2, 3, 13]
    assert token_ends(["ab", "x"], "abc") is None


def test_a_tag_not_written_as_is_gets_none():
    answer = '["a", "b'  # cut off: the parser repairs it, the last tag has no closing quote
    ends = token_ends(['a", "', 'b'], answer[2:])
    assert tag_confidences(answer, 2, ["a", "b"], ends, [-0.1, -0.2], "tags") == [round(math.exp(-0.1), 4), None]


def test_transformers_engine_gives_every_tag_a_confidence(tmp_path):
    from instag.tagger.run import TagOptions, tag_file

    rows = read_jsonl(REPO / "data" / "seed" / "held_out.jsonl")[:6]
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": r["id"], "query": r["query"]} for r in rows])
    tag_file(src, tmp_path / "t.jsonl", TagOptions(model="local", engine="transformers", progress=False))
    recs = read_jsonl(tmp_path / "t.jsonl")
    confs = [t.get("confidence") for r in recs for t in r["tags"]]
    assert recs and all(r["status"] == "ok" for r in recs)
    assert confs and all(c is not None and 0.0 < c <= 1.0 for c in confs), confs
    # batch size changes padding, not the answer: the same confidences to float tolerance
    tag_file(src, tmp_path / "b1.jsonl", TagOptions(model="local", engine="transformers", batch_size=1,
                                                     progress=False))
    again = [t.get("confidence") for r in read_jsonl(tmp_path / "b1.jsonl") for t in r["tags"]]
    assert len(again) == len(confs) and all(abs(a - b) < 2e-3 for a, b in zip(again, confs)), (again, confs)


def test_normalize_cli_leaves_low_confidence_tags_out(tmp_path):
    from typer.testing import CliRunner

    from instag.cli import app

    recs = [{"id": f"q{i}", "query": f"q{i}", "status": "ok", "tags": [
        {"tag": "code generation", "explanation": "", "confidence": 0.9},
        {"tag": "python", "explanation": "", "confidence": 0.2 if i % 2 else 0.8}]} for i in range(6)]
    src = write_jsonl(tmp_path / "t.jsonl", recs)
    out = tmp_path / "n.jsonl"
    res = CliRunner().invoke(app, ["normalize", str(src), "-o", str(out), "--map", str(tmp_path / "m.json"),
                                   "--min-tag-confidence", "0.5", "--steps", "rule"])
    assert res.exit_code == 0, res.output
    got = {r["id"]: r for r in read_jsonl(out)}
    for i in range(6):
        assert got[f"q{i}"]["normalized_tags"] == (["code generation"] if i % 2 else ["code generation", "python"])
        assert [t["tag"] for t in got[f"q{i}"]["tags"]] == ["code generation", "python"]  # the record keeps it
    assert json.loads((tmp_path / "m.json").read_text())["map"]["python"]["low_confidence"] == 3


def test_an_adapters_calibration_maps_every_raw_probability(tmp_path):
    from instag.tagger.confidence import CALIBRATION_FILE, load_calibration

    assert load_calibration(str(tmp_path)) is None and load_calibration(None) is None
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "isotonic", "x": [0.0, 0.5, 1.0],
                                                         "y": [0.2, 0.6, 1.0]}))
    calibrate = load_calibration(str(tmp_path))
    answer = '["code generation", "python"]'
    tags = [{"tag": "code generation"}, {"tag": "python"}]
    attach(tags, answer, 2, token_ends(["code generation", '", "', 'python"]'], answer[2:]),
           [math.log(0.5), 0.0, math.log(0.25)], "tags", calibrate)
    assert [t["confidence"] for t in tags] == [0.6, 0.4]  # 0.5 -> 0.6; 0.25 -> halfway from 0.2 to 0.6
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "platt"}))
    import pytest

    with pytest.raises(ValueError, match=CALIBRATION_FILE):
        load_calibration(str(tmp_path))
    # the same check as the fitting side's reader: x must ascend, or np.interp would answer nonsense
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "isotonic", "x": [0.5, 0.0], "y": [0.2, 0.6]}))
    with pytest.raises(ValueError, match="x ascending"):
        load_calibration(str(tmp_path))


def test_the_taggers_threshold_moves_its_least_confident_tags_aside(tmp_path):
    """An adapter's calibration may carry the tagger's default min_tag_confidence: instag tag's records then
    keep the tags at or above it and list the others under low_confidence_tags; a query always keeps its most
    confident tag; --min-tag-confidence overrides it (0 keeps all)."""
    import pytest

    from instag.io import Query
    from instag.tagger.backends import Generation
    from instag.tagger.confidence import CALIBRATION_FILE, keep_mask, load_calibration, split_confident
    from instag.tagger.run import make_record

    assert keep_mask([0.9, 0.1, None, 0.3], 0.3) == [True, False, True, True]
    assert keep_mask([0.1, 0.2, 0.05], 0.5) == [False, True, False]  # all below: the most confident stays
    assert keep_mask([], 0.5) == []
    tags = [{"tag": "a", "confidence": 0.9}, {"tag": "b", "confidence": 0.1}]
    assert split_confident(tags, 0.0) == (tags, []) and split_confident(tags, 0.2) == (tags[:1], tags[1:])

    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0],
                                                         "min_tag_confidence": 0.3}))
    calibrate = load_calibration(str(tmp_path))
    assert calibrate.min_tag_confidence == 0.3 and calibrate(0.25) == 0.25
    answer = '["code generation", "python", "sorting"]'
    gen = Generation(text=answer, token_ends=[15, 19, 25, 29, 37], token_logprobs=[
        math.log(0.8), 0.0, math.log(0.2), 0.0, math.log(0.5)])
    q = Query(id="q1", source="s", query="sort a list in python")
    rec = make_record(q, gen, "m", False, "tags", calibrate)
    assert [t["tag"] for t in rec["tags"]] == ["code generation", "sorting"]
    assert rec["low_confidence_tags"] == [{"tag": "python", "explanation": "", "confidence": 0.2}]
    assert rec["status"] == "ok" and rec["raw"] == answer  # the answer as the model wrote it
    everything = make_record(q, gen, "m", False, "tags", calibrate, min_tag_confidence=0.0)
    assert len(everything["tags"]) == 3 and "low_confidence_tags" not in everything
    assert len(make_record(q, gen, "m", False, "tags", None)["tags"]) == 3  # no calibration: no threshold
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "isotonic", "x": [0.0], "y": [0.0],
                                                         "min_tag_confidence": 3}))
    with pytest.raises(ValueError, match="min_tag_confidence"):
        load_calibration(str(tmp_path))
