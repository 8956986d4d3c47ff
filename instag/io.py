"""Reading queries from every supported input shape, and append-only JSONL output.

Inputs: JSONL, a JSON array, parquet, CSV/TSV, or a `datasets` dataset saved with `save_to_disk`.
Record shapes (detected per record): OpenAI `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`, or a plain `query`/`question`/`prompt` field; `field=` overrides detection.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEXT_FIELDS = ("query", "question", "prompt")
USER_ROLES = ("user", "human")
ID_FIELDS = ("id",)


class InputError(Exception):
    """Bad input, located: ``<file>:<line>: <message>`` (or ``<file> [record N]: ...``)."""

    def __init__(self, path: str | os.PathLike, where: int | str | None, message: str):
        self.path = str(path)
        self.where = where
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.where is None:
            return f"{self.path}: {self.message}"
        if isinstance(self.where, int):
            return f"{self.path}:{self.where}: {self.message}"
        return f"{self.path} [{self.where}]: {self.message}"


@dataclass
class Query:
    id: str
    query: str
    source: str
    turn: int | None = None
    where: int | str | None = None  # line number or record label, for messages

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "source": self.source, "query": self.query}
        if self.turn is not None:
            rec["turn"] = self.turn
        return rec


@dataclass
class ReadStats:
    records: int = 0
    queries: int = 0
    bad: list[InputError] = dc_field(default_factory=list)


def stable_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- raw rows


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int | str, Any]]:
    """Yield ``(location, record)`` for every record of a supported file or saved dataset.

    A record that cannot even be decoded is yielded as an :class:`InputError` instance so that the
    caller decides whether to raise or skip it; a file that cannot be opened raises at once.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, None, "no such file or directory")
    if p.is_dir():
        yield from _iter_saved_dataset(p)
        return
    suffix = "".join(p.suffixes[-1:]).lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            yield from _iter_jsonl(p)
        elif suffix == ".json":
            yield from _iter_json(p)
        elif suffix == ".parquet":
            yield from _iter_parquet(p)
        elif suffix in (".csv", ".tsv"):
            yield from _iter_csv(p, "\t" if suffix == ".tsv" else ",")
        else:
            raise InputError(p, None, f"unsupported input format {suffix or '(no extension)'!r}; "
                             "use .jsonl, .json, .parquet, .csv, .tsv or a datasets directory")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(p, None, f"cannot read file: {e}") from e


def _iter_jsonl(p: Path) -> Iterator[tuple[int, Any]]:
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield lineno, InputError(p, lineno, f"malformed JSON ({e.msg} at column {e.colno})")


