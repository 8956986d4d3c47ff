"""Tag matching shared by the eval levels (:mod:`instag.distill.evaluate`) and the confidence calibration
(:mod:`instag.distill.calibration`). One implementation, so both judge the same predicted tags correct;
it lives apart from both because evaluate uses calibration (a module of its own would otherwise close an
import cycle)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from instag.select.normalize import EmbedFn, unit_rows

SEMANTIC_THRESHOLD = 0.8


def dedupe(tags: Sequence[str], key: Callable[[str], str]) -> list[str]:
    """The distinct keys of non-blank tags, in first-seen order."""
    return list(dict.fromkeys(key(t) for t in tags if t.strip()))


def tag_vectors(tag_lists: Iterable[Sequence[str]], embed: EmbedFn) -> dict[str, np.ndarray]:
    """Unit embedding of every distinct stripped tag of the lists."""
    vocab = sorted({t.strip() for tags in tag_lists for t in tags if t.strip()})
    return dict(zip(vocab, unit_rows(embed(vocab)))) if vocab else {}


def semantic_pairs(pred: Sequence[str], gold: Sequence[str], vec: dict[str, np.ndarray],
                   threshold: float = SEMANTIC_THRESHOLD) -> list[tuple[str, str]]:
    """The (predicted, gold) tag pairs (stripped) that match within one query: greedy one-to-one by
    descending cosine similarity while it is >= threshold."""
    pred, gold = dedupe(pred, str.strip), dedupe(gold, str.strip)
    if not pred or not gold:
        return []
    sims = np.array([[float(vec[p] @ vec[g]) for g in gold] for p in pred])
    pairs = sorted(((sims[i, j], i, j) for i in range(len(pred)) for j in range(len(gold))), reverse=True)
    used_p, used_g, out = set(), set(), []
    for s, i, j in pairs:
        if s < threshold:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            out.append((pred[i], gold[j]))
    return out
