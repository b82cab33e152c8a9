"""serve/api.py: the OpenAI API through the real `openai` client and raw HTTP, bad and hostile input, limits.

lm-evaluation-harness against `gptscratch serve`, offline: the real `lm_eval` package, its `local-completions`
model on our server with the server's own tokenizer routes, gives what its `hf` backend gives on the export.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import torch
from openai import APIError, APIStatusError, OpenAI

from gptscratch.generate import generate
from gptscratch.hf import save_hf
from gptscratch.model import GPT, GPTConfig
from gptscratch.serve import Limits, serving_in_thread
from gptscratch.serve.engine import Choice, Engine, Request, Sampling
from gptscratch.tokenizer import get_encoding
from tests.helpers import collect, greedy, run_until_done

ENC = get_encoding()
PROMPTS = ["Hello, I'm a language model,", "The", "Once upon a time, in a land far", "import numpy as"]
BAD = [
    (b"{not json", 400, None),
    (json.dumps([1, 2]).encode(), 400, None),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "other", "prompt": "x"}, 404, "model"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "prompt": "x", "wat": 1}, 400, "wat"),
    ({"model": "tiny", "prompt": "hi " * 1100}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 1024}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": [[1, 2, 99999]]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x", "n": 50}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "logprobs": True}, 400, "logprobs"),
    (b'{"model": "tiny", "prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, None),
    (b'{"model": "tiny", "prompt": "x", "seed": ' + b"9" * 5000 + b"}", 400, None),
    (b'{"model": "tiny", "prompt": "a\\ud800b"}', 400, "prompt"),
    (b'{"model": "tiny", "prompt": "x", "stop": ["\\udfff"]}', 400, "stop"),
    (b'{"model": "\\ud800", "prompt": "x"}', 400, "model"),
]
HOSTILE = [{"temperature": 1e-300}, {"temperature": 1e-40, "top_k": 5}, {"temperature": 5e-324},
           {"top_p": 1e-300}, {"top_p": 5e-324, "top_k": 5}]


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def padded_model() -> GPT:
    """vocab_size 50304, as nanoGPT trains GPT-2: 47 rows the tokenizer has no token for, made to win every pick
    (every position's final hidden state is all ones, and so are those rows alone)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[50257:] = 1.0
    return model


def raw_connection(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(20)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_plain_completion_equals_the_library(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10, temperature=0)
    assert r.choices[0].text == greedy(model, PROMPTS[0], 10)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(ENC.encode(PROMPTS[0]))
    assert r.usage.completion_tokens == len(ENC.encode(r.choices[0].text))
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_streamed_equals_unstreamed(client, url):
    kwargs = dict(model="tiny", prompt=PROMPTS[1], max_tokens=10, temperature=0.9, seed=11)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason is not None
    with httpx.stream("POST", f"{url}/v1/completions", json={**kwargs, "stream": True}, timeout=60) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_n_choices_and_echo_logprobs_score_the_prompt(client, model):
    r = client.completions.create(model="tiny", prompt=[PROMPTS[0], PROMPTS[1]], max_tokens=4, n=2, seed=3,
                                  echo=True, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text != r.choices[1].text  # two samples, two seeds
    for c in r.choices:
        prompt = PROMPTS[c.index // 2]
        assert c.text.startswith(prompt)
        ids = ENC.encode(prompt) + ENC.encode(c.text[len(prompt):])
        lp = c.logprobs
        assert "".join(lp.tokens) == c.text and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        # each token's logprob under the model, from one full forward pass
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), -1)
        want = [float(logp[i, t]) for i, t in enumerate(ids[1:])]
        assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
        assert all(len(top) <= 2 for top in lp.top_logprobs[1:])


def test_scoring_only_with_max_tokens_zero(client):
    r = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=0, echo=True, logprobs=0)
    c = r.choices[0]
    assert c.text == PROMPTS[2] and len(c.logprobs.token_logprobs) == len(ENC.encode(PROMPTS[2]))
    assert r.usage.completion_tokens == 0


def test_concurrent_clients_each_get_their_own_answer(client, model):
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = client.completions.create(model="tiny", prompt=PROMPTS[i % 4], max_tokens=8,
                                               temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert {i: results[i] for i in range(8)} == {i: greedy(model, PROMPTS[i % 4], 8) for i in range(8)}


@pytest.mark.parametrize("body,status,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(url, client, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = httpx.post(f"{url}/v1/completions", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].finish_reason


def test_openai_client_raises_on_a_bad_request(client):
    with pytest.raises(APIStatusError) as info:
        client.completions.create(model="tiny", prompt="x", temperature=-1)
    assert info.value.status_code == 400 and "temperature" in str(info.value)


def test_a_disconnected_stream_frees_its_row(url, engine):
    body = {"model": "tiny", "prompt": "<|endoftext|>", "max_tokens": 1000, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
        events = resp.iter_lines()
        assert next(e for e in events if e.startswith("data: "))
        started = engine.steps
    deadline = time.monotonic() + 30
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats()["running"] == 0
    assert engine.steps - started < 900  # dropped part way, not decoded to the end


def test_full_queue_gets_429_never_a_hang(model):
    engine = Engine(model, max_batch=1, max_queue=1)  # not started: the first request waits in the queue
    with serving_in_thread(engine, "tiny") as base:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 3}
        first: dict = {}
        waiter = threading.Thread(target=lambda: first.update(r=httpx.post(f"{base}/v1/completions", json=body,
                                                                              timeout=60)))
        waiter.start()
        deadline = time.monotonic() + 30
        while engine.stats()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = httpx.post(f"{base}/v1/completions", json=body, timeout=10)
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
        engine.start()
        waiter.join(timeout=60)
        engine.stop()
    assert first["r"].status_code == 200


def test_api_key_and_body_cap(model):
    engine = Engine(model, max_batch=2).start()
    try:
        with serving_in_thread(engine, "tiny", api_key="s3cret", max_body=2000) as base:
            body = {"model": "tiny", "prompt": "a", "max_tokens": 2}
            assert httpx.post(f"{base}/v1/completions", json=body).status_code == 401
            wrong = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
            ok = OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
            assert ok.completions.create(**body).choices[0].finish_reason
            big = httpx.post(f"{base}/v1/completions", json={**body, "prompt": "x" * 5000},
                             headers={"Authorization": "Bearer s3cret"})
            assert big.status_code == 413
            assert httpx.get(f"{base}/health").json()["status"] == "ok"  # open: a load balancer's probe
    finally:
        engine.stop()


def test_a_disconnected_non_streaming_client_frees_its_row_within_a_few_steps(url, engine):
    body = json.dumps({"model": "tiny", "prompt": "<|endoftext|>", "max_tokens": 1000, "temperature": 1.0}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(body), body))
        wait_until(lambda: engine.stats()["running"] == 1)
        assert engine.stats()["running"] == 1
        closed_at = engine.steps
    wait_until(lambda: engine.stats()["running"] == 0)
    assert engine.stats()["running"] == 0
    assert engine.steps - closed_at < 100  # 1000 tokens were asked for


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("sampling", HOSTILE, ids=[json.dumps(h) for h in HOSTILE])
def test_vanishing_temperature_or_top_p_is_greedy_and_the_server_keeps_serving(client, model, sampling, stream):
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, stream=stream,
                                  extra_body=sampling)  # top_k is no argument of the client's
    text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
    assert text == greedy(model, PROMPTS[0], 8)
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2, temperature=1).choices[0].finish_reason


