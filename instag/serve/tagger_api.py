"""The tagging endpoint: any OpenAI client sends a query, and gets its tags back.

An ASGI middleware that ``instag serve`` loads into vLLM's own OpenAI-compatible server
(``--middleware``). A chat request to ``instag-tagger`` is taken as a query to tag: its last user message
becomes the query of the tagger's own prompt (:mod:`instag.tagger.prompt`, the one the model was trained
on), the answer prefix is prefilled and, unless the client asks for its own structured output, the
continuation is held to :func:`~instag.tagger.prompt.answer_pattern`, so every answer is a JSON list of 1
to ``MAX_TAGS`` tags. The response carries the whole list (prefix included), streamed or not. Text
completions work the same way with ``prompt`` as the query.

Left as they are: requests for other models; requests already in the tagger's format (instag's own
client: its user message holds the tagger's instructions, or it continues a prefilled answer); and the
raw model, reachable as ``instag-tagger-raw`` (the request is passed on unchanged, under the tagger's name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from instag.tagger.backends import MAX_QUERY_TOKENS, truncate_tokens
from instag.tagger.backends.vllm_engine import LORA_NAME as SERVED_NAME
from instag.tagger.prompt import (ANSWER_PREFIX, answer_pattern, build_messages, check_target, render_prompt,
                                  user_prompt)

RAW_NAME = f"{SERVED_NAME}-raw"
ENV_TARGET = "INSTAG_SERVE_TARGET"  # the served tagger's answer format, set by instag serve
ENV_TOKENIZER = "INSTAG_SERVE_TOKENIZER"  # where to load its tokenizer (text completions render the prompt)
DEFAULT_MAX_TOKENS = 256  # as instag tag
ENV_CALIBRATION = "INSTAG_SERVE_CALIBRATION"  # the served adapter's directory, when it ships a calibration
ENV_MAX_QUERY_TOKENS = "INSTAG_SERVE_MAX_QUERY_TOKENS"  # longer queries are cut, as instag tag cuts them
TRUNCATED_HEADER = b"x-instag-query-truncated"  # "1" on the response when the query was cut
_STRUCTURED_KEYS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                    "guided_grammar")
_INSTRUCTIONS_START = user_prompt("", "tags")[:40]  # what instag's own client sends first (either format)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _is_instag_client(messages: list[dict]) -> bool:
    users = [m for m in messages if m.get("role") == "user"]
    return bool(users) and _text(users[-1].get("content")).startswith(_INSTRUCTIONS_START)


class TaggerMiddleware:
    """Rewrites tagging requests for ``instag-tagger`` into the tagger's prompt and restores the answer
    prefix in the response (see the module docstring)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app
        self.target = check_target(os.environ.get(ENV_TARGET, "tags+explanations"))
        self.prefix = ANSWER_PREFIX[self.target]
        self.max_query_tokens = int(os.environ.get(ENV_MAX_QUERY_TOKENS, MAX_QUERY_TOKENS))
        self._tokenizer = None
        self.truncated = False  # set by rewrite(): whether the last query it rewrote was cut
        from instag.tagger.confidence import load_calibration

        self.calibrate = load_calibration(os.environ.get(ENV_CALIBRATION))

    @property
    def tokenizer(self):  # noqa: ANN201
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(os.environ[ENV_TOKENIZER])
        return self._tokenizer

    def _cut(self, query: str) -> str:
        """The query as `instag tag` tags it: cut to ``max_query_tokens`` tokens (sets :attr:`truncated`),
        where vLLM would refuse the whole request as longer than the model's context."""
        if len(query.encode()) <= self.max_query_tokens:  # a byte-level BPE token holds at least one byte
            return query
        text, cut = truncate_tokens(self.tokenizer, [query], self.max_query_tokens)[0]
        self.truncated = self.truncated or cut
        return text

    def rewrite(self, path: str, req: dict) -> tuple[dict, bool] | None:
        """The request to pass on and whether its answers need the prefix back; None: leave it alone.
        :attr:`truncated` then says whether a query was cut."""
        self.truncated = False
        model = req.get("model")
        if model == RAW_NAME:
            return {**req, "model": SERVED_NAME}, False
        if model != SERVED_NAME:
            return None
        out = dict(req)
        if path.endswith("/chat/completions"):
            messages = req.get("messages")
            if not isinstance(messages, list) or req.get("continue_final_message") or _is_instag_client(messages):
                return None
            queries = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if not queries:
                return None
            out["messages"] = build_messages(self._cut(queries[-1]), self.target) + [
                {"role": "assistant", "content": self.prefix}]
            out.update(add_generation_prompt=False, continue_final_message=True)
        else:
            prompt = req.get("prompt")
            if isinstance(prompt, str):
                out["prompt"] = self._render(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                out["prompt"] = [self._render(p) for p in prompt]
            else:
                return None  # token prompts: the client rendered them itself
        if not any(req.get(k) is not None for k in _STRUCTURED_KEYS):
            out["structured_outputs"] = {"regex": answer_pattern(self.target)}
        # The sampled tokens' logprobs give each tag its confidence (_choice_tags); dropped from the response
        # unless the client asked for them itself.
        if path.endswith("/chat/completions"):
            if not req.get("logprobs"):
                out.update(logprobs=True, top_logprobs=None)
        elif req.get("logprobs") is None:
            out["logprobs"] = 0
        out.setdefault("temperature", 0.0)  # tags, not samples: greedy, as instag tag
        if out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
            out["max_tokens"] = DEFAULT_MAX_TOKENS
        return out, True

    def _render(self, query: str) -> str:
        if query.startswith(_INSTRUCTIONS_START):
            raise _PassThrough
        return render_prompt(self.tokenizer, self._cut(query), self.target)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(
                ("/chat/completions", "/completions")):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        asked = False  # whether the client asked for logprobs itself (else the ones we add are dropped)
        try:
            req = json.loads(body)
            asked = isinstance(req, dict) and req.get("logprobs") not in (None, False)
            rewritten = self.rewrite(scope["path"], req) if isinstance(req, dict) else None
        except (ValueError, _PassThrough):
            rewritten = None
        truncated = rewritten is not None and self.truncated
        if rewritten is not None:
            req, restore = rewritten
            body = json.dumps(req).encode()
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, if any

        chat = scope["path"].endswith("/chat/completions")
        if rewritten is None and self._own_client(scope["path"], body):
            # instag's own client (openai:instag-tagger): its answer keeps the form it asked for, and gains
            # the tags field with calibrated confidences where it asked for logprobs.
            return await self.app(scope, replay, _BodyPrefixer(send, self.prefix, chat, target=self.target,
                                                               calibrate=self.calibrate, restore=False,
                                                               tokenizer=self._tokenizer_or_none))
        if rewritten is None or not restore:
            return await self.app(scope, replay, send)
        if truncated:
            send = _TruncationNote(send)
        if req.get("stream"):
            return await self.app(scope, replay, _StreamPrefixer(send, self.prefix, chat, self.target,
                                                                 self.calibrate, asked, self._tokenizer_or_none))
        return await self.app(scope, replay, _BodyPrefixer(send, self.prefix, chat, truncated, self.target,
                                                           calibrate=self.calibrate, keep_logprobs=asked,
                                                           tokenizer=self._tokenizer_or_none))

    def _own_client(self, path: str, body: bytes) -> bool:
        """A non-streamed chat request of instag's own client to the tagger (the prefilled answer opening)."""
        try:
            req = json.loads(body)
        except ValueError:
            return False
        messages = req.get("messages") if isinstance(req, dict) else None
        return (path.endswith("/chat/completions") and req.get("model") == SERVED_NAME and not req.get("stream")
                and isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "assistant" and messages[-1].get("content") == self.prefix
                and bool(req.get("continue_final_message")))

    def _tokenizer_or_none(self):  # noqa: ANN202
        """The tokenizer where the server names it (ids in logprobs, ``token_id:N``, decode through it)."""
        return self.tokenizer if os.environ.get(ENV_TOKENIZER) else None


class _PassThrough(Exception):
    """A text completion already in the tagger's format: leave the request alone."""


def _prefix_choice(choice: dict, prefix: str, chat: bool) -> None:
    if chat:
        msg = choice.get("message") or choice.get("delta")
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            msg["content"] = prefix + msg["content"]
    elif isinstance(choice.get("text"), str):
        choice["text"] = prefix + choice["text"]


class _TruncationNote:
    """Adds the :data:`TRUNCATED_HEADER` to the response: the query was cut to fit, as instag tag cuts."""

    def __init__(self, send: Send):
        self.send = send

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            msg = {**msg, "headers": list(msg.get("headers", [])) + [(TRUNCATED_HEADER, b"1")]}
        await self.send(msg)


def _logprob_ends(lp: dict, answer: str, chat: bool, tokenizer: Callable[[], Any] | None
                  ) -> tuple[list[int], list[float]] | None:
    """Token end offsets in ``answer`` (the generated text) and log-probabilities, from a choice's logprobs
    (chat: ``content`` with each token's bytes; completions: ``tokens``, which are ``token_id:N`` where the
    client asked for ids, decoded through the tokenizer)."""
    from instag.tagger.confidence import chat_token_ends, token_ends

    if chat:
        return chat_token_ends(lp.get("content") or [], answer)
    pieces, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
    if not pieces or len(pieces) != len(values) or not all(isinstance(v, (int, float)) for v in values):
        return None
    if all(p.startswith("token_id:") for p in pieces):
        tok = tokenizer() if tokenizer else None
        if tok is None:
            return None
        ids = [int(p[len("token_id:"):]) for p in pieces]
        ends = token_ends([], answer, tok.decode, ids) if answer else [0] * len(ids)
    else:
        ends = token_ends(pieces, answer)
    return (ends, [float(v) for v in values]) if ends is not None else None


def _set_tags(choice: dict, payload: dict, view: dict, prefix: str, chat: bool, target: str, calibrate: Any,
              tokenizer: Callable[[], Any] | None) -> None:
    """The choice's ``tags`` field (and ``low_confidence_tags``, the response's
    ``instag.min_tag_confidence``, where the adapter's calibration sets a threshold), from ``view``, the
    choice as a whole answer (prefix restored, logprobs gathered)."""
    from instag.tagger.confidence import split_confident

    tags = _choice_tags(view, prefix, chat, target, calibrate, tokenizer)
    if tags is None:
        return
    threshold = getattr(calibrate, "min_tag_confidence", 0.0)
    choice["tags"], dropped = split_confident(tags, threshold)
    if threshold > 0:  # as instag tag writes its records
        choice["low_confidence_tags"] = dropped
        payload.setdefault("instag", {})["min_tag_confidence"] = threshold


def _choice_tags(choice: dict, prefix: str, chat: bool, target: str, calibrate: Any = None,
                 tokenizer: Callable[[], Any] | None = None) -> list[dict] | None:
    """``[{"tag", "confidence"}]`` for a choice whose answer (prefix restored) parses, confidences from
    the choice's token logprobs (instag.tagger.confidence) where it has them; None where it does not parse."""
    from instag.tagger.confidence import CONFIDENCE, attach
    from instag.tagger.parse import STATUS_OK, parse_tags

    answer = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    if not isinstance(answer, str):
        return None
    parsed = parse_tags(answer)
    if parsed.status != STATUS_OK:
        return None
    lined = _logprob_ends(choice.get("logprobs") or {}, answer[len(prefix):], chat, tokenizer)
    if lined is not None:
        attach(parsed.tags, answer, len(prefix), lined[0], lined[1], target, calibrate)
    return [{"tag": t["tag"], **({CONFIDENCE: t[CONFIDENCE]} if CONFIDENCE in t else {})} for t in parsed.tags]


class _BodyPrefixer:
    """A whole JSON response: each choice's answer gets the prefix back (and the length its new size) and
    a ``tags`` field, the parsed tags with their confidences (plain clients ignore it); the logprobs the
    middleware asked for are dropped unless the client asked too. A cut query adds
    ``"instag": {"query_truncated": true}``. ``restore=False``: the answer stays as it is (the client
    prefilled the opening itself), only the field is added."""

    def __init__(self, send: Send, prefix: str, chat: bool, truncated: bool = False, target: str = "tags",
                 calibrate: Any = None, keep_logprobs: bool = True, restore: bool = True,
                 tokenizer: Callable[[], Any] | None = None):
        self.send, self.prefix, self.chat, self.truncated = send, prefix, chat, truncated
        self.target, self.calibrate, self.keep_logprobs, self.restore = target, calibrate, keep_logprobs, restore
        self.tokenizer = tokenizer
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.start = msg
            return
        if msg["type"] != "http.response.body" or self.start is None:
            return await self.send(msg)
        self.body += msg.get("body", b"")
        if msg.get("more_body"):
            return
        body = self.body
        if self.start.get("status") == 200:
            try:
                payload = json.loads(body)
                for choice in payload.get("choices", []):
                    view = choice
                    if self.restore:
                        _prefix_choice(choice, self.prefix, self.chat)
                    else:  # parse a copy with the opening the client prefilled itself
                        view = {**choice, "message": dict(choice.get("message") or {})}
                        _prefix_choice(view, self.prefix, self.chat)
                    _set_tags(choice, payload, view, self.prefix, self.chat, self.target, self.calibrate,
                              self.tokenizer)
                    if not self.keep_logprobs:
                        choice["logprobs"] = None
                if self.truncated:
                    payload.setdefault("instag", {})["query_truncated"] = True
                body = json.dumps(payload).encode()
            except (ValueError, AttributeError):
                pass  # not the JSON we know: pass it on as it is
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.send({**self.start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class _StreamPrefixer:
    """Server-sent events: the first content of each choice gets the prefix in front, and the event that
    finishes a choice gets its ``tags`` field (with confidences, from the logprobs gathered over its
    events); the logprobs the middleware asked for are dropped unless the client asked too."""

    def __init__(self, send: Send, prefix: str, chat: bool, target: str = "tags", calibrate: Any = None,
                 keep_logprobs: bool = True, tokenizer: Callable[[], Any] | None = None):
        self.send, self.prefix, self.chat = send, prefix, chat
        self.target, self.calibrate, self.keep_logprobs, self.tokenizer = target, calibrate, keep_logprobs, tokenizer
        self.done: set[int] = set()
        self.pending = b""
        self.text: dict[int, str] = {}  # per choice: the answer so far, prefix included
        self.logprobs: dict[int, dict[str, list]] = {}  # per choice: its logprobs so far, in the response's form

    def _gather(self, index: int, choice: dict) -> None:
        part = choice.get("delta") if self.chat else choice
        piece = part.get("content" if self.chat else "text") if isinstance(part, dict) else None
        if isinstance(piece, str):
            self.text[index] = self.text.get(index, "") + piece
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            acc = self.logprobs.setdefault(index, {})
            for key in ("content",) if self.chat else ("tokens", "token_logprobs"):
                if isinstance(lp.get(key), list):
                    acc.setdefault(key, []).extend(lp[key])

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event.strip() == b"data: [DONE]":
            return event
        try:
            payload = json.loads(event[len(b"data: "):])
        except ValueError:
            return event
        for choice in payload.get("choices", []) or []:
            index = choice.get("index", 0)
            part = choice.get("delta") if self.chat else choice
            if index not in self.done and isinstance(part, dict) and isinstance(
                    part.get("content" if self.chat else "text"), str):
                _prefix_choice(choice, self.prefix, self.chat)
                self.done.add(index)
            self._gather(index, choice)
            if choice.get("finish_reason") is not None:
                whole = {"logprobs": self.logprobs.pop(index, {}), **(
                    {"message": {"content": self.text.pop(index, "")}} if self.chat else {"text": self.text.pop(index, "")})}
                _set_tags(choice, payload, whole, self.prefix, self.chat, self.target, self.calibrate, self.tokenizer)
            if not self.keep_logprobs and "logprobs" in choice:
                choice["logprobs"] = None
        return b"data: " + json.dumps(payload).encode()

    async def __call__(self, msg: Message) -> None:
        if msg["type"] != "http.response.body":
            return await self.send(msg)
        self.pending += msg.get("body", b"")
        *events, self.pending = self.pending.split(b"\n\n")
        if not msg.get("more_body", False) and self.pending:
            events, self.pending = events + [self.pending], b""
        out = b"".join(self._event(e) + b"\n\n" for e in events)
        if out or not msg.get("more_body", False):
            await self.send({**msg, "body": out})
