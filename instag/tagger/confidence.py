"""How sure the tagger is of each tag it writes: the probability of the tag under greedy decoding.

Definition. A tag's confidence is the model's probability of writing that tag's string and then closing
it: the product, over every generated token that overlaps the characters from the tag's first
character to its closing quote, of that token's probability under the model's own (raw) next-token
distribution. The closing quote counts ("the tag ends here": a model that would have gone on to a longer
tag is less sure of this one); the separators and the list's closing bracket do not, and the prefilled
answer opening is not generated. A token that holds the closing quote and the next opening one (``", "``)
counts for the tag it closes; one that also holds the next tag's first letters counts for both.

Every local engine computes it from the same definition: transformers from its logits (its answers are not
guided), vLLM from the logprobs of its sampled tokens, which under guided decoding are the model's
distribution renormalized over what the answer pattern allows (vLLM masks before it reports them). Where
the model keeps to its trained format the mask removes next to no probability, so the engines agree
within a small tolerance (tests/test_engine_agreement.py measures it). Teacher API tags carry a confidence
only where the API returns logprobs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIDENCE = "confidence"  # the key in a tag's record
DIGITS = 4
# Beside an adapter: a monotone map from the raw probability to the probability that the teacher would
# have written the tag (isotonic, fitted on held-out predictions: scripts/fit_confidence_calibration.py).
CALIBRATION_FILE = "confidence_calibration.json"


class Calibration:
    """An adapter's calibration: a monotone map from the raw probability to the probability that the
    teacher would have written the tag, and the tagger's default ``min_tag_confidence`` (chosen on the same
    dev predictions: the calibrated confidence below which dropping a tag raised semantic F1 most)."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], min_tag_confidence: float = 0.0):
        self.xs, self.ys, self.min_tag_confidence = list(xs), list(ys), float(min_tag_confidence)

    def __call__(self, p: float) -> float:
        return float(np.interp(p, self.xs, self.ys))


