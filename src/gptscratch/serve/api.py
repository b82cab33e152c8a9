"""The HTTP side of `gptscratch serve`: OpenAI's completions and chat completions over the batched engine, and
the page.

Routes: `POST /v1/completions` (OpenAI's legacy completions shape, streamed as server-sent events when
`stream` is true), `POST /v1/chat/completions` (a chat model only: `messages` rendered in the chat format,
the reply ending at <|assistant_end|>, streamed as `delta` chunks), `GET /v1/models`, `GET /health`, `GET /`
(the playground page, one static file), and the tokenizer for evaluators:
`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`.
Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the field at fault
in `param`, so the `openai` client raises the matching exception (BadRequestError, RateLimitError, ...).

Only the page and real clients get through: a browser on another site is refused by its Origin, a DNS
rebinding (another site's name resolving to this machine) by its Host while bound to loopback, and a body
that is not `application/json` (which a page elsewhere could post without asking the browser first) by its
Content-Type. `GuardedH11` holds what uvicorn does not: a deadline for a request's head, and a cap on
connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from gptscratch.chat import ChatFormatError, render_prompt
from gptscratch.serve.engine import Engine, Event, QueueFull, Request, Sampling

# the fields of OpenAI's completions request this server reads; anything else is refused by name
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options", "echo", "logprobs", "user", "best_of", "presence_penalty", "frequency_penalty",
         "logit_bias", "suffix"}
KNOWN_CHAT = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
              "stop", "seed", "stream", "stream_options", "user", "presence_penalty", "frequency_penalty",
              "logit_bias", "logprobs", "tools", "response_format"}
MAX_LOGPROBS = 20
MAX_INT_DIGITS = 4300  # Python's own limit for int(str): past it, json.loads would raise ValueError
# a Host header's name (a bracketed IPv6 address, or no colon, @ or slash in it) and port
HOST = r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]@/]+)(?::(\d{1,5}))?"

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.close = close  # end the connection too: what is left of the request cannot be read

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status,
                            headers={"Connection": "close"} if self.close else None)


@dataclass
class Completion:
    """A validated request: prompts as token lists, and what to do with them."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    chat: bool = False  # /v1/chat/completions: the same decoding, answered in the chat shape


def _typed(body: dict, name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # JSON true is a Python bool, which is an int: refuse it where a number is asked for
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(value)[:50]}", name)
    return value


def _number(body: dict, name: str, default: float | None, low: float, high: float, what: str) -> float | None:
    value = _typed(body, name, (int, float), "a number", default)
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise ApiError(400, f"'{name}' must be {what}, got {value}", name)
    return value