def _iter_json(p: Path) -> Iterator[tuple[str, Any]]:
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if "\n" in text.strip() and text.lstrip().startswith("{"):
            # Probably JSON Lines saved as .json: read it as such.
            yield from _iter_jsonl(p)  # type: ignore[misc]
            return
        raise InputError(p, e.lineno, f"malformed JSON ({e.msg} at column {e.colno})") from e
    if isinstance(data, dict):
        for key in ("data", "records", "rows", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise InputError(p, None, "a .json input must hold an array of records")
    for i, rec in enumerate(data):
        yield f"record {i}", rec


def _iter_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises its own error types
        raise InputError(p, None, f"not a readable parquet file: {e}") from e
    i = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            yield f"row {i}", rec
            i += 1


def _iter_csv(p: Path, delimiter: str) -> Iterator[tuple[int, Any]]:
    with p.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise InputError(p, 1, "CSV file has no header row")
        for rec in reader:
            yield reader.line_num, rec


def _iter_saved_dataset(p: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise InputError(p, None, f"not a dataset saved with datasets.save_to_disk: {e}") from e
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in splits:
        for i, rec in enumerate(part):
            yield (f"{split} row {i}" if split else f"row {i}"), rec


# ---------------------------------------------------------------- record shapes


def _content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type", "text") == "text")
    return ""


def _user_turns(turns: Any) -> list[str] | None:
    if not isinstance(turns, list):
        return None
    out = []
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = t.get("role", t.get("from"))
        if str(role).lower() in USER_ROLES:
            out.append(_content_text(t.get("content", t.get("value"))))
    return out


def extract_texts(rec: Any, field: str | None = None) -> list[str]:
    """The user query texts of one record (all user turns for chat shapes, else one text).

    Raises ``ValueError`` with a human message when the record holds no query text.
    """
    if not isinstance(rec, dict):
        raise ValueError(f"record is a {type(rec).__name__}, not an object")
    if field is not None:
        if field not in rec:
            raise ValueError(f"record has no field {field!r}")
        value = rec[field]
        turns = _user_turns(value)
        if turns is not None:
            return turns
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"field {field!r} holds no text")
        return [str(value)]
    for key in ("messages", "conversations"):
        if key in rec:
            turns = _user_turns(rec[key])
            if turns is None:
                raise ValueError(f"field {key!r} is not a list of chat turns")
            return turns
    if "instruction" in rec:
        instruction = str(rec.get("instruction") or "")
        extra = rec.get("input")
        extra = "" if extra is None else str(extra)
        return [instruction + ("\n\n" + extra if extra.strip() else "")]
    for key in TEXT_FIELDS:
        if key in rec and rec[key] is not None:
            return [str(rec[key])]
    raise ValueError("record has no query text (looked for messages, conversations, instruction, "
                     + ", ".join(TEXT_FIELDS) + "; use --field to name it)")


def read_queries(
    path: str | os.PathLike,
    *,
    field: str | None = None,
    all_turns: bool = False,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Query]:
    """Yield the queries of an input file. Bad records raise :class:`InputError`, or with
    ``skip_bad`` are logged, counted in ``stats.bad`` and skipped."""
    stats = stats if stats is not None else ReadStats()
    default_source = Path(path).name.split(".")[0]
    for where, rec in iter_rows(path):
        stats.records += 1
        try:
            if isinstance(rec, InputError):
                raise rec
            try:
                texts = extract_texts(rec, field)
            except ValueError as e:
                raise InputError(path, where, str(e)) from None
            turns = list(enumerate(texts)) if all_turns else list(enumerate(texts))[:1]
            turns = [(k, t) for k, t in turns if t and t.strip()]
            if not turns:
                raise InputError(path, where, "record has an empty query text")
        except InputError as e:
            if not skip_bad:
                raise
            log.warning("skipped bad input: %s", e)
            stats.bad.append(e)
            continue
        given_id = next((rec[k] for k in ID_FIELDS if rec.get(k) not in (None, "")), None)
        base_id = str(given_id) if given_id is not None else stable_id(texts[0])
        source = str(rec.get("source") or default_source)
        for k, text in turns:
            stats.queries += 1
            yield Query(
                id=f"{base_id}#{k}" if all_turns else base_id,
                query=text,
                source=source,
                turn=k if all_turns else None,
                where=where,
            )


# ---------------------------------------------------------------- append-only JSONL output


def repair_tail(path: str | os.PathLike) -> int:
    """Cut a partially written last line (a crash mid-write) off a JSONL file; return bytes cut."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return 0
    with p.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        back = min(size, 1 << 20)
        f.seek(size - back)
        tail = f.read(back)
        if tail.endswith(b"\n"):
            return 0
        cut_at = tail.rfind(b"\n") + 1  # 0 when the file is a single partial line
        keep = size - back + cut_at
        f.truncate(keep)
        return size - keep


def iter_jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` of a JSONL file, raising :class:`InputError` on a malformed line."""
    for lineno, rec in _iter_jsonl(Path(path)):
        if isinstance(rec, InputError):
            raise rec
        if not isinstance(rec, dict):
            raise InputError(path, lineno, "expected a JSON object")
        yield lineno, rec


def latest_by_id(records: Iterable[tuple[str | os.PathLike, int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Append-only files may hold a retried id twice: the last record of an id wins (at the place of its
    first). ``records`` are ``(file, line, record)``, as :func:`iter_tag_records` yields them."""
    out: dict[str, dict[str, Any]] = {}
    for path, lineno, rec in records:
        if "id" not in rec:
            raise InputError(path, lineno, "record has no 'id'")
        out[str(rec["id"])] = rec
    return out


class JsonlAppender:
    """Append records to a JSONL file, one complete line per write, flushed as it goes."""

    def __init__(self, path: str | os.PathLike, fsync_every: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._f = self.path.open("a", encoding="utf-8")
        self._since_sync = 0
        self.fsync_every = fsync_every

    def write(self, rec: dict[str, Any]) -> None:
        self.write_line(json.dumps(rec, ensure_ascii=False))

    def write_line(self, line: str) -> None:
        """Append one record already serialized as JSON (no newline in it)."""
        self._f.write(line + "\n")
        self._f.flush()
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._since_sync = 0

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- shard directories (instag tag --ray)

SHARD_GLOB = "part-*.jsonl"


def tag_shards(path: str | os.PathLike) -> list[Path]:
    """The shards of a tag output directory, oldest first: their names start with the run's UTC time,
    so that reading them in name order lets a later run's retry of an id win (:func:`latest_by_id`)."""
    return sorted(Path(path).glob(SHARD_GLOB))


def iter_tag_records(path: str | os.PathLike) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """``(file, line, record)`` of a tag JSONL file or of every shard of a tag output directory.

    In a directory, a shard's last line without its newline is skipped: it is a write in progress or
    one torn by a killed run (the next run cuts it off); everything before it is whole."""
    p = Path(path)
    if not p.is_dir():
        for lineno, rec in iter_jsonl_records(p):
            yield p, lineno, rec
        return
    for shard in tag_shards(p):
        with shard.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.endswith("\n") or not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(shard, lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise InputError(shard, lineno, "expected a JSON object")
                yield shard, lineno, rec
