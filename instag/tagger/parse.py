"""Robust parsing of tagger answers.

Accepts what real models write: code fences, prose before or after the JSON, near-JSON (trailing
commas, single quotes, unclosed brackets; repaired with json-repair), a single object instead of a
list, ``{"tags": [...]}`` wrappers, and the compact format (a list of tag strings). An answer that holds
no recognisable tags is never dropped: the caller keeps its raw text with status ``unparsed``, or
``empty`` when it is a well-formed list with no tag in it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import json_repair

STATUS_OK = "ok"
STATUS_UNPARSED = "unparsed"
STATUS_ERROR = "error"  # the request itself failed (API error after retries)
STATUS_EMPTY = "empty"  # a well-formed answer that names no tag ("[]"): no tags, so never "ok"; retried

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|\Z)", re.S)
_TAG_KEYS = ("tag", "Tag", "name", "intent", "label")
_EXPL_KEYS = ("explanation", "Explanation", "reason", "description")
_WRAPPER_KEYS = ("tags", "Tags", "intention_tags", "intent_tags", "result", "results")
MAX_TAG_CHARS = 100


@dataclass
class Parsed:
    tags: list[dict[str, str]] = field(default_factory=list)
    status: str = STATUS_UNPARSED
    error: str | None = None


def _candidates(text: str) -> list[str]:
    """Pieces of the answer that may hold the JSON, best first."""
    out = [m.group(1) for m in _FENCE.finditer(text)]
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if starts:
        out.append(text[min(starts):])
    return out


def _load(piece: str) -> Any:
    piece = piece.strip()
    start = min((i for i in (piece.find("["), piece.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    piece = piece[start:]
    try:
        value, _end = json.JSONDecoder().raw_decode(piece)  # ignores trailing text
        return value
    except json.JSONDecodeError:
        pass
    try:
        return json_repair.loads(piece)
    except Exception:  # json-repair is lenient, but never let a parser crash a run
        return None


def _items(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        # [[...]] from some models
        if len(value) == 1 and isinstance(value[0], list):
            return value[0]
        return value
    if isinstance(value, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(value.get(key), list):
                return value[key]
        if any(k in value for k in _TAG_KEYS):
            return [value]
        if value and all(isinstance(v, str) for v in value.values()):
            # {"tag name": "explanation", ...}
            return [{"tag": k, "explanation": v} for k, v in value.items()]
    return None


def _tag_of(item: Any) -> dict[str, str] | None:
    if isinstance(item, str):
        tag, expl = item, ""
    elif isinstance(item, dict):
        tag = next((item[k] for k in _TAG_KEYS if isinstance(item.get(k), str)), None)
        if tag is None:
            return None
        expl = next((item[k] for k in _EXPL_KEYS if isinstance(item.get(k), str)), "")
    else:
        return None
    tag = " ".join(tag.split())
    if not tag or len(tag) > MAX_TAG_CHARS:
        return None
    return {"tag": tag, "explanation": expl.strip()}


def parse_tags(text: str | None) -> Parsed:
    """Parse one model answer into ``[{"tag", "explanation"}]`` (explanation empty for compact answers)."""
    if text is None or not text.strip():
        return Parsed(error="empty answer")
    for piece in _candidates(text):
        items = _items(_load(piece))
        if items is None:
            continue
        tags, seen = [], set()
        for item in items:
            t = _tag_of(item)
            if t is not None and t["tag"].lower() not in seen:
                seen.add(t["tag"].lower())
                tags.append(t)
        if tags:
            return Parsed(tags=tags, status=STATUS_OK)
        if not items:
            return Parsed(status=STATUS_EMPTY, error="the answer is an empty tag list")
    return Parsed(error="no JSON list of tags found in the answer")
