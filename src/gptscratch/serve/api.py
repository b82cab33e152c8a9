"""The HTTP side of `gptscratch serve`: OpenAI's completions API over the batched engine, and the page.

Routes: `POST /v1/completions` (OpenAI's legacy completions shape, streamed as server-sent events when
`stream` is true), `GET /v1/models`, `GET /health`, `GET /` (the playground page, one static file), and the
tokenizer for evaluators: `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`.
Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the field at fault
in `param`, so the `openai` client raises the matching exception (BadRequestError, RateLimitError, ...).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gptscratch.serve.engine import Engine, Event, QueueFull, Request, Sampling
from gptscratch.tokenizer import EOT_TOKEN

# the fields of OpenAI's completions request this server reads; anything else is refused by name
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options", "echo", "logprobs", "user", "best_of", "presence_penalty", "frequency_penalty",
         "logit_bias", "suffix"}
MAX_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


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


def parse_completion(body: Any, server: Server) -> Completion:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unknown field '{unknown[0]}' (this server reads: {', '.join(sorted(KNOWN))})",
                       unknown[0])
    model = _typed(body, "model", (str,), "a string")
    if model is None:
        raise ApiError(400, "'model' is required (GET /v1/models lists it)", "model")
    if model != server.model_id:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{server.model_id}'", "model",
                       code="model_not_found")
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("logit_bias", {}), ("suffix", None)):
        if body.get(name, neutral) not in (neutral, None):
            raise ApiError(400, f"'{name}' is not supported by this server", name)
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
    max_tokens = _int(body, "max_tokens", 16, 0, context)  # absent: 16, OpenAI's default
    if "max_tokens" in body and body["max_tokens"] is None:
        max_tokens = context - longest  # null: as many as the context holds
    if longest + max_tokens > context:
        raise ApiError(400, f"'max_tokens' {max_tokens} + the prompt's {longest} tokens exceed the model's context "
                       f"of {context}; ask for at most {context - longest}", "max_tokens")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    options = _typed(body, "stream_options", (dict,), "an object", {})
    if set(options) - {"include_usage"}:
        raise ApiError(400, f"unknown field 'stream_options.{sorted(set(options) - {'include_usage'})[0]}'",
                       "stream_options")
    _typed(body, "user", (str,), "a string")
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = _typed(body, "echo", (bool,), "true or false", False)
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
    return Completion(prompts, texts, sampling, n, _typed(body, "stream", (bool,), "true or false", False),
                      _typed(options, "include_usage", (bool,), "true or false", False), echo)


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
            ids = enc.encode(p, allowed_special={"<|endoftext|>"})
            text = p
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            bad = [t for t in p if not 0 <= t < server.engine.vocab]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {server.engine.vocab})", "prompt")
            ids, text = list(p), enc.decode(p)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt")
        tokens.append(ids or [EOT_TOKEN])  # an empty prompt starts a document, as GPT-2 was trained
        texts.append(text)
    return tokens, texts


class Server:
    """What the routes share: the engine, the model's name, the limits."""

    def __init__(self, engine: Engine, model_id: str, api_key: str | None = None, max_body: int = 1 << 20):
        self.engine, self.model_id, self.api_key, self.max_body = engine, model_id, api_key, max_body
        self.created = int(time.time())

    def check_auth(self, request: HttpRequest) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           kind="invalid_request_error", code="invalid_api_key")

    async def read_json(self, request: HttpRequest) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():  # also caps a body sent without a length
            body += chunk
            if len(body) > self.max_body:
                raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None


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
    server: Server = request.app.state.server
    try:
        server.check_auth(request)
        req = parse_completion(await server.read_json(request), server)
    except ApiError as e:
        return e.response()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
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
    rid = f"cmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    base = {"id": rid, "object": "text_completion", "created": created, "model": server.model_id}
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

    if req.stream:
        return StreamingResponse(_stream(req, base, events, total, usage_prompt, echo_part, enc, cancel),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    choices: dict[int, dict] = {}
    completion_tokens = 0
    try:
        finished = 0
        while finished < total:
            try:
                ev = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # nobody is waiting for the answer any more
                    return Response(status_code=499)
                continue
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
    finally:  # the client went away before the end: free the rows at the engine's next step
        cancel()
    if any(c["finish_reason"] == "error" for c in choices.values()):
        return ApiError(500, f"decoding failed: {server.engine.failure!r}", kind="server_error").response()
    for c in choices.values():
        del c["_offset"]
        if req.sampling.logprobs is None:
            c["logprobs"] = None
    return JSONResponse({**base, "choices": [choices[i] for i in sorted(choices)],
                         "usage": {"prompt_tokens": usage_prompt, "completion_tokens": completion_tokens,
                                   "total_tokens": usage_prompt + completion_tokens}})


async def _stream(req: Completion, base: dict, events: asyncio.Queue, total: int, usage_prompt: int, echo_part,
                  enc, cancel):
    """Server-sent events: one chunk per generated token and choice, then `data: [DONE]`."""
    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {**base, "choices": choices}
        if req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    offsets: dict[int, int] = {}
    finished = completion_tokens = 0
    try:
        while finished < total:
            ev = await events.get()
            text, logprobs = "", None
            if ev.index not in offsets:
                text, logprobs = echo_part(ev.index)
                offsets[ev.index] = len(text)
            if req.sampling.logprobs is not None:
                logprobs = _merge(logprobs, _logprobs_block(enc, ev.tokens, ev.token_logprobs, ev.top_logprobs,
                                                            offsets[ev.index]))
            text += ev.text
            offsets[ev.index] += len(ev.text)
            completion_tokens += len(ev.tokens)
            finished += ev.finish_reason is not None
            reason = ev.finish_reason
            if reason == "error":
                yield f"data: {json.dumps({'error': {'message': 'decoding failed', 'type': 'server_error'}})}\n\n"
                return
            yield chunk([{"index": ev.index, "text": text, "logprobs": logprobs, "finish_reason": reason}])
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
                         "auth": server.api_key is not None, **stats}, status_code=200 if ok else 503)


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
    eot = enc.decode([EOT_TOKEN])
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
                                       "style-src 'unsafe-inline'"})


async def not_found(request: HttpRequest, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return ApiError(status, f"{request.method} {request.url.path}: no such route" if status == 404
                    else f"{request.method} is not allowed on {request.url.path}").response()


def make_app(server: Server) -> Starlette:
    app = Starlette(routes=[
        Route("/", page), Route("/health", health), Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenizer_info", tokenizer_info), Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: not_found})
    app.state.server = server
    return app
