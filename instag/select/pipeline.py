"""File-level entry points behind `instag normalize` and `instag select`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from instag.io import InputError, JsonlAppender
from instag.select.data import NORMALIZED_FIELD, load_tag_file, tag_confidences, tag_strings
from instag.select.normalize import EmbedFn, NormalizeParams, TagMap, normalize
from instag.select.sample import SetStats, select_indices


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    with JsonlAppender(tmp, fsync_every=1 << 30) as w:
        for rec in records:
            w.write(rec)
    tmp.replace(path)  # a finished file or none: never half of one


@dataclass
class NormalizeResult:
    tag_map: TagMap
    queries: int
    skipped: dict[str, int]
    tags_before: int
    tags_after: int


def normalize_file(input_path: Path, output: Path, map_path: Path | None, params: NormalizeParams | None = None,
                   apply_map: Path | None = None, embed: EmbedFn | None = None,
                   progress: Callable[[str], None] | None = None) -> NormalizeResult:
    """Normalize the tags of a tag file (or apply an existing map) and write records with both their
    original ``tags`` and their ``normalized_tags``; records that did not parse get an empty list.

    ``params.min_tag_confidence`` drops each record's tags below that confidence from its
    ``normalized_tags`` (its ``tags`` keep them); applying a map, a map made with a threshold applies it
    too unless ``params`` sets one."""
    tf = load_tag_file(input_path)
    originals = [tag_strings(r, normalized=False) for r in tf.records]
    confidences = [tag_confidences(r) for r in tf.records]
    if apply_map is not None:
        try:
            tm = TagMap.from_json(json.loads(Path(apply_map).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(apply_map, None, f"not a tag map written by `instag normalize`: {e}") from e
        if params is not None and params.min_tag_confidence is not None:
            if not 0.0 <= params.min_tag_confidence <= 1.0:
                raise ValueError(f"min_tag_confidence must be within [0, 1], not {params.min_tag_confidence}")
            tm.params["min_tag_confidence"] = params.min_tag_confidence
    else:
        tm = normalize([originals[i] for i in tf.usable], params, embed=embed, progress=progress,
                       confidences=[confidences[i] for i in tf.usable])
    usable = set(tf.usable)
    out = []
    for i, rec in enumerate(tf.records):
        rec = dict(rec)
        rec[NORMALIZED_FIELD] = tm.apply(originals[i], confidences[i]) if i in usable else []
        out.append(rec)
    _write_records(output, out)
    if map_path is not None and apply_map is None:
        map_path.parent.mkdir(parents=True, exist_ok=True)
        map_path.write_text(json.dumps(tm.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    before = {t for i in tf.usable for t in originals[i]}
    after = {t for i in tf.usable for t in out[i][NORMALIZED_FIELD]}
    return NormalizeResult(tm, len(tf.usable), dict(tf.skipped), len(before), len(after))


@dataclass
class SelectResult:
    pool: SetStats
    selected: SetStats
    strategy: str
    skipped: dict[str, int]

    @property
    def coverage(self) -> float:
        return self.selected.unique_tags / self.pool.unique_tags if self.pool.unique_tags else 0.0


def select_file(input_path: Path, output: Path, n: int, strategy: str = "complexity", seed: int = 0) -> SelectResult:
    tf = load_tag_file(input_path)
    lists = tf.tag_lists()
    chosen = select_indices(lists, n, strategy, seed)
    records = []
    for rank, k in enumerate(chosen):
        rec = dict(tf.records[tf.usable[k]])
        rec["selection"] = {"strategy": strategy, "rank": rank, "seed": seed}
        records.append(rec)
    _write_records(output, records)
    return SelectResult(pool=SetStats.of(lists), selected=SetStats.of([lists[k] for k in chosen]),
                        strategy=strategy, skipped=dict(tf.skipped))