def isotonic_points(data: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The (x, y) points of an isotonic calibration's JSON, checked: method, equal non-zero lengths, x ascending."""
    if data.get("method") != "isotonic":
        raise ValueError(f"not an isotonic calibration: method {data.get('method')!r}")
    x, y = [float(v) for v in data.get("x") or []], [float(v) for v in data.get("y") or []]
    if not x or len(x) != len(y) or any(b < a for a, b in zip(x, x[1:])):
        raise ValueError("an isotonic calibration needs x and y of the same non-zero length, x ascending")
    return x, y


def load_calibration(adapter_dir: str | None) -> Calibration | None:
    """The adapter's calibration, None where it ships none."""
    if not adapter_dir:
        return None
    path = Path(adapter_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    try:
        xs, ys = isotonic_points(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    threshold = float(data.get("min_tag_confidence") or 0.0)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{path}: min_tag_confidence must be within [0, 1], not {threshold}")
    return Calibration(xs, ys, threshold)


def keep_mask(confs: Sequence[float | None], threshold: float) -> list[bool]:
    """Which of a query's tags a minimum confidence keeps: those without a confidence and those at or above
    it; where it would drop them all, the most confident one stays (a tagged query keeps a tag)."""
    keep = [c is None or c >= threshold for c in confs]
    if confs and not any(keep):
        keep[max(range(len(confs)), key=lambda i: confs[i])] = True  # type: ignore[arg-type, return-value]
    return keep


def split_confident(tags: list[dict[str, Any]], threshold: float) -> tuple[list[dict], list[dict]]:
    """(kept, dropped) tags of one answer under :func:`keep_mask`; a threshold of 0 keeps all."""
    if threshold <= 0 or not tags:
        return tags, []
    keep = keep_mask([t.get(CONFIDENCE) for t in tags], threshold)
    return [t for t, k in zip(tags, keep) if k], [t for t, k in zip(tags, keep) if not k]


def token_ends(pieces: Sequence[str], text: str, decode: Any = None, token_ids: Sequence[int] | None = None
               ) -> list[int] | None:
    """The end offset in ``text`` (the generated text) of each generated token, from each token's own
    decoded text (``pieces``). Tokens past the end of ``text`` are allowed (a server's logprobs also list
    the end-of-turn token, which the answer text leaves out); they overlap no tag. Where the pieces do not
    join to the text (a multi-byte character split over tokens decodes to replacement characters on its
    own), offsets come from decoding growing prefixes with ``decode(token_ids[:i])``; None when neither
    works."""
    ends, pos = [], 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    if "".join(pieces).startswith(text):
        return ends
    if decode is None or token_ids is None or not token_ids:
        return None
    ends = [len(decode(list(token_ids[: i + 1]))) for i in range(len(token_ids))]
    return ends if decode(list(token_ids)).startswith(text) else None


def byte_token_ends(token_bytes: Sequence[Sequence[int]], text: str) -> list[int] | None:
    """As :func:`token_ends`, from each token's UTF-8 bytes (what OpenAI-style chat logprobs carry as
    ``bytes``): exact where a character is split over tokens. A token ending inside a character ends
    where the last whole character before it does."""
    ends, buf = [], b""
    for b in token_bytes:
        buf += bytes(b)
        ends.append(len(buf.decode("utf-8", errors="ignore")))
    return ends if buf.decode("utf-8", errors="ignore").startswith(text) else None


def chat_token_ends(content: Sequence[Any], text: str) -> tuple[list[int], list[float]] | None:
    """Token end offsets and log-probabilities from an OpenAI chat choice's ``logprobs.content`` (dicts or
    objects with ``token``, ``bytes``, ``logprob``); None where they do not line up with ``text``."""
    def get(c: Any, key: str) -> Any:
        return c.get(key) if isinstance(c, dict) else getattr(c, key, None)

    if not content:
        return None
    values = [get(c, "logprob") for c in content]
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    raw = [get(c, "bytes") for c in content]
    if all(isinstance(b, list) for b in raw):
        ends = byte_token_ends(raw, text)
    else:
        ends = token_ends([get(c, "token") or "" for c in content], text)
    return (ends, [float(v) for v in values]) if ends is not None else None


def _tag_spans(answer: str, tags: Sequence[str], target: str) -> list[tuple[int, int] | None]:
    """(first character, closing quote) of each tag's string in the answer, found in order."""
    spans, pos = [], 0
    key = '"tag": "' if target == "tags+explanations" else '"'
    for tag in tags:
        body = json.dumps(tag, ensure_ascii=False)[1:-1]
        at = answer.find(key + body + '"', pos)
        if at < 0:
            spans.append(None)
            continue
        start = at + len(key)
        end = start + len(body)  # the closing quote
        spans.append((start, end))
        pos = end + 1
    return spans


def tag_confidences(answer: str, prefix_len: int, tags: Sequence[str], ends: Sequence[int],
                    logprobs: Sequence[float], target: str) -> list[float | None]:
    """Each tag's confidence (see the module docstring), None for a tag not found in the answer as
    written (a repaired or re-spaced answer). ``answer`` = prefix + generated text; ``ends`` are token end
    offsets in the generated text and ``logprobs`` the tokens' log-probabilities."""
    out: list[float | None] = []
    starts = [0, *ends[:-1]]
    for span in _tag_spans(answer, tags, target):
        if span is None:
            out.append(None)
            continue
        lo, hi = span[0] - prefix_len, span[1] - prefix_len  # in the generated text; hi: the closing quote
        total, n = 0.0, 0
        for s, e, lp in zip(starts, ends, logprobs):
            if e > lo and s <= hi:  # the token overlaps [lo, hi]
                total += lp
                n += 1
        out.append(round(math.exp(total), DIGITS) if n else None)
    return out


def attach(tags: list[dict[str, Any]], answer: str, prefix_len: int, ends: Sequence[int] | None,
           logprobs: Sequence[float] | None, target: str, calibrate: Callable[[float], float] | None = None) -> None:
    """Write ``confidence`` into each parsed tag that the answer holds as written, through the adapter's
    ``calibrate`` map where it ships one."""
    if not tags or ends is None or logprobs is None or len(ends) != len(logprobs):
        return
    for tag, conf in zip(tags, tag_confidences(answer, prefix_len, [t["tag"] for t in tags], ends, logprobs, target)):
        if conf is not None:
            tag[CONFIDENCE] = round(calibrate(conf), DIGITS) if calibrate else conf