def test_a_model_with_more_rows_than_the_tokenizer_serves_only_ids_it_has():
    model = padded_model()
    with torch.no_grad():
        assert int(model(torch.tensor([[1]]))[0][0, -1].argmax()) >= 50257  # unmasked, a padded id would win
    engine = Engine(model, max_batch=4)
    requests = [Request([1, 2], Sampling(max_tokens=12, temperature=t, seed=1), first_index=i)
                for i, t in enumerate((0.0, 1.0))]
    tokens = collect(requests)
    try:
        run_until_done(engine, requests)
        with serving_in_thread(engine, "padded") as base:
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
            r = client.completions.create(model="padded", prompt="Hello", max_tokens=12, logprobs=3, seed=1)
            assert r.usage.completion_tokens == 12 and "".join(r.choices[0].logprobs.tokens) == r.choices[0].text
            bad = httpx.post(f"{base}/v1/completions", json={"model": "padded", "prompt": [50300]})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
            assert httpx.get(f"{base}/health").json()["status"] == "ok"
    finally:
        engine.stop()
    assert [len(t) for t in tokens.values()] == [12, 12] and max(max(t) for t in tokens.values()) < 50257


def test_a_request_that_fails_in_the_engine_gets_a_500_and_every_other_row_keeps_decoding(model, monkeypatch):
    """A seed of 1000 + k makes a request fail at its k-th token (k = 0: in its prefill), inside the engine."""
    engine = Engine(model, max_batch=4).start()
    long = Request(ENC.encode(PROMPTS[2]), Sampling(max_tokens=1000, temperature=0.0))
    got: list[int] = []
    long.on_event = lambda ev: got.extend(ev.tokens)
    beside: list[bool] = []  # whether the long request was decoding when each failure happened
    real_add = Choice.add

    def add(self, token, *args):
        seed = self.request.sampling.seed
        if seed is not None and seed >= 1000 and len(self.tokens) == seed - 1000:
            beside.append(any(c.request is long for c in engine.running))
            raise RuntimeError("injected")
        return real_add(self, token, *args)

    monkeypatch.setattr(Choice, "add", add)
    try:
        with serving_in_thread(engine, "tiny") as base:
            engine.submit(long)
            wait_until(lambda: len(got) > 0)
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
            for fail_at in (0, 3):
                body = {"model": "tiny", "prompt": "a", "max_tokens": 8, "seed": 1000 + fail_at}
                whole = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
                assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
                with pytest.raises(APIError, match="RuntimeError: injected"):
                    list(client.completions.create(stream=True, **body))
            streamed = httpx.post(f"{base}/v1/completions", json={**body, "seed": 1000, "stream": True}, timeout=60)
            assert streamed.status_code == 500 and "injected" in streamed.json()["error"]["message"]
            assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].finish_reason
            assert httpx.get(f"{base}/health").json()["status"] == "ok"
            decoded_while_failing = len(got)
            long.cancelled = True
            wait_until(lambda: engine.stats()["running"] == 0)
    finally:
        engine.stop()
    assert len(beside) == 5 and all(beside)
    assert len(got) >= decoded_while_failing > 0
    prompt = torch.tensor([ENC.encode(PROMPTS[2])])
    assert got == generate(model, prompt, len(got), temperature=0.0)[0, prompt.size(1):].tolist()