def _int(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = _typed(body, name, (int,), "an integer", default)
    if value is not None and not low <= value <= high:
        raise ApiError(400, f"'{name}' must be an integer in [{low}, {high}], got {value}", name)
    return value


def _check_text(body: dict) -> None:
    """JSON can carry a lone surrogate ("\\ud800"), which is no text and fails wherever it is first encoded:
    refuse it here, naming the field."""
    lone = "holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text"
    for name, value in body.items():
        if not _encodes(name):
            raise ApiError(400, f"a field name {lone}")
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str) and not _encodes(item):
                raise ApiError(400, f"'{name}' {lone}", name)
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item)
                stack.extend(item.values())


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ApiError(400, f"the request body holds an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _check_common(body: Any, server: Server, known: set[str]) -> None:
    """What completions and chat completions check alike: an object, text, known fields, the model."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_text(body)
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unknown field '{unknown[0]}' (this server reads: {', '.join(sorted(known))})",
                       unknown[0])
    model = _typed(body, "model", (str,), "a string")
    if model is None:
        raise ApiError(400, "'model' is required (GET /v1/models lists it)", "model")
    if model != server.model_id:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{server.model_id}'", "model",
                       code="model_not_found")
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("logit_bias", {}), ("suffix", None),
                          ("tools", None), ("response_format", None)):
        if body.get(name, neutral) not in (neutral, None):
            raise ApiError(400, f"'{name}' is not supported by this server", name)
    _typed(body, "user", (str,), "a string")


def _max_tokens(body: dict, name: str, longest: int, context: int, default: int) -> int:
    max_tokens = _int(body, name, default, 0, context)
    if name in body and body[name] is None:
        max_tokens = context - longest  # null: as many as the context holds
    if longest + max_tokens > context:
        raise ApiError(400, f"'{name}' {max_tokens} + the prompt's {longest} tokens exceed the model's context "
                       f"of {context}; ask for at most {context - longest}", name)
    return max_tokens


def _sampling(body: dict, server: Server, max_tokens: int, logprobs: int | None) -> Sampling:
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0, "a number in [0, 2] (0 is greedy)"),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, "a number in (0, 1]"),
        top_k=_int(body, "top_k", None, 1, server.engine.vocab),
        seed=_int(body, "seed", None, -(2**63), 2**63 - 1),
        stop=tuple(stop or ()),
        logprobs=logprobs,
    )
    if sampling.top_p == 0:
        raise ApiError(400, "'top_p' must be a number in (0, 1], got 0", "top_p")
    return sampling


def _streaming(body: dict) -> tuple[bool, bool]:
    """`stream`, and `stream_options.include_usage`."""
    options = _typed(body, "stream_options", (dict,), "an object", {})
    if set(options) - {"include_usage"}:
        raise ApiError(400, f"unknown field 'stream_options.{sorted(set(options) - {'include_usage'})[0]}'",
                       "stream_options")
    return (_typed(body, "stream", (bool,), "true or false", False),
            _typed(options, "include_usage", (bool,), "true or false", False))


def parse_completion(body: Any, server: Server) -> Completion:
    _check_common(body, server, KNOWN)
    prompts, texts = _prompts(body.get("prompt", "<|endoftext|>"), server)
    n = _int(body, "n", 1, 1, server.engine.max_batch)
    if _int(body, "best_of", n, 1, server.engine.max_batch) != n:
        raise ApiError(400, "'best_of' must equal 'n' (ranking several samples is not supported)", "best_of")
    if len(prompts) > server.engine.max_queue:  # each prompt waits in the queue as a request of its own
        raise ApiError(400, f"{len(prompts)} prompts in one request are more than this server queues "
                       f"({server.engine.max_queue}, --max-queue)", "prompt")
    context = server.engine.model.config.block_size
    longest = max(len(p) for p in prompts)
    if longest > context:
        raise ApiError(400, f"the prompt is {longest} tokens, more than the model's context of {context}", "prompt")
    max_tokens = _max_tokens(body, "max_tokens", longest, context, 16)  # absent: 16, OpenAI's default
    stream, include_usage = _streaming(body)
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = _typed(body, "echo", (bool,), "true or false", False)
    sampling = _sampling(body, server, max_tokens, logprobs)
    return Completion(prompts, texts, sampling, n, stream, include_usage, echo)


def parse_chat(body: Any, server: Server) -> Completion:
    """A chat completion: `messages` rendered as the chat format's prompt, the reply ending at <|assistant_end|>."""
    _check_common(body, server, KNOWN_CHAT)
    if not server.engine.chat:
        config = server.engine.model.config
        raise ApiError(400, f"the model '{server.model_id}' is not a chat model: its vocabulary is {config.vocab_size} "
                       "tokens, without the chat tokens, so it cannot answer messages; use /v1/completions, or serve "
                       "a model trained with `gptscratch train --preset sft`", "model")
    if "messages" not in body:
        raise ApiError(400, "'messages' is required: the conversation, ending with the user's message", "messages")
    try:
        prompt = render_prompt(body["messages"], server.engine.tokenizer)
    except ChatFormatError as e:
        raise ApiError(400, str(e), e.field) from None
    if body.get("logprobs") not in (None, False):
        raise ApiError(400, "'logprobs' is not supported by chat completions on this server", "logprobs")
    n = _int(body, "n", 1, 1, server.engine.max_batch)
    context = server.engine.model.config.block_size
    if len(prompt) >= context:  # the reply needs a token at least
        raise ApiError(400, f"the conversation is {len(prompt)} tokens as a prompt, and the model's context "
                       f"{context}: it leaves no room for a reply", "messages")
    # OpenAI's newer name wins; absent both, the reply may take what the context has left
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _max_tokens(body, name, len(prompt), context, context - len(prompt))
    stream, include_usage = _streaming(body)
    sampling = _sampling(body, server, max_tokens, None)
    sampling.stop_token, sampling.special_text = server.engine.tokenizer.assistant_end, False
    return Completion([prompt], [""], sampling, n, stream, include_usage, False, chat=True)


def _prompts(prompt: Any, server: Server) -> tuple[list[list[int]], list[str]]:
    """OpenAI's four prompt forms: a string, a list of strings, a list of token ids, a list of such lists."""
    enc = server.engine.enc
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt")
    tokens, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids = enc.encode(p, allowed_special="all")  # <|endoftext|>, and a chat model's chat tokens
            text = p
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            bad = [t for t in p if not 0 <= t < server.engine.vocab]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {server.engine.vocab})", "prompt")
            ids, text = list(p), enc.decode(p)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt")
        tokens.append(ids or [server.engine.tokenizer.eot])  # an empty prompt starts a document, as in training
        texts.append(text)
    return tokens, texts


