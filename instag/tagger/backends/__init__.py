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
