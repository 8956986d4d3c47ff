"""The InsTag prompt: the one place that says what a tagger is asked.

Every backend (teacher API, transformers, vLLM) and the distillation data builder use
:func:`build_messages`, so training and inference never drift apart.
"""

from __future__ import annotations

from typing import Literal

Target = Literal["tags+explanations", "tags"]
TARGETS: tuple[str, ...] = ("tags+explanations", "tags")

SYSTEM_PROMPT = "You are a helpful assistant."

# After Lu et al. 2023 (InsTag), section 2: tags of user intentions, each with an explanation, as JSON.
_INSTRUCTIONS: dict[str, str] = {
    "tags+explanations": (
        "Please identify tags of user intentions in the following user query and provide an "
        "explanation for each tag. Tags should be fine-grained and describe both the user's intentions "
        "and the semantics of the request (task, domain, skills, constraints). "
        'Please respond in the JSON format [{"tag": str, "explanation": str}, ...] and nothing else.'
    ),
    "tags": (
        "Please identify tags of user intentions in the following user query. Tags should be "
        "fine-grained and describe both the user's intentions and the semantics of the request "
        "(task, domain, skills, constraints). "
        "Please respond with a JSON list of tag strings [str, ...] and nothing else."
    ),
}


def check_target(target: str) -> Target:
    if target not in TARGETS:
        raise ValueError(f"unknown target format {target!r}; choose one of {', '.join(TARGETS)}")
    return target  # type: ignore[return-value]


def user_prompt(query: str, target: Target = "tags+explanations") -> str:
    return f"{_INSTRUCTIONS[check_target(target)]}\n\nUser query: {query}"


def build_messages(query: str, target: Target = "tags+explanations") -> list[dict[str, str]]:
    """Chat messages asking for the tags of one query."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(query, target)},
    ]


# Local engines start the assistant turn with the answer's opening characters (prefill). A small model
# then continues in the JSON format instead of answering in prose; the distilled adapter is trained on
# answers that begin with exactly this text (json.dumps of the tag list), so train and serve agree.
ANSWER_PREFIX: dict[str, str] = {"tags+explanations": '[{"tag": "', "tags": '["'}


def format_answer(tags: list[dict[str, str]] | list[str], target: Target = "tags+explanations") -> str:
    """The canonical answer text for a tag list (what a tagger should write), in either format."""
    import json

    if check_target(target) == "tags":
        items = [t["tag"] if isinstance(t, dict) else t for t in tags]
    else:
        items = [t if isinstance(t, dict) else {"tag": t, "explanation": ""} for t in tags]
        items = [{"tag": t["tag"], "explanation": t.get("explanation", "")} for t in items]
    return json.dumps(items, ensure_ascii=False)


def render_prompt(tokenizer, query: str, target: Target = "tags+explanations",  # noqa: ANN001
                  prefill: bool = True) -> str:
    """The full text a local model continues: chat template, generation prompt, and (``prefill``) the
    answer prefix; guided decoding leaves the prefix out, since its grammar writes the opening brackets."""
    text = tokenizer.apply_chat_template(build_messages(query, target), tokenize=False, add_generation_prompt=True)
    return text + ANSWER_PREFIX[target] if prefill else text


def template_ids(tokenizer, target: Target = "tags+explanations", prefill: bool = True) -> list[int]:  # noqa: ANN001
    """The prompt tokens every query shares (chat template, system prompt, instructions): the common
    prefix of two prompts whose queries start differently. Engines cache their KV once."""
    import os

    a, b = (tokenizer(render_prompt(tokenizer, q, target, prefill), add_special_tokens=False)["input_ids"]
            for q in ("Name three cats.", "Sum 2 and 3."))
    return os.path.commonprefix([a, b])


# Most tags an answer may hold under guided decoding (the seed teacher writes 2 to 6): a cap, so that an
# answer repeating tags ends instead of running to the token limit.
MAX_TAGS = 12

# One JSON string's content, as json.dumps writes it: any character but quote, backslash and control
# characters, or an escape.
_JSON_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
# The rest of an item once its opening (the prefix, or ', ' + the prefix) is written; a tag is never empty.
_ITEM_REST = {"tags": f'{_JSON_CHAR}+"',
              "tags+explanations": f'{_JSON_CHAR}+", "explanation": "{_JSON_CHAR}*"\\}}'}
_ITEM_OPEN = {"tags": '"', "tags+explanations": '\\{"tag": "'}  # ANSWER_PREFIX less its '[', as a regex


def answer_pattern(target: Target = "tags+explanations") -> str:
    """The regular expression guided decoding holds the answer to, after :data:`ANSWER_PREFIX`.

    The prefix stays in the prompt (the adapter was trained on answers that start with it), so the grammar
    constrains only the continuation: the rest of the first tag, then 0 to ``MAX_TAGS - 1`` more, each as
    ``json.dumps`` separates them, then ``]``. So a guided answer always holds 1 to ``MAX_TAGS`` tags, and a
    model that writes its trained format is never steered away from it.
    """
    rest = _ITEM_REST[check_target(target)]
    return f"{rest}(?:, {_ITEM_OPEN[target]}{rest}){{0,{MAX_TAGS - 1}}}\\]"
