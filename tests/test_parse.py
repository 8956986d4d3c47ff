import json

import pytest

from instag.tagger.parse import STATUS_OK, STATUS_UNPARSED, parse_tags
from instag.tagger.prompt import ANSWER_PREFIX, build_messages, format_answer, render_prompt

GOOD = [{"tag": "python programming", "explanation": "asks for Python code"},
        {"tag": "string manipulation", "explanation": "works on strings"}]


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Here are the tags:\n" + json.dumps(GOOD) + "\nLet me know if you need more.",
    json.dumps(GOOD)[:-1] + ",]",  # trailing comma
    json.dumps(GOOD).replace('"', "'"),  # single quotes
    json.dumps(GOOD)[:-2],  # cut off before the closing brackets
    json.dumps({"tags": GOOD}),
    json.dumps({"python programming": "asks for Python code", "string manipulation": "works on strings"}),
])
def test_near_json_answers_parse(text):
    parsed = parse_tags(text)
    assert parsed.status == STATUS_OK
    assert [t["tag"] for t in parsed.tags] == ["python programming", "string manipulation"]


def test_single_object_becomes_a_list():
    parsed = parse_tags('{"tag": "math", "explanation": "arithmetic word problem"}')
    assert parsed.tags == [{"tag": "math", "explanation": "arithmetic word problem"}]


def test_compact_list_of_strings():
    parsed = parse_tags('["math", "word problem", "Math"]')
    assert [t["tag"] for t in parsed.tags] == ["math", "word problem"]  # case-insensitive duplicates dropped
    assert all(t["explanation"] == "" for t in parsed.tags)


@pytest.mark.parametrize("text", ["", "   ", None, "I think this is about coding.", "The answer is [1, 2]",
                                  "[{\"foo\": 1}]"])
def test_unparseable_answers_are_reported_not_dropped(text):
    parsed = parse_tags(text)
    assert parsed.status == STATUS_UNPARSED
    assert parsed.tags == []
    assert parsed.error


def test_empty_list_is_a_valid_answer():
    assert parse_tags("[]").status == STATUS_OK


def test_prompt_holds_query_and_asks_for_json():
    msgs = build_messages("Sort a list in Python", "tags+explanations")
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"].endswith("User query: Sort a list in Python")
    assert '"tag": str, "explanation": str' in msgs[-1]["content"]
    assert "JSON list of tag strings" in build_messages("x", "tags")[-1]["content"]
    with pytest.raises(ValueError, match="unknown target"):
        build_messages("x", "yaml")


@pytest.mark.parametrize("target", ["tags+explanations", "tags"])
def test_canonical_answer_starts_with_the_prefill_and_round_trips(target):
    answer = format_answer(GOOD, target)
    assert answer.startswith(ANSWER_PREFIX[target])
    assert [t["tag"] for t in parse_tags(answer).tags] == [t["tag"] for t in GOOD]


def test_render_prompt_ends_with_prefill(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render_prompt(tok, "hello", "tags")
    assert text.endswith("<|im_start|>assistant\n" + ANSWER_PREFIX["tags"])
