"""Reading tag files (what `instag tag` and `instag normalize` write) for normalization, analysis
and selection."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instag.io import InputError, iter_tag_records, latest_by_id, tag_shards

NORMALIZED_FIELD = "normalized_tags"


@dataclass
class TagFile:
    path: Path
    records: list[dict[str, Any]]  # every record, last one per id, in file order
    usable: list[int] = field(default_factory=list)  # indexes of records with status ok
    skipped: Counter = field(default_factory=Counter)  # status -> count of records left out

    def tag_lists(self, normalized: bool | None = None) -> list[list[str]]:
        return [tag_strings(self.records[i], normalized) for i in self.usable]

    def confidence_lists(self) -> list[list[float | None]]:
        """Per usable record, the confidences of its original tags (see :func:`tag_confidences`)."""
        return [tag_confidences(self.records[i]) for i in self.usable]


def tag_strings(rec: dict[str, Any], normalized: bool | None = None) -> list[str]:
    """A record's tags as strings; ``normalized`` None means: normalized tags when present."""
    if normalized is not False and NORMALIZED_FIELD in rec:
        return list(rec[NORMALIZED_FIELD])
    out = []
    for t in rec.get("tags") or []:
        s = t.get("tag") if isinstance(t, dict) else t
        if isinstance(s, str) and s.strip():
            out.append(s.strip())
    return out


def _confidence(value: Any) -> float | None:
    """A tag's confidence clipped to [0, 1]; None when absent or not a finite number (unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))


def tag_confidences(rec: dict[str, Any]) -> list[float | None]:
    """The confidence of each of the record's original tags, aligned with ``tag_strings(rec,
    normalized=False)``; None where a tag has none (teacher tags, plain strings, older files)."""
    out = []
    for t in rec.get("tags") or []:
        s = t.get("tag") if isinstance(t, dict) else t
        if isinstance(s, str) and s.strip():
            out.append(_confidence(t.get("confidence")) if isinstance(t, dict) else None)
    return out


def load_tag_file(path: str | os.PathLike) -> TagFile:
    """Read a tag JSONL file, or a directory of shards written by ``instag tag --ray``; each record needs
    ``id`` and ``tags``; the last record of an id wins; records whose status is not ``ok`` (unparsed
    answers, failed requests) are kept but left out of the analysis, and counted."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    if path.is_dir() and not tag_shards(path):
        raise InputError(path, None, "directory holds no tag shards (part-*.jsonl written by `instag tag --ray`)")

    def checked():
        for file, lineno, rec in iter_tag_records(path):
            if "tags" not in rec and NORMALIZED_FIELD not in rec:
                raise InputError(file, lineno, "record has no 'tags' field (is this an `instag tag` output?)")
            tags = rec.get(NORMALIZED_FIELD, rec.get("tags"))
            if not isinstance(tags, list):
                raise InputError(file, lineno, "'tags' must be a list")
            yield file, lineno, rec

    by_id = latest_by_id(checked())
    tf = TagFile(path=path, records=list(by_id.values()))
    for i, rec in enumerate(tf.records):
        status = rec.get("status", "ok")
        if status == "ok":
            tf.usable.append(i)
        else:
            tf.skipped[status] += 1
    return tf
