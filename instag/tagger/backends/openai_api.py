"""Tagging through any OpenAI-compatible chat API (the teacher): async, bounded concurrency, retried.

Retries (tenacity, exponential backoff with jitter) cover what a busy or flaky server does: 429, 5xx,
timeouts, dropped connections and malformed response bodies. Client errors (401, 400, 404) are not
retried: they fail the query at once with the server's message.
"""

from __future__ import annotations

import json
import logging

import httpx
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from instag.tagger.backends import Generation
from instag.tagger.confidence import CONFIDENCE, chat_token_ends
from instag.tagger.prompt import ANSWER_PREFIX, Target, answer_pattern, build_messages

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # truncation budget for APIs, whose tokenizer we do not have


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.RateLimitError, openai.APIConnectionError, openai.InternalServerError,
                        openai.APIResponseValidationError, json.JSONDecodeError, httpx.TransportError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409, 429) or (
        isinstance(exc, openai.APIStatusError) and exc.status_code >= 500)


class OpenAIBackend:
    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 target: Target = "tags+explanations", concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 5, max_tokens: int = 512, temperature: float = 0.0,
                 backoff_initial: float = 1.0, backoff_max: float = 30.0, guided: bool = False):
        self.model = model
        self.target = target
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # guided: for a vLLM server of a local tagger (instag serve). The answer prefix is sent as the start
        # of the assistant turn, which vLLM continues (continue_final_message), under the same regex as the
        # offline engine: the prompt the adapter was trained on, and 1 to MAX_TAGS tags. OpenAI's own API
        # neither continues a message nor takes a regex: leave guided off there.
        self.prefix = ANSWER_PREFIX[target] if guided else ""
        self.extra = {"extra_body": {"add_generation_prompt": False, "continue_final_message": True,
                                     "structured_outputs": {"regex": answer_pattern(target)}},
                      "logprobs": True} if guided else {}  # logprobs: the tags' confidences, as offline
        # Our own retry loop (max_retries=0 here) so that every kind of fault is counted alike.
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout,
                                         max_retries=0)
        self.retries = 0

    @property
    def name(self) -> str:
        return self.model

    def truncate(self, queries: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        limit = max_tokens * CHARS_PER_TOKEN
        return [(q, False) if len(q) <= limit else (q[:limit], True) for q in queries]

    async def _once(self, query: str) -> Generation:
        messages = build_messages(query, self.target)
        if self.prefix:
            messages.append({"role": "assistant", "content": self.prefix})
        resp = await self.client.chat.completions.create(
            model=self.model, messages=messages,  # type: ignore[arg-type]
            temperature=self.temperature, max_tokens=self.max_tokens, **self.extra)
        if not resp.choices:
            raise openai.APIResponseValidationError(response=httpx.Response(200, request=httpx.Request(
                "POST", str(self.client.base_url))), body=None, message="response has no choices")
        usage = resp.usage
        choice = resp.choices[0]
        text = choice.message.content or ""
        ends = lps = confs = threshold = None
        extra = choice.model_extra or {}
        server_tags = [t for t in (extra.get("tags") or []) + (extra.get("low_confidence_tags") or [])
                       if isinstance(t, dict)] if self.prefix else []
        if server_tags:
            # instag serve's confidences (through the adapter's calibration) and its default threshold
            confs = {t.get("tag"): t.get(CONFIDENCE) for t in server_tags}
            threshold = ((resp.model_extra or {}).get("instag") or {}).get("min_tag_confidence", 0.0)
        elif self.prefix and getattr(choice.logprobs, "content", None):
            # another vLLM server: the raw confidences from the continuation's tokens (instag.tagger.confidence)
            lined = chat_token_ends(choice.logprobs.content, text)
            if lined is not None:
                ends, lps = lined
        return Generation(text=self.prefix + text, prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0, token_ends=ends,
                          token_logprobs=lps, tag_confidences=confs,
                          min_tag_confidence=threshold)

    async def agenerate(self, query: str) -> Generation:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_retryable),
                stop=stop_after_attempt(self.max_retries + 1),
                wait=wait_exponential_jitter(multiplier=self.backoff_initial, max=self.backoff_max,
                                            jitter=self.backoff_initial),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.retries += 1
                    return await self._once(query)
        except Exception as e:  # after retries, or not retryable: the query fails, the run goes on
            return Generation(text=None, error=f"{type(e).__name__}: {e}")
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.close()
