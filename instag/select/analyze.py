"""Diversity and complexity of tagged data sets, with a self-contained HTML report.

Diversity = unique tags a data set covers; complexity = average tags per query (InsTag, section 3).
When the records carry per-tag confidences (local engines), the report adds their distribution per data
set: quantiles, the share below 0.5, a histogram.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TOP_N = 20
CONF_BINS = 10  # histogram of tag confidences in summary.json
LOW_CONFIDENCE = 0.5


@dataclass
class DatasetStats:
    name: str
    queries: int
    skipped: int
    unique_tags: int
    avg_tags: float
    median_tags: float
    max_tags: int
    tags_per_query_hist: dict[int, int]
    singleton_tags: int  # long tail: tags used by one query only
    top_tags: list[tuple[str, int]]
    confidence: dict[str, Any] | None = None  # confidence_stats of the tags as tagged; None: no confidences

    @property
    def long_tail_share(self) -> float:
        return self.singleton_tags / self.unique_tags if self.unique_tags else 0.0


def confidence_stats(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Distribution of tag confidences (None: unknown, counted apart); None when no tag has one."""
    import numpy as np

    known = np.array([v for v in values if v is not None], dtype=float)
    if not known.size:
        return None
    p10, p50, p90 = (float(q) for q in np.quantile(known, [0.1, 0.5, 0.9]))
    # bins as the eval's reliability table has them (np.histogram's float edges put 0.6 below 0.6)
    idx = np.minimum(np.floor(np.clip(known, 0, 1) * CONF_BINS + 1e-9).astype(int), CONF_BINS - 1)
    hist = np.bincount(idx, minlength=CONF_BINS)
    return {"tags": int(known.size), "tags_without": len(values) - int(known.size), "mean": float(known.mean()),
            "p10": p10, "p50": p50, "p90": p90, "share_below_0_5": float((known < LOW_CONFIDENCE).mean()),
            "hist": [int(h) for h in hist]}


