"""serve/engine.py: batched decoding equals generate(), stop strings, a full queue."""

from __future__ import annotations

import pytest
import torch

from gptscratch.generate import generate
from gptscratch.serve.engine import Engine, QueueFull, Request, Sampling
from gptscratch.tokenizer import EOT_TOKEN, get_encoding
from tests.helpers import collect, greedy, run_until_done, tiny_model

ENC = get_encoding()
PROMPTS = ["Hello, I'm a language model,", "The", "Once upon a time, in a land far", "import numpy as"]


@pytest.mark.parametrize("options", [{}, {"pos_embedding": "rope", "qk_norm": True, "norm": "rmsnorm"}],
                         ids=["gpt2", "rope"])
def test_batched_greedy_equals_generate_and_a_seed_is_reproducible_alone_or_batched(options):
    model = tiny_model(**options)
    engine = Engine(model, max_batch=4)  # not started yet: everything submitted is admitted together
    prompts = [ENC.encode(p) for p in PROMPTS]
    greedy_reqs = [Request(p, Sampling(max_tokens=12, temperature=0.0), first_index=10 + 10 * i)
                   for i, p in enumerate(prompts[:2])]
    seeded = lambda: Request(prompts[2], Sampling(max_tokens=12, temperature=1.0, top_k=40, seed=5), n=2)  # noqa: E731
    batched = [*greedy_reqs, seeded()]
    tokens = collect(batched)
    try:
        run_until_done(engine, batched)  # starts the engine once all four are queued
        steps_batched = engine.steps
        alone = [seeded()]
        tokens_alone = collect(alone)
        run_until_done(engine, alone)
    finally:
        engine.stop()
    assert steps_batched < 4 * 11  # the four sequences shared forward passes
    for i, p in enumerate(prompts[:2]):
        want = generate(model, torch.tensor([p]), 12, temperature=0.0, stop_token=EOT_TOKEN)[0, len(p):].tolist()
        assert tokens[10 + 10 * i] == [t for t in want if t != EOT_TOKEN]
    assert (tokens_alone[0], tokens_alone[1]) == (tokens[0], tokens[1]) and tokens[0] != tokens[1]


def test_stop_strings_end_the_text_before_them(model, engine):
    full = greedy(model, PROMPTS[0], 12)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    events = []
    request = Request(ENC.encode(PROMPTS[0]), Sampling(max_tokens=12, temperature=0.0, stop=(stop,)))
    request.on_event = events.append
    run_until_done(engine, [request])
    text = "".join(e.text for e in events)
    assert text == full[: full.index(stop)] and events[-1].finish_reason == "stop"


def test_a_full_queue_refuses_at_once(model):
    engine = Engine(model, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    for _ in range(2):
        engine.submit(Request([1], Sampling()))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], Sampling()))
