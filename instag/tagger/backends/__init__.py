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


def truncate_tokens(tokenizer, query: str, max_tokens: int) -> tuple[str, bool]:  # noqa: ANN001
    """Cut a query to ``max_tokens`` tokens of ``tokenizer``; returns (text, whether it was cut)."""
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return query, False
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), True