def test_a_post_whose_body_is_not_declared_json_gets_415(url):
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1}).encode()
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        resp = httpx.post(f"{url}/v1/completions", content=body, headers=headers)
        assert resp.status_code == 415 and "application/json" in resp.json()["error"]["message"]
    ok = httpx.post(f"{url}/v1/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_a_foreign_origin_is_refused_and_the_pages_own_is_served(url):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    port = url.rsplit(":", 1)[1]
    for origin in ("http://evil.example", f"http://evil.example:{port}", "http://127.0.0.1:1",
                   f"http://localhost:{port}", "null"):
        for resp in (httpx.post(f"{url}/v1/completions", json=body, headers={"Origin": origin}),
                     httpx.get(f"{url}/health", headers={"Origin": origin})):
            assert resp.status_code == 403, origin
            assert resp.json()["error"]["message"]
    own = {"Origin": f"http://127.0.0.1:{port}"}
    assert httpx.post(f"{url}/v1/completions", json=body, headers=own).status_code == 200
    assert httpx.get(f"{url}/health", headers=own).status_code == 200


def test_a_loopback_server_answers_only_to_loopback_host_names(url, engine):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:1",
                 "evil@127.0.0.1"):
        headers = {"Host": host}
        for resp in (httpx.get(f"{url}/health", headers=headers), httpx.get(f"{url}/", headers=headers),
                     httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}, headers=headers)):
            assert resp.status_code == 400, host
            assert "localhost" in resp.json()["error"]["message"]
    for host in ("localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:1234", "[::1]:8000", "LOCALHOST"):
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200, host
    # bound beyond loopback, the server may go by any name (an --api-key guards it)
    with serving_in_thread(engine, "tiny", host="0.0.0.0") as base:
        port = base.rsplit(":", 1)[1]
        resp = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"my-machine.lan:{port}"})
        assert resp.status_code == 200


def test_an_unexpected_failure_is_a_500_in_openais_shape_and_the_server_goes_on(url, monkeypatch):
    from gptscratch.serve import api

    def boom(body, server):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(api, "parse_completion", boom)
    resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "server_error"
    monkeypatch.undo()
    ok = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200


def test_a_client_that_dribbles_its_request_is_answered_408_and_disconnected(engine):
    with serving_in_thread(engine, "tiny", limits=Limits(request_timeout=0.5)) as base:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for sent in (head, head + b'Content-Length: 100\r\n\r\n{"model": "ti'):
            with raw_connection(base) as sock:
                sock.sendall(sent)
                reply = read_all(sock)  # today: held for as long as the client likes
            status, _, body = reply.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 408") and "did not arrive" in json.loads(body)["error"]["message"]
        with raw_connection(base) as sock:  # a connection that sends nothing is closed without a word
            assert read_all(sock) == b""
        assert httpx.get(f"{base}/health").status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(engine):
    with serving_in_thread(engine, "tiny", limits=Limits(keep_alive_timeout=0.3)) as base:
        with raw_connection(base) as sock:
            sock.settimeout(3)  # well under uvicorn's own default of 5 s
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            reply = read_all(sock)  # the answer, then the close once idle
        assert reply.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in reply