def dataset_stats(name: str, tag_lists: Sequence[Sequence[str]], skipped: int = 0,
                  confidences: Sequence[float | None] | None = None) -> tuple[DatasetStats, Counter]:
    """``confidences``: those of every tag of the data set as tagged (before normalization), flat."""
    from instag.select.normalize import count_tags

    freq = count_tags(tag_lists)
    lens = sorted(len(t) for t in tag_lists)
    n = len(lens)
    median = 0.0 if not n else (lens[n // 2] if n % 2 else (lens[n // 2 - 1] + lens[n // 2]) / 2)
    return DatasetStats(
        name=name, queries=n, skipped=skipped, unique_tags=len(freq),
        avg_tags=sum(lens) / n if n else 0.0, median_tags=float(median), max_tags=lens[-1] if n else 0,
        tags_per_query_hist=dict(sorted(Counter(lens).items())),
        singleton_tags=sum(1 for c in freq.values() if c == 1),
        top_tags=freq.most_common(TOP_N),
        confidence=confidence_stats(confidences) if confidences else None,
    ), freq


def group_tag_lists(files: Sequence[Any], by: str = "auto") -> dict[str, tuple[list[list[str]], int]]:
    """Group the usable queries of loaded :class:`~instag.select.data.TagFile` s into data sets:
    by ``source`` field, by ``file``, or ``auto`` (source when one file, else file)."""
    from instag.select.data import tag_strings

    if by == "auto":
        by = "source" if len(files) == 1 else "file"
    if by not in ("source", "file"):
        raise ValueError(f"group by 'source', 'file' or 'auto', not {by!r}")
    groups: dict[str, tuple[list[list[str]], int]] = {}
    for tf in files:
        if by == "file":
            name = tf.path.name
            groups[name] = (tf.tag_lists(), sum(tf.skipped.values()))
            continue
        usable = set(tf.usable)
        for i, rec in enumerate(tf.records):
            name = str(rec.get("source") or tf.path.name)
            lists, skipped = groups.get(name, ([], 0))
            if i in usable:
                lists.append(tag_strings(rec))
            else:
                skipped += 1
            groups[name] = (lists, skipped)
    return groups


def group_confidences(files: Sequence[Any], by: str = "auto") -> dict[str, list[float | None]]:
    """The confidences of the original tags of the usable queries, grouped as :func:`group_tag_lists`
    groups them (flat, None where a tag has none)."""
    from instag.select.data import tag_confidences

    if by == "auto":
        by = "source" if len(files) == 1 else "file"
    out: dict[str, list[float | None]] = {}
    for tf in files:
        for i in tf.usable:
            rec = tf.records[i]
            name = tf.path.name if by == "file" else str(rec.get("source") or tf.path.name)
            out.setdefault(name, []).extend(tag_confidences(rec))
    return out


# ---------------------------------------------------------------- plots


def _png(fig) -> str:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(stats: list[DatasetStats], freqs: list[Counter]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, f in zip(stats, freqs):
        counts = sorted(f.values(), reverse=True)
        if counts:
            ax.loglog(range(1, len(counts) + 1), counts, label=s.name)
    ax.set(xlabel="tag rank", ylabel="queries with the tag", title="Tag frequency (log-log)")
    ax.legend(fontsize=7)
    out["tag_frequency"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(stats))
    for k, s in enumerate(stats):
        xs = list(s.tags_per_query_hist)
        total = max(1, s.queries)
        ax.bar([x + k * width for x in xs], [s.tags_per_query_hist[x] / total for x in xs], width=width, label=s.name)
    ax.set(xlabel="tags per query", ylabel="share of queries", title="Complexity: tags per query")
    ax.legend(fontsize=7)
    out["tags_per_query"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in stats:
        # max(1, ...): a data set with no parsed query (a run whose answers were all unparsed) still plots.
        ax.scatter(s.unique_tags, s.avg_tags, s=30 + 170 * min(1.0, s.queries / max(1, *(x.queries for x in stats))))
        ax.annotate(s.name, (s.unique_tags, s.avg_tags), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="diversity: unique tags (log)", ylabel="complexity: average tags per query",
           title="Data sets: diversity vs complexity")
    out["diversity_complexity"] = _png(fig)

    with_conf = [s for s in stats if s.confidence]
    if with_conf:
        fig, ax = plt.subplots(figsize=(6, 4))
        edges = [k / CONF_BINS for k in range(CONF_BINS + 1)]
        for s in with_conf:
            total = max(1, s.confidence["tags"])
            ax.stairs([h / total for h in s.confidence["hist"]], edges, label=s.name)
        ax.axvline(LOW_CONFIDENCE, color="gray", ls="--", lw=1)
        ax.set(xlim=(0, 1), xlabel="tag confidence", ylabel="share of tags", title="Tag confidence")
        ax.legend(fontsize=7)
        out["confidence"] = _png(fig)
    return out


# ---------------------------------------------------------------- report


def write_report(stats: list[DatasetStats], freqs: list[Counter], out_dir: Path, title: str = "instag report",
                 extra: dict[str, Any] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    def dataset(s: DatasetStats) -> dict[str, Any]:
        d = {**asdict(s), "long_tail_share": round(s.long_tail_share, 4)}
        if d["confidence"] is None:  # files without confidences: summary.json as before
            del d["confidence"]
        return d
    summary = {"datasets": [dataset(s) for s in stats]}
    if extra:
        summary.update(extra)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    imgs = plots(stats, freqs)
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.queries}</td><td>{s.skipped}</td><td>{s.unique_tags}</td>"
        f"<td>{s.avg_tags:.2f}</td><td>{s.median_tags:g}</td><td>{s.max_tags}</td>"
        f"<td>{s.singleton_tags} ({100 * s.long_tail_share:.0f}%)</td></tr>" for s in stats)
    tops = "".join(
        f"<div class='top'><h3>{esc(s.name)}</h3><ol>"
        + "".join(f"<li>{esc(t)} <span>{c}</span></li>" for t, c in s.top_tags) + "</ol></div>" for s in stats)
    conf_rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{c['tags']}</td><td>{c['tags_without']}</td><td>{c['mean']:.2f}</td>"
        f"<td>{c['p10']:.2f}</td><td>{c['p50']:.2f}</td><td>{c['p90']:.2f}</td>"
        f"<td>{100 * c['share_below_0_5']:.1f}%</td></tr>" for s in stats if (c := s.confidence))
    conf_table = (
        "<h2>Tag confidence</h2><p>Per-tag confidences of the local tagger, as tagged (before normalization); "
        "tags without one (teacher tags) are counted apart.</p><table><tr><th>data set</th><th>tags with a "
        "confidence</th><th>without</th><th>mean</th><th>p10</th><th>p50</th><th>p90</th><th>below 0.5</th>"
        f"</tr>{conf_rows}</table>") if conf_rows else ""
    figs = "".join(f"<figure><img alt='{k}' src='data:image/png;base64,{v}'></figure>" for k, v in imgs.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:0 1em 1em 0}}.top{{display:inline-block;vertical-align:top;margin-right:2em}}
.top span{{color:#888}}</style></head><body>
<h1>{esc(title)}</h1>
<p>Diversity = unique tags covered; complexity = average tags per query (InsTag). Only queries whose tags
parsed are counted; the others are listed as skipped.</p>
<table><tr><th>data set</th><th>queries</th><th>skipped</th><th>unique tags</th><th>avg tags/query</th>
<th>median</th><th>max</th><th>tags used once</th></tr>{rows}</table>
{conf_table}{figs}<h2>Top tags</h2>{tops}</body></html>"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def analyze_files(paths: Sequence[Path], out_dir: Path, by: str = "auto") -> tuple[list[DatasetStats], Path]:
    from instag.select.data import load_tag_file

    files = [load_tag_file(p) for p in paths]
    groups = group_tag_lists(files, by)
    confs = group_confidences(files, by)
    results = [dataset_stats(name, lists, skipped, confs.get(name))
               for name, (lists, skipped) in sorted(groups.items())]
    if len(groups) > 1:
        all_lists = [t for tf in files for t in tf.tag_lists()]
        results.append(dataset_stats("(all)", all_lists, sum(sum(tf.skipped.values()) for tf in files),
                                     [c for cs in confs.values() for c in cs]))
    stats = [s for s, _ in results]
    index = write_report(stats, [f for _, f in results], out_dir,
                         extra={"inputs": [str(p) for p in paths], "grouped_by": by})
    return stats, index
