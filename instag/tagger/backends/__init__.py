"""Tagger backends: each turns queries into raw answers; parsing and output are shared (tagger.run)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Generation:
    """One raw answer (or the error that prevented it) with its token counts."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    # Per generated token: its end offset in the answer after the prefilled opening, and its log-probability
    # (instag.tagger.confidence turns them into per-tag confidences); None where the engine gives none.
    token_ends: list[int] | None = None
    token_logprobs: list[float] | None = None
    # Or each tag's confidence as a server computed it (instag serve: calibrated), by tag.
    tag_confidences: dict[str, float | None] | None = None
    min_tag_confidence: float | None = None  # the server's default threshold (instag serve), where it says


# Queries longer than this many tokens are cut before tagging (instag tag's --max-query-tokens, the endpoint).
MAX_QUERY_TOKENS = 1024


def truncate_tokens(tokenizer, queries: list[str], max_tokens: int) -> list[tuple[str, bool]]:  # noqa: ANN001
    """Cut each query to ``max_tokens`` tokens of ``tokenizer``: a list of (text, whether it was cut).

    One batched tokenizer call: a fast tokenizer spreads it over all cores (about twice as fast as one
    call per text; docs/benchmarks.md).
    """
    ids = tokenizer(queries, add_special_tokens=False)["input_ids"] if queries else []
    return [(q, False) if len(t) <= max_tokens else (tokenizer.decode(t[:max_tokens], skip_special_tokens=True), True)
            for q, t in zip(queries, ids)]