def test_connections_beyond_the_cap_get_a_503_and_are_closed(engine):
    with serving_in_thread(engine, "tiny", limits=Limits(max_connections=3)) as base:
        held = [raw_connection(base) for _ in range(3)]
        try:
            time.sleep(0.2)  # the server has taken all three
            with raw_connection(base) as extra:
                status, _, body = read_all(extra).partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 503") and "--max-connections" in json.loads(body)["error"]["message"]
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{base}/health").status_code == 200


def test_malformed_http_gets_openais_error_shape(url):
    with raw_connection(url) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["message"]




# --- lm-evaluation-harness against the server -------------------------------------------------------


QUESTIONS = [("What do cows drink?", ["milk", "water", "oil", "sand"], 1),
             ("Which is a colour?", ["blue", "seven", "running", "loud"], 0),
             ("Where do fish live?", ["trees", "deserts", "water", "clouds"], 2),
             ("What is two plus two?", ["three", "five", "six", "four"], 3),
             ("Which animal barks?", ["cat", "dog", "fish", "bird"], 1),
             ("What falls from clouds?", ["rain", "rocks", "cars", "bread"], 0)]
STORIES = ["The cat sat on the", "She opened the door and saw a", "He counted one, two, three, four,",
           "The sun rises in the"]
ENDINGS = [" mat", " dog", " five", " east"]


@pytest.fixture
def tasks(tmp_path):
    """Two tasks over local jsonl files: ARC-style multiple choice and LAMBADA-style last-word prediction."""
    mc, lm = tmp_path / "mc.jsonl", tmp_path / "lm.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    pairs = zip(STORIES, ENDINGS, strict=True)
    lm.write_text("".join(json.dumps({"context": s, "ending": e}) + "\n" for s, e in pairs))
    (tmp_path / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    (tmp_path / "tiny_lambada.yaml").write_text(f"""task: tiny_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {lm}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{ending}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
""")
    return tmp_path


def evaluate(model: str, model_args: str, include: str) -> dict:
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=["tiny_mc", "tiny_lambada"],
                          task_manager=TaskManager(include_path=include), log_samples=True, random_seed=0,
                          numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    # every request's loglikelihood, in document order (a multiple-choice document sends one per choice)
    per_request = {task: [float(r[0][0]) for s in sorted(samples, key=lambda s: s["doc_id"]) for r in s["resps"]]
                   for task, samples in out["samples"].items()}
    return {"results": out["results"], "loglikelihoods": per_request}


def test_lm_eval_local_completions_on_our_server_equals_its_hf_backend_on_the_export(tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    export = save_hf(model, tmp_path / "export")
    engine = Engine(model, max_batch=4).start()
    try:
        with serving_in_thread(engine, "tiny") as base:
            info = httpx.get(f"{base}/tokenizer_info").json()
            assert info["eos_token"] == "<|endoftext|>" and info["max_model_len"] == 64
            served = evaluate("local-completions", f"model=tiny,base_url={base}/v1/completions,max_length=64,"
                              "batch_size=4,tokenizer_backend=auto", str(tasks))
    finally:
        engine.stop()
    hf = evaluate("hf", f"pretrained={export},device=cpu,dtype=float32,batch_size=4", str(tasks))
    for task in ("tiny_mc", "tiny_lambada"):
        assert served["loglikelihoods"][task] == pytest.approx(hf["loglikelihoods"][task], abs=1e-4), task
        assert served["results"][task]["acc,none"] == hf["results"][task]["acc,none"]
    assert served["results"]["tiny_lambada"]["perplexity,none"] == pytest.approx(
        hf["results"]["tiny_lambada"]["perplexity,none"], rel=1e-4)


def test_tokenize_and_detokenize_round_trip_and_refuse_bad_input(url, engine):
    text = "héllo <|endoftext|> 123  spaces"
    got = httpx.post(f"{url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert got["tokens"] == engine.enc.encode(text, allowed_special="all") and got["count"] == len(got["tokens"])
    assert httpx.post(f"{url}/detokenize", json={"tokens": got["tokens"]}).json() == {"prompt": text}
    bad = (("tokenize", {"prompt": 5}, "prompt"), ("tokenize", {}, "prompt"),
           ("detokenize", {"tokens": [50257]}, "tokens"), ("detokenize", {"tokens": "abc"}, "tokens"))
    for route, body, param in bad:
        r = httpx.post(f"{url}/{route}", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (route, body, r.text)
