"""serve/api.py's chat completions: a served chat model through the real `openai` client and raw HTTP.

The chat model is a tiny random one with the chat vocabulary: it has learned nothing, so each reply is checked
against the library's own greedy `generate()` on `render_prompt(messages)`, stopped at <|assistant_end|>.
"""

from __future__ import annotations

import threading

import httpx
import pytest
import torch
from openai import BadRequestError, OpenAI

from gptscratch.chat import ASSISTANT_END, CHAT_VOCAB_SIZE, decode_reply, get_chat_encoding, render_prompt
from gptscratch.generate import generate
from gptscratch.model import GPT, GPTConfig
from gptscratch.serve import serving_in_thread
from gptscratch.serve.engine import Engine
from gptscratch.tokenizer import EOT_TOKEN
from tests.helpers import assistant, tiny_model, user

MESSAGES = [{"role": "system", "content": "Be brief."}, user("Hello, who are you?"), assistant("A model."),
            user("What is <b>2+2</b>?")]
BAD = [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [user("hi"), 3]}, "messages[1]"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [user("   ")]}, "messages[0].content"),
    ({"messages": [user("a"), user("b")]}, "messages[1].role"),
    ({"messages": [user("a"), {"role": "system", "content": "late"}]}, "messages[1].role"),
    ({"messages": [user("a"), assistant("b")]}, "messages"),
    ({"messages": [user("hi " * 1100)]}, "messages"),
    ({"messages": [user("hi")], "max_completion_tokens": 5000}, "max_completion_tokens"),
    ({"messages": [user("hi")], "max_tokens": -1}, "max_tokens"),
    ({"messages": [user("hi")], "temperature": 3}, "temperature"),
    ({"messages": [user("hi")], "logprobs": True}, "logprobs"),
    ({"messages": [user("hi")], "prompt": "x"}, "prompt"),
    ({"messages": [user("hi")], "n": 99}, "n"),
]


@pytest.fixture(scope="module")
def model() -> GPT:
    """Overrides conftest's: the same tiny model with the chat tokens in its vocabulary."""
    return tiny_model(vocab_size=CHAT_VOCAB_SIZE)


def greedy_reply(model: GPT, messages: list[dict], n: int) -> tuple[str, list[int]]:
    """The library's reply: greedy generate() on the rendered prompt, cut at <|assistant_end|>."""
    ids = render_prompt(messages)
    out = generate(model, torch.tensor([ids]), n, temperature=0.0, stop_token=ASSISTANT_END)[0, len(ids):].tolist()
    out = out[:out.index(ASSISTANT_END)] if ASSISTANT_END in out else out
    return decode_reply(out), out


def test_a_chat_reply_equals_greedy_generate_on_the_rendered_prompt(client, model):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12)
    text, ids = greedy_reply(model, MESSAGES, 12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(render_prompt(MESSAGES))
    assert r.usage.completion_tokens == len(ids) == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_a_streamed_chat_reply_arrives_as_deltas_equal_to_the_whole(client, model):
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                                 max_completion_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == greedy_reply(model, MESSAGES, 10)[0]
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == len(render_prompt(MESSAGES))


def test_n_seeded_choices_are_reproducible_and_differ(client):
    kwargs = dict(model="tiny", messages=[user("Tell me a story")], n=2, seed=7, temperature=1.0, max_tokens=8)
    first, again = (client.chat.completions.create(**kwargs) for _ in range(2))
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.choices[0].message.content != first.choices[1].message.content
    assert first.usage.completion_tokens == 16


def test_a_reply_stops_at_assistant_end_which_is_not_in_its_text():
    """A model made to pick <|assistant_end|> at every step: the reply is empty and ends with "stop"."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=CHAT_VOCAB_SIZE, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():  # every final hidden state is all ones, and so is <|assistant_end|>'s row alone
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[ASSISTANT_END] = 1.0
    assert greedy_reply(model, [user("hi")], 5) == ("", [])
    engine = Engine(model, max_batch=2).start()
    try:
        with serving_in_thread(engine, "ender") as base:
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
            r = client.chat.completions.create(model="ender", messages=[user("hi")], max_tokens=5,
                                                temperature=0)
            assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == ""
            assert r.usage.completion_tokens == 0
            # a completion of a chat model shows the chat tokens it samples by name, and ends at <|endoftext|>
            c = client.completions.create(model="ender", prompt="<|user_start|>hi", max_tokens=3, temperature=0)
            assert c.choices[0].text == "<|assistant_end|>" * 3 and c.usage.prompt_tokens == 2
    finally:
        engine.stop()


def test_a_chat_models_completion_shows_its_chat_tokens_by_name(client, model):
    """Completions of a chat model decode with the chat encoding; a chat token in the prompt is that token."""
    prompt = "<|endoftext|><|user_start|>Hi<|user_end|><|assistant_start|>"
    enc = get_chat_encoding()
    ids = enc.encode(prompt, allowed_special="all")
    assert ids == render_prompt([user("Hi")])
    out = generate(model, torch.tensor([ids]), 6, temperature=0.0)[0, len(ids):].tolist()
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
    assert r.choices[0].text == enc.decode(out) and r.usage.prompt_tokens == len(ids)


def test_a_base_model_is_refused_with_a_400_and_goes_on_completing():
    engine = Engine(tiny_model(), max_batch=2).start()
    try:
        with serving_in_thread(engine, "base") as base:
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
            with pytest.raises(BadRequestError) as info:
                client.chat.completions.create(model="base", messages=[user("hi")])
            error = info.value.body
            assert error["param"] == "model" and "not a chat model" in error["message"]
            assert client.completions.create(model="base", prompt="hi", max_tokens=2).choices[0].finish_reason
    finally:
        engine.stop()


@pytest.mark.parametrize("body,param", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_messages_get_a_400_naming_the_field_and_the_server_keeps_serving(url, client, body, param):
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    r = client.chat.completions.create(model="tiny", messages=[user("ok")], max_tokens=2)
    assert r.choices[0].finish_reason == "length"


def test_the_openai_client_raises_on_bad_messages_naming_the_message(client):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[user("a"), {"role": "tool", "content": "b"}])
    assert info.value.body["param"] == "messages[1].role" and "'tool'" in info.value.body["message"]


def test_chat_and_completion_requests_at_once_each_get_their_own_answer(client, model):
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        if i % 2:
            results[i] = client.chat.completions.create(model="tiny", messages=MESSAGES[: 2 + i % 4 // 2 * 2],
                                                        temperature=0, max_tokens=20).choices[0].message.content
        else:
            results[i] = client.completions.create(model="tiny", prompt="Once upon a time", temperature=0,
                                                   max_tokens=20).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    ids = get_chat_encoding().encode("Once upon a time")
    out = generate(model, torch.tensor([ids]), 20, temperature=0.0, stop_token=EOT_TOKEN)[0, len(ids):].tolist()
    plain = get_chat_encoding().decode([t for t in out if t != EOT_TOKEN])
    want = {i: greedy_reply(model, MESSAGES[: 2 + i % 4 // 2 * 2], 20)[0] if i % 2 else plain for i in range(6)}
    assert results == want
