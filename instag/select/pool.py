"""Build one query pool (id, source, query) from the raw public instruction data in shared/data/raw.

Every record keeps a traceable id, ``<source>/<file>/<index in that file>``; exact duplicate query texts
(InstructionWild's user files repeat its seed prompts, for example) are kept once, first seen first.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instag.io import InputError, JsonlAppender, iter_rows

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
LICENSES = {source: lic for source, _, lic in RAW_FILES}


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


def iter_pool(raw_dir: Path, stats: PoolStats | None = None) -> Iterator[dict[str, Any]]:
    stats = stats if stats is not None else PoolStats()
    seen: set[str] = set()
    for source, rel, _lic in RAW_FILES:
        path = raw_dir / rel
        if not path.exists():
            raise InputError(path, None, "raw data file missing (see shared/data/README.md)")
        stem = Path(rel).name.split(".")[0]
        rows = _lenient_jsonl(path, stats) if path.suffix == ".jsonl" else iter_rows(path)
        for i, (where, rec) in enumerate(rows):
            if isinstance(rec, InputError):
                raise rec
            text = raw_query(rec)
            if not text:
                stats.empty += 1
                continue
            if text in seen:
                stats.duplicates += 1
                continue
            seen.add(text)
            stats.per_source[source] += 1
            yield {"id": f"{source}/{stem}/{i}", "source": source, "query": text}


def build_pool(raw_dir: Path, output: Path) -> PoolStats:
    stats = PoolStats()
    if output.exists():
        output.unlink()
    with JsonlAppender(output, fsync_every=10_000) as w:
        for rec in iter_pool(raw_dir, stats):
            w.write(rec)
    return stats


def load_pool(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