class Server:
    """What the routes share: the engine, the model's name, the limits. `loopback`: the server listens on a
    loopback address, so a Host header naming anything else is a DNS rebinding."""

    def __init__(self, engine: Engine, model_id: str, api_key: str | None = None, max_body: int = 1 << 20,
                 loopback: bool = True, request_timeout: float = 30.0):
        self.engine, self.model_id, self.api_key, self.max_body = engine, model_id, api_key, max_body
        self.loopback, self.request_timeout = loopback, request_timeout
        self.created = int(time.time())

    def check_origin(self, headers: Headers) -> None:
        """Host (when bound to loopback) and Origin, before any route runs."""
        host = headers.get("host")
        if host is None:
            raise ApiError(400, "the request has no Host header")
        if self.loopback and not is_loopback_host(host):
            raise ApiError(400, f"this server answers to localhost, 127.0.0.1 and [::1] only, not the Host "
                           f"{host[:80]!r}")
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            raise ApiError(403, f"requests from the page at {origin[:80]!r} are not accepted: only this server's "
                           "own page and clients that are not browsers may call it")

    def check_auth(self, request: HttpRequest) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           kind="invalid_request_error", code="invalid_api_key")

    async def read_json(self, request: HttpRequest) -> Any:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, f"the request body must be sent as 'Content-Type: application/json', not "
                           f"{media[:50] or 'without one'!r}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        try:
            body = await asyncio.wait_for(self._read_body(request), self.request_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.request_timeout:g} s "
                           "(--request-timeout)", close=True) from None
        try:
            return json.loads(body, parse_int=_parse_int)
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply to read") from None
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError among them
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    async def _read_body(self, request: HttpRequest) -> bytearray:
        body = bytearray()
        async for chunk in request.stream():  # also caps a body sent without a length
            body += chunk
            if len(body) > self.max_body:
                raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        return body


def host_name(host: str) -> str | None:
    """The name a Host header (or an origin's host part) gives, lower-cased and unbracketed; None if malformed."""
    match = re.fullmatch(HOST, host)
    return match[1].strip("[]").lower() if match else None


