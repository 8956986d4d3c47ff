"""Local tagging with transformers: batched greedy generation, left padding, optional peft adapter."""

from __future__ import annotations

import logging
import os

from instag.tagger.backends import Generation, truncate_tokens
from instag.tagger.confidence import load_calibration, token_ends
from instag.tagger.models import ResolvedModel, load_model
from instag.tagger.prompt import ANSWER_PREFIX, render_prompt, template_ids

log = logging.getLogger(__name__)


class HFBackend:
    """Generate tag answers for batches of queries with a transformers causal LM.

    Every prompt starts with the same template (chat template, system prompt, instructions), so its KV
    cache is computed once and each batch starts from a copy (``prefix_cache``). A batch's input is then
    template, left padding, query: the attention mask hides the padding, and transformers derives the
    positions from the mask, so every answer is the one the whole prompt gives. The template is about
    half of a padded prompt, hence the gain (docs/benchmarks.md)."""

    def __init__(self, resolved: ResolvedModel, *, max_new_tokens: int = 256, device: str = "auto",
                 dtype: str = "auto", threads: int | None = None, prefix_cache: bool = True, confidence: bool = True):
        import torch

        if threads or not torch.cuda.is_available():
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.resolved = resolved
        self.target = resolved.target
        self.max_new_tokens = max_new_tokens
        self.tokenizer, self.model = load_model(resolved, device=device, dtype=dtype)
        self.device = self.model.device
        self.prefix_cache = prefix_cache
        self.confidence = confidence  # record each chosen token's log-probability (the tags' confidences)
        self.calibrate = load_calibration(resolved.adapter)  # the adapter's confidence calibration, if any
        self._prefix: tuple[list[int], object] | None = None  # (template tokens, their KV cache)

    @property
    def name(self) -> str:
        return self.resolved.name

    def truncate(self, queries: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        return truncate_tokens(self.tokenizer, queries, max_tokens)

    def prompts(self, queries: list[str]) -> list[str]:
        return [render_prompt(self.tokenizer, q, self.target) for q in queries]

    def template(self) -> tuple[list[int], object]:
        """The tokens every prompt starts with, and their KV cache (computed on first use)."""
        if self._prefix is None:
            import torch
            from transformers import DynamicCache

            ids = template_ids(self.tokenizer, self.target)
            cache = DynamicCache(config=self.model.config)
            if ids:
                with torch.inference_mode():
                    self.model(torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True)
            self._prefix = (ids, cache)
        return self._prefix

    def _inputs(self, queries: list[str]) -> dict:
        """Model inputs for a batch: left-padded prompts or, where every prompt starts with the
        template's tokens, template + left-padded rest with a copy of the template's cache."""
        import copy

        import torch

        ids = self.tokenizer(self.prompts(queries), add_special_tokens=False)["input_ids"]
        prefix, cache = self.template() if self.prefix_cache else ([], None)
        k = len(prefix) if prefix and all(x[:len(prefix)] == prefix for x in ids) else 0
        enc = dict(self.tokenizer.pad({"input_ids": [x[k:] for x in ids]}, return_tensors="pt"))
        if k:
            head = torch.tensor([prefix]).expand(len(ids), k)
            enc["input_ids"] = torch.cat([head, enc["input_ids"]], dim=1)
            enc["attention_mask"] = torch.cat([torch.ones_like(head), enc["attention_mask"]], dim=1)
            enc["past_key_values"] = copy.deepcopy(cache)
            enc["past_key_values"].batch_repeat_interleave(len(ids))
        return {key: v.to(self.device) if torch.is_tensor(v) else v for key, v in enc.items()}

    def generate(self, queries: list[str]) -> list[Generation]:
        import torch

        enc = self._inputs(queries)
        chosen = _ChosenLogprobs() if self.confidence else None
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      logits_processor=[chosen] if chosen else None)
            new = out[:, enc["input_ids"].shape[1]:]
            logprobs = chosen.finish(out) if chosen else []
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        prefix = ANSWER_PREFIX[self.target]
        gens = []
        for k, (row, text, plen) in enumerate(zip(new.tolist(), texts, prompt_lens)):
            n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
            ends = None
            if logprobs:
                pieces = self.tokenizer.batch_decode([[t] for t in row[:n]], skip_special_tokens=True)
                ends = token_ends(pieces, text, self._decode, row[:n])
            gens.append(Generation(text=prefix + text.rstrip(), prompt_tokens=int(plen), completion_tokens=n,
                                   token_ends=ends, token_logprobs=logprobs[k][:n] if logprobs else None))
        return gens

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class _ChosenLogprobs:
    """A logits processor that records, step by step, the log-probability of the token greedy decoding
    chose (for the tags' confidences): it keeps one step's log-softmax, not every step's logits (a batch
    of 8 answers of 256 tokens over SmolLM2's 49K vocabulary would hold 400 MB). It changes no score;
    with no other processor (greedy, as instag runs it) the distribution is the model's raw one."""

    def __init__(self):
        self.prev = None
        self.steps: list = []

    def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204
        import torch

        if self.prev is not None:  # the token chosen at the previous step is now the last input
            self.steps.append(self.prev.gather(1, input_ids[:, -1:])[:, 0])
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences) -> list[list[float]]:  # noqa: ANN001
        """Per row, the log-probability of each generated token (the last one read off ``sequences``)."""
        import torch

        if self.prev is None:
            return []
        steps = [*self.steps, self.prev.gather(1, sequences[:, -1:])[:, 0]]
        return torch.stack(steps, dim=1).tolist()

