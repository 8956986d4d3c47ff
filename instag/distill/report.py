"""``report.md`` of `instag eval`: markdown tables over the metrics that :mod:`instag.distill.evaluate` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instag.distill.calibration import REPORT_THRESHOLDS

LEVELS = ("exact", "rule", "semantic")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; text columns left-aligned, the rest right-aligned (tabulate is not a dependency)."""
    right = [i > 0 for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _lv(m: dict[str, Any], level: str, key: str) -> str:
    v = m["levels"].get(level)
    # a level not computed (semantic without an embedder) is all zeros: show it as absent, not as 0
    if not v or (v["n_pred"] == v["n_gold"] == v["tp"] == 0):
        return "–"
    return _f(v[key])


def summary_row(name: str, m: dict[str, Any]) -> list[Any]:
    """A row of SUMMARY_HEADER; works on a ceiling's trimmed metrics too (absent counts left blank)."""
    counts = ["" if m.get(k) is None else m[k] for k in ("queries", "missing_predictions", "parse_failures")]
    return [name, *counts,
            _lv(m, "exact", "f1"), _lv(m, "rule", "precision"), _lv(m, "rule", "recall"), _lv(m, "rule", "f1"),
            _lv(m, "semantic", "f1"), _f(m.get("avg_pred_tags"), 2), _f(m.get("avg_gold_tags"), 2)]


SUMMARY_HEADER = ["", "queries", "missing", "failures", "exact F1", "rule P", "rule R", "rule F1", "semantic F1",
                  "tags/query", "gold tags/query"]


def levels_table(m: dict[str, Any], ceiling: dict[str, Any] | None = None) -> str:
    header = ["level", "precision", "recall", "F1"] + (["ceiling P", "ceiling R", "ceiling F1"] if ceiling else [])
    rows = []
    for level in LEVELS:
        row = [level, _lv(m, level, "precision"), _lv(m, level, "recall"), _lv(m, level, "f1")]
        if ceiling:
            row += [_lv(ceiling, level, k) for k in ("precision", "recall", "f1")]
        rows.append(row)
    return md_table(header, rows)


def by_source_table(m: dict[str, Any], ceiling: dict[str, Any] | None = None) -> str:
    header = ["source"] + SUMMARY_HEADER[1:] + (["ceiling rule F1"] if ceiling else [])
    rows = []
    for src, v in m["by_source"].items():
        row = summary_row(src, v)
        if ceiling:
            c = ceiling.get("by_source", {}).get(src)
            row.append(_lv(c, "rule", "f1") if c else "–")
        rows.append(row)
    return md_table(header, rows)


def tpq_table(m: dict[str, Any]) -> str:
    """Tags per query, overall and per source (those with a scored query): mean and histogram, model
    beside gold."""
    bins = list(m["tags_per_query"]["pred"]["hist"])
    rows = []
    for name, v in [("all", m), *((s, v) for s, v in m["by_source"].items() if v["queries"])]:
        rho = v.get("complexity_spearman")
        for side, label in (("pred", "model"), ("gold", "gold")):
            t = v["tags_per_query"][side]
            corr = ("–" if rho is None else _f(rho)) if side == "pred" else ""
            rows.append([name, label, _f(t["mean"], 2), *(t["hist"][b] for b in bins), corr])
    return md_table(["source", "", "mean", *bins, "rank corr. with gold"], rows)


def tag_tables(m: dict[str, Any]) -> str:
    over = [[r["tag"], r["pred"], r["gold"], r["excess"], "new" if r["ratio"] is None else f"{r['ratio']:.2f}"]
            for r in m["tags"]["over_predicted"]]
    missed = [[r["tag"], r["gold"], r["matched"], r["missed"], _f(r["recall"])] for r in m["tags"]["most_missed"]]
    return "\n\n".join([
        "Over-predicted tags (queries, rule level: spelling variants together; ratio = predicted / gold):",
        md_table(["tag", "predicted", "gold", "excess", "ratio"], over) if over else "None.",
        "Most-missed tags (queries with the gold tag, and with it predicted too):",
        md_table(["tag", "gold", "matched", "missed", "recall"], missed) if missed else "None."])


def calibration_tables(cal: dict[str, Any]) -> str:
    """Reliability bins, ECE, the precision/recall of a few confidence thresholds, links to the plots."""
    bins = [[f"{b['lo']:.1f}-{b['hi']:.1f}", b["count"], _f(b["mean_confidence"]), _f(b["precision"]),
             "–" if b["count"] == 0 else f"{b['precision'] - b['mean_confidence']:+.3f}"] for b in cal["bins"]]
    by_t = {round(r["threshold"], 2): r for r in cal["pr_curve"]}
    pr = [[f"{t:.1f}", _f(r["precision"]), _f(r["recall"]), _f(r["f1"]), f"{r['kept_share']:.1%}"]
          for t in REPORT_THRESHOLDS if (r := by_t.get(round(t, 2)))]
    unknown = cal["n_without_confidence"]
    parts = [
        f"Per-tag confidence against correctness at the {cal['level']} level (threshold "
        f"{cal['semantic_threshold']}): {cal['n_with_confidence']} predicted tags with a confidence"
        + (f", {unknown} without one (left out of the bins, kept by every threshold)" if unknown else "")
        + f". Expected calibration error (ECE) **{_f(cal['ece'])}**.",
        md_table(["confidence", "tags", "mean confidence", "precision", "gap"], bins),
        "Keeping only the tags with confidence >= threshold (recall over all gold tags):",
        md_table(["threshold", "precision", "recall", "F1", "tags kept"], pr)]
    plots = cal.get("plots")
    if plots:
        parts.append(f"![reliability]({plots['reliability']}) ![precision and recall]({plots['precision_recall']})")
    return "\n\n".join(parts)


def section(title: str, m: dict[str, Any], ceiling: dict[str, Any] | None, per_source: bool = True) -> str:
    """Levels, statuses, tags; ``per_source`` adds the by-source and tags-per-query tables (left out of the
    all-files section, whose sources are those of the per-file sections)."""
    statuses = ", ".join(f"{k} {v}" for k, v in m["statuses"].items())
    parts = [
        f"## {title}", levels_table(m, ceiling),
        f"{m['queries']} queries scored; predictions by status: {statuses}. Parse failures (status not ok, scored "
        f"as no tags) {m['parse_failure_rate']:.1%}; tags/query {m['avg_pred_tags']:.2f} (gold "
        f"{m['avg_gold_tags']:.2f}); complexity (tag count) rank correlation with gold "
        f"{'–' if m.get('complexity_spearman') is None else _f(m['complexity_spearman'])}."]
    if per_source:
        parts += ["### By source", by_source_table(m, ceiling), "### Tags per query", tpq_table(m)]
    if m.get("calibration"):
        parts += ["### Confidence calibration", calibration_tables(m["calibration"])]
    return "\n\n".join(parts + ["### Tags", tag_tables(m)])


def render_report(m: dict[str, Any]) -> str:
    ceiling = m.get("ceiling")
    golds = m.get("gold_files")
    head = [f"# Evaluation of `{m.get('model', '?')}` on `{m['gold']}`", ""]
    if m.get("predictions"):
        head += [f"Predictions: `{m['predictions']}`.", ""]
    if ceiling:
        head += [f"Ceiling: `{ceiling['file']}` (`{ceiling.get('model')}` on `{ceiling.get('gold')}`), shown "
                 "beside the model.", ""]
    if m.get("queries_per_s"):
        head += [f"Tagging speed {m['queries_per_s']:.2f} queries/s.", ""]
    parts = ["\n".join(head).rstrip()]
    if not golds:
        name = Path(str(m["gold"])).name
        # a ceiling run over several gold files: compare with its section for this one
        parts.append(section(f"`{name}`", m, ceiling and ceiling["gold_files"].get(name, ceiling)))
        return "\n\n".join(parts) + "\n"
    rows = [summary_row(f"`{Path(g['gold']).name}`", g) for g in golds] + [summary_row("all", m)]
    if ceiling:
        rows += [summary_row(f"ceiling `{Path(g['gold']).name}`", c) for g in golds
                 if (c := ceiling["gold_files"].get(Path(g["gold"]).name))]
        rows.append(summary_row("ceiling all", ceiling))
    parts += ["## Summary", md_table(SUMMARY_HEADER, rows), section("All gold files", m, ceiling, per_source=False)]
    for g in golds:
        name = Path(g["gold"]).name
        parts.append(section(f"`{name}`", g, (ceiling or {}).get("gold_files", {}).get(name)))
    return "\n\n".join(parts) + "\n"