def is_loopback_host(host: str) -> bool:
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return name is not None and ipaddress.ip_address(name).is_loopback
    except ValueError:  # a name, not an address: it could resolve anywhere
        return False


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's Origin is this server's own, as the Host header names it (the port defaults by scheme)."""
    page, here = re.fullmatch(rf"(https?)://{HOST}", origin, re.IGNORECASE), re.fullmatch(HOST, host)
    if page is None or here is None:  # "null" (a sandboxed or file: page) included
        return False
    default = "443" if page[1].lower() == "https" else "80"
    return (page[2].lower() == here[1].lower() and int(page[3] or default) == int(here[2] or default))


def _logprobs_block(enc, tokens: list[int], lps: list, tops: list, offset: int) -> dict:
    strings = [enc.decode_single_token_bytes(t).decode("utf-8", errors="replace") for t in tokens]
    offsets, pos = [], offset
    for s in strings:
        offsets.append(pos)
        pos += len(s)
    return {"tokens": strings, "token_logprobs": lps, "text_offset": offsets,
            "top_logprobs": [None if t is None else {enc.decode_single_token_bytes(i).decode("utf-8", errors="replace"):
                                                     v for i, v in t.items()} for t in tops]}


def _merge(block: dict | None, more: dict) -> dict:
    if block is None:
        return more
    return {k: block[k] + more[k] for k in block}


async def completions(request: HttpRequest) -> Response:
    return await _answer(request, parse_completion)


async def chat_completions(request: HttpRequest) -> Response:
    return await _answer(request, parse_chat)


async def _answer(request: HttpRequest, parse: Callable[[Any, Server], Completion]) -> Response:
    """Decode a completion or a chat completion (batched in the same engine) and answer in its shape."""
    server: Server = request.app.state.server
    try:
        server.check_auth(request)
        req = parse(await server.read_json(request), server)
    except ApiError as e:
        return e.response()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the client has gone
    engine_requests = [
        Request(prompt, req.sampling, n=req.n, first_index=i * req.n,
                on_event=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                echo_logprobs=req.echo and req.sampling.logprobs is not None)
        for i, prompt in enumerate(req.prompts)]
    submitted = []
    try:
        for r in engine_requests:
            server.engine.submit(r)
            submitted.append(r)
    except (QueueFull, RuntimeError) as e:
        for r in submitted:
            r.cancelled = True
        status, code = (429, "rate_limit_exceeded") if isinstance(e, QueueFull) else (503, "engine_stopped")
        return ApiError(status, f"the server is busy: {e}; retry later", kind="server_error", code=code).response()
    rid = f"{'chatcmpl' if req.chat else 'cmpl'}-{secrets.token_hex(12)}"
    created = int(time.time())
    kind = ("chat.completion.chunk" if req.stream else "chat.completion") if req.chat else "text_completion"
    base = {"id": rid, "object": kind, "created": created, "model": server.model_id}
    enc = server.engine.enc
    total = len(engine_requests) * req.n
    usage_prompt = sum(len(p) for p in req.prompts) * req.n

    def echo_part(index: int) -> tuple[str, dict | None]:
        """The prompt's text and logprobs, when `echo` asks for them in front of the completion."""
        r = engine_requests[index // req.n]
        if not req.echo:
            return "", None
        block = None
        if req.sampling.logprobs is not None:
            lps = [lp for lp, _ in r.prompt_logprobs]
            tops = [top for _, top in r.prompt_logprobs]
            block = _logprobs_block(enc, r.prompt, lps, tops, 0)
        return req.prompt_texts[index // req.n], block

    def cancel() -> None:
        for r in engine_requests:
            r.cancelled = True

    # Until the response starts, a disconnect is noticed here (the engine never pauses long enough for a
    # poll between its events to see it); a streamed response then watches for it itself.
    watcher = asyncio.create_task(_watch_disconnect(request, events))
    streaming = False
    try:
        if req.stream:
            first = await events.get()  # held back until then, so a request that fails at once gets a 500
            if first is None:
                return Response(status_code=499)
            if first.finish_reason == "error":
                return _decoding_failed(first).response()
            watcher.cancel()
            streaming = True
            return StreamingResponse(_stream(req, base, first, events, total, usage_prompt, echo_part, enc, cancel),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices: dict[int, dict] = {}
        completion_tokens = finished = 0
        while finished < total:
            ev = await events.get()
            if ev is None:  # nobody is waiting for the answer any more
                return Response(status_code=499)
            if ev.finish_reason == "error":
                return _decoding_failed(ev).response()
            if ev.index not in choices:
                text, block = echo_part(ev.index)
                choices[ev.index] = {"index": ev.index, "text": text, "logprobs": block, "finish_reason": None,
                                     "_offset": len(text)}
            c = choices[ev.index]
            if req.sampling.logprobs is not None:
                c["logprobs"] = _merge(c["logprobs"],
                                       _logprobs_block(enc, ev.tokens, ev.token_logprobs, ev.top_logprobs,
                                                       c["_offset"]))
            c["text"] += ev.text
            c["_offset"] += len(ev.text)
            completion_tokens += len(ev.tokens)
            if ev.finish_reason is not None:
                c["finish_reason"] = ev.finish_reason
                finished += 1
    finally:
        watcher.cancel()
        if not streaming:  # gone, failed or done: free the rows at the engine's next step
            cancel()
    for c in choices.values():
        del c["_offset"]
        if req.sampling.logprobs is None:
            c["logprobs"] = None
        if req.chat:
            c["message"] = {"role": "assistant", "content": c.pop("text")}
    return JSONResponse({**base, "choices": [choices[i] for i in sorted(choices)],
                         "usage": {"prompt_tokens": usage_prompt, "completion_tokens": completion_tokens,
                                   "total_tokens": usage_prompt + completion_tokens}})


async def _watch_disconnect(request: HttpRequest, events: asyncio.Queue) -> None:
    """Put None in `events` once the client disconnects (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    events.put_nowait(None)


def _decoding_failed(event: Event) -> ApiError:
    return ApiError(500, f"decoding this request failed ({event.error}); the server goes on serving",
                    kind="server_error")


async def _stream(req: Completion, base: dict, first: Event, events: asyncio.Queue, total: int, usage_prompt: int,
                  echo_part, enc, cancel):
    """Server-sent events: one chunk per generated token and choice, then `data: [DONE]`."""
    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {**base, "choices": choices}
        if req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    offsets: dict[int, int] = {}
    finished = completion_tokens = 0
    ev: Event | None = first
    try:
        while finished < total:
            if ev is None:
                ev = await events.get()
            if ev is None:  # the client has gone; Starlette cancels this generator as it notices
                return
            if ev.finish_reason == "error":  # too late for a status: OpenAI's error as the last event
                yield f"data: {json.dumps(_decoding_failed(ev).body())}\n\n"
                return
            text, logprobs, delta = "", None, {}
            if ev.index not in offsets:
                text, logprobs = echo_part(ev.index)
                offsets[ev.index] = len(text)
                delta["role"] = "assistant"  # a chat choice's first chunk says whose turn it is
            if req.sampling.logprobs is not None:
                logprobs = _merge(logprobs, _logprobs_block(enc, ev.tokens, ev.token_logprobs, ev.top_logprobs,
                                                            offsets[ev.index]))
            text += ev.text
            offsets[ev.index] += len(ev.text)
            completion_tokens += len(ev.tokens)
            finished += ev.finish_reason is not None
            if req.chat:
                delta["content"] = text
                yield chunk([{"index": ev.index, "delta": delta, "logprobs": None,
                              "finish_reason": ev.finish_reason}])
            else:
                yield chunk([{"index": ev.index, "text": text, "logprobs": logprobs,
                              "finish_reason": ev.finish_reason}])
            ev = None
        if req.include_usage:
            yield chunk([], {"prompt_tokens": usage_prompt, "completion_tokens": completion_tokens,
                             "total_tokens": usage_prompt + completion_tokens})
        yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects and the response is cancelled
        cancel()


async def models(request: HttpRequest) -> Response:
    server: Server = request.app.state.server
    try:
        server.check_auth(request)
    except ApiError as e:
        return e.response()
    return JSONResponse({"object": "list", "data": [
        {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "gptscratch",
         "context_length": server.engine.model.config.block_size}]})


async def health(request: HttpRequest) -> Response:
    server: Server = request.app.state.server
    stats = server.engine.stats()
    ok = server.engine.failure is None
    return JSONResponse({"status": "ok" if ok else "failed", "model": server.model_id,
                         "auth": server.api_key is not None, "chat": server.engine.chat, **stats},
                        status_code=200 if ok else 503)


# --- the tokenizer, for evaluators ---------------------------------------------------------------
# vLLM's shapes, which lm-evaluation-harness's remote tokenizer reads (its `auto` backend finds these routes,
# so `lm_eval --model local-completions` needs only the server's URL, no tokenizer directory or hub access).
# A special token written in a text is encoded as such, as transformers does: `<|endoftext|>` is one id.


def _authorized(request: HttpRequest) -> Server:
    server: Server = request.app.state.server
    server.check_auth(request)
    return server


async def tokenizer_info(request: HttpRequest) -> Response:
    try:
        server = _authorized(request)
    except ApiError as e:
        return e.response()
    enc, context = server.engine.enc, server.engine.model.config.block_size
    eot = enc.decode([server.engine.tokenizer.eot])
    return JSONResponse({"tokenizer_class": "tiktoken", "name": enc.name, "vocab_size": enc.n_vocab,
                         "eos_token": eot, "bos_token": eot, "pad_token": None, "model_max_length": context,
                         "max_model_len": context})


async def tokenize(request: HttpRequest) -> Response:
    try:
        server = _authorized(request)
        body = await server.read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        text = _typed(body, "prompt", (str,), "a string")
        if text is None:
            raise ApiError(400, "'prompt' is required: the text to tokenize", "prompt")
        _typed(body, "add_special_tokens", (bool,), "true or false")  # GPT-2 adds none either way
        tokens = server.engine.enc.encode(text, allowed_special="all")
    except ApiError as e:
        return e.response()
    return JSONResponse({"tokens": tokens, "count": len(tokens),
                         "max_model_len": server.engine.model.config.block_size})


async def detokenize(request: HttpRequest) -> Response:
    try:
        server = _authorized(request)
        body = await server.read_json(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        n_vocab = server.engine.enc.n_vocab
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ApiError(400, "'tokens' must be a list of token ids", "tokens")
        bad = [t for t in tokens if not 0 <= t < n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {n_vocab})", "tokens")
    except ApiError as e:
        return e.response()
    return JSONResponse({"prompt": server.engine.enc.decode(tokens)})


async def page(request: HttpRequest) -> Response:
    html = resources.files("gptscratch.serve").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; img-src data:"})


async def icon(request: HttpRequest) -> Response:
    """No icon: the page declares an empty one, and a browser that asks anyway gets no 404 in its console."""
    return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})


async def not_found(request: HttpRequest, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return ApiError(status, f"{request.method} {request.url.path}: no such route" if status == 404
                    else f"{request.method} is not allowed on {request.url.path}").response()


class Guard:
    """ASGI middleware around every route: Host and Origin first (Server.check_origin); then any exception a
    route did not expect becomes OpenAI's 500, logged, and the server goes on."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.server.check_origin(Headers(scope=scope))
        except ApiError as e:
            await e.response()(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:  # part of a response has gone: uvicorn closes the connection
                raise
            log.exception("%s %s failed; answered 500", scope["method"], scope["path"])
            await ApiError(500, "the server failed on this request; it goes on serving",
                           kind="server_error").response()(scope, receive, send)


def make_app(server: Server) -> Starlette:
    app = Starlette(routes=[
        Route("/", page), Route("/favicon.ico", icon), Route("/health", health), Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/tokenizer_info", tokenizer_info), Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: not_found}, middleware=[Middleware(Guard, server=server)])
    app.state.server = server
    return app


def raw_error(status: int, phrase: str, error: ApiError) -> bytes:
    """A whole HTTP response, for the moments h11 cannot write one (no request yet, or a broken one)."""
    body = json.dumps(error.body()).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 connection with the two limits it lacks. A request's head (its line and headers) must
    arrive within `head_timeout` seconds of the connection opening or of the previous response, or the
    connection gets a 408 and is closed: a client that dribbles a byte now and then holds nothing for
    long. A connection beyond `max_connections` gets a 503 and is closed at once. Malformed HTTP gets
    OpenAI's error shape as well. Make one with `limited`."""

    head_timeout: float = 30.0
    max_connections: int = 256

    @classmethod
    def limited(cls, head_timeout: float, max_connections: int) -> type[GuardedH11]:
        return type("GuardedH11", (cls,), {"head_timeout": head_timeout, "max_connections": max_connections})

    def connection_made(self, transport) -> None:
        self.head_deadline = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(raw_error(503, "Service Unavailable", ApiError(
                503, f"the server holds {self.max_connections} connections already (--max-connections); retry "
                "later", kind="server_error", code="too_many_connections")))
            transport.close()
            return
        self.arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def arm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.head_overdue)

    def head_overdue(self) -> None:
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # part of a head came: say why; an idle connection just closes
                self.transport.write(raw_error(408, "Request Timeout", ApiError(
                    408, f"the request's headers did not arrive within {self.head_timeout:g} s (--request-timeout)")))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_error(400, "Bad Request", ApiError(400, f"malformed HTTP: {msg}")))
        self.transport.close()
