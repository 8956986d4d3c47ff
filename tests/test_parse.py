import json

import pytest

import re

from instag.tagger.parse import STATUS_EMPTY, STATUS_OK, STATUS_UNPARSED, parse_tags
from instag.tagger.prompt import (ANSWER_PREFIX, MAX_TAGS, TARGETS, answer_pattern, build_messages, format_answer,
                                  render_prompt)

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


@pytest.mark.parametrize("text", ["[]", "[ ]", '{"tags": []}', '["", "  "]'])
def test_an_answer_without_tags_is_never_ok(text):
    parsed = parse_tags(text)
    assert parsed.status == (STATUS_EMPTY if text != '["", "  "]' else STATUS_UNPARSED) and parsed.tags == []
    assert parsed.error


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


@pytest.mark.parametrize("target", TARGETS)
def test_guided_pattern_takes_every_trained_answer_and_no_empty_one(target):
    """Guided decoding continues the prefilled prompt: its pattern must match what the distilled model was
    trained to write after the prefix (json.dumps of 1 to MAX_TAGS tags), and nothing without a tag."""
    pattern, prefix = re.compile(answer_pattern(target)), ANSWER_PREFIX[target]

    def rest(tags):
        text = format_answer(tags, target)
        assert text.startswith(prefix)
        return text[len(prefix):]

    tags = [{"tag": t, "explanation": e} for t, e in [("code generation", "asks for code"), ("c++", ""),
                                                       ('say "hi"', "quotes\nand a newline"), ("数学", "ü")]]
    for k in range(1, MAX_TAGS + 1):
        answer = (tags * MAX_TAGS)[:k]
        assert pattern.fullmatch(rest(answer)), answer
        assert parse_tags(prefix + rest(answer)).status == STATUS_OK
    # After the prefix no "[]" can be written; an empty first tag or one tag too many is refused.
    for bad in ([{"tag": "", "explanation": ""}], (tags * MAX_TAGS)[:MAX_TAGS + 1]):
        assert not pattern.fullmatch(rest(bad))
    assert not pattern.fullmatch(rest(tags[:2]).replace(", ", ",", 1))  # only json.dumps' separators
