"""Batched decoding: many requests share one forward pass per step, each at its own position.

A request's prompt is prefilled alone into a free row of one shared KV cache (batch 1, the same pass as
`gptscratch sample`). From then on, every step feeds one token of every running sequence through the model
together: the cache's per-row lengths give each row its own positions and attention mask
(`KVCache.lengths`). A finished sequence leaves between steps and its row is refilled by moving the last
running row into it, so the running rows are always the first `len(running)` and a step never computes an
empty row. Each sequence samples from its own logits row with its own generator and settings, so a seeded
request gives the same tokens alone or batched with others.

This module knows tokens and text, not HTTP: `gptscratch.serve.api` turns requests into `Request`s and
`Event`s into responses. The engine runs in one thread of its own; `Request.on_event` is called from it.
Whatever fails while a request is prefilled or sampled fails that request alone (its choices end with
finish_reason "error"); a failed forward pass over the batch fails the requests in it; the engine goes on.
"""

from __future__ import annotations

import codecs
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gptscratch.generate import next_token
from gptscratch.model import GPT
from gptscratch.precision import autocast
from gptscratch.tokenizer import EOT_TOKEN, Tokenizer, gpt2_for

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts: the caller should retry later."""


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob and the top k
    # a chat reply ends at <|assistant_end|> and its text leaves the special tokens out, as `decode_reply` does;
    # a completion ends at <|endoftext|> and shows any other special token (a chat model's) by name
    stop_token: int = EOT_TOKEN  # the API sets its model's tokenizer's
    special_text: bool = True


@dataclass
class Event:
    """Something new for one choice: text (and its tokens) to append, and how it ended once it has."""

    index: int
    text: str
    tokens: list[int]
    token_logprobs: list[float]
    top_logprobs: list[dict[int, float]]
    finish_reason: str | None = None  # "stop" (a stop string or the stop token), "length", "cancelled", "error"
    error: str | None = None  # with "error": what failed


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling
    n: int = 1
    first_index: int = 0  # choice indices are first_index ... first_index + n - 1
    on_event: Callable[[Event], None] = lambda event: None
    echo_logprobs: bool = False  # also score the prompt's tokens (prompt_logprobs, set before any event)
    prompt_logprobs: list[tuple[float | None, dict[int, float] | None]] = field(default_factory=list)
    cancelled: bool = False  # set from any thread: the engine drops the request at its next step
    error: str | None = None  # set by the engine when decoding this request failed
    submitted: float = field(default_factory=time.perf_counter)


class Choice:
    """One sequence being decoded: its tokens, its text so far, and what has been sent of it."""

    def __init__(self, request: Request, index: int, device: torch.device):
        self.request, self.index = request, index
        seed = request.sampling.seed
        # choice i of a seeded request draws from seed + i, whatever else runs beside it
        seed = random.getrandbits(64) if seed is None else (seed + index) % 2**64
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.tokens: list[int] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[int, float]] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a token may split a character
        self.text = ""
        self.sent_text = self.sent_tokens = 0
        self.finish_reason: str | None = None

    def add(self, token: int, logprob: float | None, top: dict[int, float] | None, tok: Tokenizer) -> None:
        """Append a sampled token; decide whether the choice has finished."""
        sampling = self.request.sampling
        stops, hits = sampling.stop, []
        if token == sampling.stop_token:
            self.finish_reason = "stop"
        else:
            self.tokens.append(token)
            if logprob is not None:
                self.token_logprobs.append(logprob)
                self.top_logprobs.append(top or {})
            if token < tok.eot or sampling.special_text:
                self.text += self.decoder.decode(tok.enc.decode_single_token_bytes(token))
            hits = [i for i in (self.text.find(s) for s in stops) if i >= 0]
            if hits:  # the text ends before the first stop string, which is not returned
                self.text = self.text[: min(hits)]
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.tokens) >= self.request.sampling.max_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None and not hits:  # a character cut short ends as U+FFFD
            self.text += self.decoder.decode(b"", final=True)

    def event(self) -> Event:
        """What has not been sent yet. While running, text that may be the start of a stop string is held
        back: once sent it could not be taken back if the stop string completes."""
        end = len(self.text)
        if self.finish_reason is None:
            for s in self.request.sampling.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        end = max(end, self.sent_text)
        n_tok = len(self.tokens)
        ev = Event(self.index, self.text[self.sent_text : end], self.tokens[self.sent_tokens : n_tok],
                   self.token_logprobs[self.sent_tokens : n_tok], self.top_logprobs[self.sent_tokens : n_tok],
                   self.finish_reason, self.request.error if self.finish_reason == "error" else None)
        self.sent_text, self.sent_tokens = end, n_tok
        return ev


class Engine:
    """Decodes every running sequence together, one token each per forward pass, in a thread of its own."""

    def __init__(self, model: GPT, max_batch: int = 8, max_queue: int = 64, amp: torch.dtype | None = None,
                 tokenizer: Tokenizer | None = None):
        self.model = model.eval()
        self.device = model.lm_head.weight.device
        self.max_batch, self.max_queue, self.amp = max_batch, max_queue, amp
        # the model's (its checkpoint's); by default GPT-2's, with the chat tokens for a chat model, which
        # samples them too
        self.tokenizer = tokenizer or gpt2_for(model.config.vocab_size)
        self.chat = self.tokenizer.chat
        self.enc = self.tokenizer.enc
        # the ids a request may use or get: a model's rows beyond the tokenizer's (nanoGPT's 50,304) have no text
        self.vocab = min(model.config.vocab_size, self.enc.n_vocab)
        self.cache = model.new_cache(max_batch, dtype=amp, per_row=True)
        self.running: list[Choice] = []  # running[i] decodes in cache row i; it feeds its last token next
        self.waiting: deque[Request] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.steps = 0  # decode steps run; the tests read it
        self.failure: BaseException | None = None

    # --- the other threads' side ---

    def submit(self, request: Request) -> None:
        with self.wake:
            if self.failure is not None or self.stopping:
                raise RuntimeError(f"the decoding engine has stopped ({self.failure!r})")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self.waiting.append(request)
            self.wake.notify()

    def stats(self) -> dict:
        with self.wake:
            return {"running": len(self.running), "waiting": len(self.waiting), "max_batch": self.max_batch,
                    "steps": self.steps}

    def start(self) -> Engine:
        self.thread = threading.Thread(target=self._run, name="gptscratch-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    # --- the engine thread ---

    def _run(self) -> None:
        try:
            while True:
                with self.wake:
                    while not self.stopping and not self.waiting and not self.running:
                        self.wake.wait()
                    if self.stopping:
                        break
                self._admit()
                if self.running:
                    self._step()
        except BaseException as e:  # a bug in the engine itself: fail every request instead of hanging them
            with self.wake:
                self.failure = e
                waiting, self.waiting = list(self.waiting), deque()
            for choice in self.running + [Choice(r, r.first_index + j, self.device) for r in waiting
                                          for j in range(r.n)]:
                choice.request.error = choice.request.error or f"the decoding engine stopped ({e!r})"
                choice.finish_reason = "error"
                choice.request.on_event(choice.event())
            raise

    def _admit(self) -> None:
        """Prefill waiting requests into free rows, oldest first, while their n choices fit."""
        while True:
            with self.wake:
                if not self.waiting or len(self.running) + self.waiting[0].n > self.max_batch:
                    return
                request = self.waiting.popleft()
            if not request.cancelled:
                self._prefill(request)

    @torch.inference_mode()
    def _prefill(self, request: Request) -> None:
        row = len(self.running)
        ended: set[int] = set()  # the choices whose last event has gone out
        try:
            idx = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
            with autocast(self.device, self.amp):
                logits, _ = self.model(idx, cache=self.cache.rows(row, row + 1, empty=True),
                                       last_only=not request.echo_logprobs)
            logits = logits[0, :, : self.vocab].float()
            if request.echo_logprobs:  # the prompt's own tokens, each under the context before it
                k = request.sampling.logprobs or 0
                logp = F.log_softmax(logits[:-1], dim=-1)
                request.prompt_logprobs = [(None, None)] + [
                    (float(logp[i, t]), top_dict(logp[i], k)) for i, t in enumerate(request.prompt[1:])]
            last = logits[-1:]
            last_logp = F.log_softmax(last, dim=-1) if request.sampling.logprobs is not None else None
            for j in range(request.n):
                choice = Choice(request, request.first_index + j, self.device)
                if request.sampling.max_tokens == 0:  # scoring only (echo + logprobs): nothing to generate
                    choice.finish_reason = "length"
                else:
                    self._pick(choice, last, last_logp)
                self._emit(choice)
                if choice.finish_reason is not None:
                    ended.add(choice.index)
                    continue
                # n > 1: every choice starts from the prompt's keys and values, still in `row` (no step has
                # run since the prefill, so the choices already placed there have not changed them)
                if len(self.running) != row:
                    self.cache.copy_row(row, len(self.running), len(request.prompt))
                self.cache.lengths[len(self.running)] = len(request.prompt)
                self.running.append(choice)
        except Exception as e:
            del self.running[row:]  # this request's choices were the last placed
            self._fail(request, e)
            for j in range(request.n):
                if request.first_index + j not in ended:
                    choice = Choice(request, request.first_index + j, self.device)
                    choice.finish_reason = "error"
                    self._emit(choice)

    def _pick(self, choice: Choice, logits: torch.Tensor, logp: torch.Tensor | None) -> None:
        """One token for `choice` from its row of logits (1, vocab), with its own settings and generator;
        `logp` is that row's log-softmax where the request asked for logprobs."""
        s = choice.request.sampling
        token = int(next_token(logits, s.temperature, s.top_k, s.top_p, choice.generator))
        lp = top = None
        if s.logprobs is not None:
            lp, top = float(logp[0, token]), top_dict(logp[0], s.logprobs)
        choice.add(token, lp, top, self.tokenizer)

    def _fail(self, request: Request, error: Exception) -> None:
        """Mark `request` failed: its choices end with "error" when they next report."""
        if request.error is None:
            log.error("a request failed in the decoding engine; the others go on", exc_info=error)
            request.error = f"{type(error).__name__}: {error}"[:300]

    def _emit(self, choice: Choice) -> None:
        try:
            choice.request.on_event(choice.event())
        except Exception:  # nobody can be told any more (the server is closing): stop decoding for it
            choice.request.cancelled = True

    @torch.inference_mode()
    def _step(self) -> None:
        n = len(self.running)
        logits = logp = None
        try:
            # a running choice has a token: one that ended on its stop token (kept out of its tokens) has left
            idx = torch.tensor([c.tokens[-1] for c in self.running], dtype=torch.long, device=self.device)[:, None]
            with autocast(self.device, self.amp):
                out, _ = self.model(idx, cache=self.cache.rows(0, n))
            logits = out[:, -1, : self.vocab].float()
            if any(c.request.sampling.logprobs is not None for c in self.running):
                logp = F.log_softmax(logits, dim=-1)
        except Exception as e:  # one pass for every row: no one request to blame, so each in it fails
            for choice in self.running:
                self._fail(choice.request, e)
        with self.wake:
            self.steps += 1
        for i, choice in enumerate(self.running):
            if logits is not None and choice.request.error is None:
                try:
                    self._pick(choice, logits[i : i + 1], None if logp is None else logp[i : i + 1])
                except Exception as e:
                    self._fail(choice.request, e)
        for choice in self.running:
            if choice.finish_reason is None and choice.request.error is not None:  # n > 1: its siblings too
                choice.finish_reason = "error"
            elif choice.request.cancelled and choice.finish_reason is None:
                choice.finish_reason = "cancelled"
            self._emit(choice)
        # leave between steps: fill each finished row with the last running one
        for row in reversed(range(n)):
            if self.running[row].finish_reason is not None:
                last = len(self.running) - 1
                if row != last:
                    self.cache.copy_row(last, row, int(self.cache.lengths[last]))
                    self.running[row] = self.running[last]
                self.running.pop()


def top_dict(logp: torch.Tensor, k: int) -> dict[int, float]:
    if k <= 0:
        return {}
    values, ids = torch.topk(logp, k)
    return {int(i): float(v) for i, v in zip(ids, values, strict=True)}
