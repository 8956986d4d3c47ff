"""Chat-formatted SFT examples from teacher tag files, built with the tagger's own prompt.

The prompt side is exactly what the local engines feed the model at inference (chat template,
generation prompt, answer prefix: :func:`instag.tagger.prompt.render_prompt`), and the answer side is
the canonical answer text (:func:`instag.tagger.prompt.format_answer`) after that prefix, closed by
the end-of-turn token. Loss is on the answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instag.select.data import load_tag_file, tag_strings
from instag.tagger.prompt import ANSWER_PREFIX, Target, check_target, format_answer, render_prompt

IGNORE = -100


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": [1] * len(self.input_ids)}


def build_example(tokenizer, rec: dict[str, Any], target: Target, max_length: int) -> Example | None:  # noqa: ANN001
    tags = rec["tags"] if target == "tags+explanations" else tag_strings(rec, normalized=False)
    answer = format_answer(tags, target)
    prefix = ANSWER_PREFIX[target]
    assert answer.startswith(prefix)
    answer_ids = tokenizer(answer[len(prefix):] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    query = rec["query"]
    prompt_ids = tokenizer(render_prompt(tokenizer, query, target), add_special_tokens=False)["input_ids"]
    overflow = len(prompt_ids) + len(answer_ids) - max_length
    if overflow > 0:
        # Cut the query, never the answer: the model must learn to finish its JSON.
        q_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
        keep = len(q_ids) - overflow
        if keep < 16:
            return None
        query = tokenizer.decode(q_ids[:keep], skip_special_tokens=True)
        prompt_ids = tokenizer(render_prompt(tokenizer, query, target), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(answer_ids) > max_length:  # re-tokenization can shift a token or two
            prompt_ids = prompt_ids[: max_length - len(answer_ids)]
    return Example(id=str(rec["id"]), input_ids=prompt_ids + answer_ids,
                   labels=[IGNORE] * len(prompt_ids) + answer_ids)


@dataclass
class BuiltData:
    examples: list[Example]
    skipped_status: int
    skipped_empty: int
    skipped_too_long: int


def build_examples(tokenizer, path: Path, target: str = "tags+explanations", max_length: int = 512  # noqa: ANN001
                   ) -> BuiltData:
    """Examples from every parsed, non-empty teacher record of a tag file."""
    target = check_target(target)
    tf = load_tag_file(path)
    out, empty, too_long = [], 0, 0
    for i in tf.usable:
        rec = tf.records[i]
        if not tag_strings(rec, normalized=False):
            empty += 1
            continue
        ex = build_example(tokenizer, rec, target, max_length)
        if ex is None:
            too_long += 1
        else:
            out.append(ex)
    return BuiltData(out, sum(tf.skipped.values()), empty, too_long)
