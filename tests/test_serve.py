"""`gptscratch serve`: the batched engine, the OpenAI API through the real `openai` client, bad input, and
the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from openai import APIStatusError, OpenAI

from gptscratch.generate import generate
from gptscratch.model import GPT, GPTConfig
from gptscratch.serve import serving_in_thread
from gptscratch.serve.engine import Engine, QueueFull, Request, Sampling, run_until_done
from gptscratch.tokenizer import EOT_TOKEN, get_encoding

ENC = get_encoding()


def tiny_model(**options) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=1024, n_layer=2, n_head=2, n_embd=32, **options)).eval()
    for p in model.parameters():  # a random init this wide picks varied tokens; 0.02 would repeat one
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model, max_batch=4, max_queue=16).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def url(engine):
    with serving_in_thread(engine, "tiny") as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def greedy(model: GPT, prompt: str, n: int) -> str:
    ids = ENC.encode(prompt, allowed_special={"<|endoftext|>"})
    out = generate(model, torch.tensor([ids]), n, temperature=0.0, stop_token=EOT_TOKEN)[0, len(ids):].tolist()
    return ENC.decode([t for t in out if t != EOT_TOKEN])


PROMPTS = ["Hello, I'm a language model,", "The", "Once upon a time, in a land far", "import numpy as"]


# --- the engine ------------------------------------------------------------------------------------


def collect(requests: list[Request]) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    for r in requests:
        def on_event(ev, tokens=tokens):
            tokens.setdefault(ev.index, []).extend(ev.tokens)
        r.on_event = on_event
    return tokens


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


# --- the API through the openai client -------------------------------------------------------------


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
]


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


# --- the command -----------------------------------------------------------------------------------


def test_cli_serve_answers_as_sample_does_and_binds_loopback(tmp_path, model):
    from gptscratch.cli import build_parser
    from gptscratch.hf import save_hf

    assert build_parser().parse_args(["serve", "--hf", "x"]).host == "127.0.0.1"
    hf_dir = tmp_path / "tiny-hf"
    save_hf(model, hf_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prompt = "Hello, I'm a language model,"
    sample = subprocess.run([sys.executable, "-m", "gptscratch", "sample", "--hf", str(hf_dir), "--prompt", prompt,
                             "--max-new-tokens", "12", "--temperature", "0"], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "gptscratch", "serve", "--hf", str(hf_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny-hf at http://127.0.0.1:"), line + proc.stderr.read()
        base = line.split(" at ")[1].split(" ")[0]
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        text = client.completions.create(model="tiny-hf", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sample.stdout == prompt + text + "\n"


def test_cli_serve_without_the_extra_says_which(monkeypatch, capsys):
    from gptscratch.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve", "--hf", "gpt2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[serve]" in err and "uvicorn" in err


# --- the page in a real browser --------------------------------------------------------------------


def browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.mark.skipif(browser_paths() is None, reason="no Chromium and chromedriver on this machine (.ci/run "
                    "installs Debian's chromium and chromium-driver where apt can)")
def test_the_page_streams_a_completion_in_headless_chromium(url, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("tiny"))
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("<b>not bold</b> Once upon a time")
        max_tokens = driver.find_element(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("24")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "generate").text == "Generate"
                   and d.find_element(By.ID, "completion").text)
        assert "tokens/s" in driver.find_element(By.ID, "stats").text
        assert not driver.find_element(By.ID, "key-box").is_displayed()  # this server asks for no key
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "shown-prompt").text.startswith("<b>not bold</b>")  # text, not HTML
        assert not driver.find_elements(By.CSS_SELECTOR, "#output b")
        shot = Path(tmp_path) / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
    finally:
        driver.quit()


def test_a_served_checkpoint_is_named_after_its_run():
    from gptscratch.cli import build_parser
    from gptscratch.hf.pretrained import model_name

    run = Path(__file__).parent / "fixtures" / "ckpt_1ae9fdd" / "run"
    step = sorted((run / "checkpoints").iterdir())[-1]
    for path in (run, run / "checkpoints", step):
        assert model_name(build_parser().parse_args(["serve", "--ckpt", str(path)])) == "run"
    assert model_name(build_parser().parse_args(["serve", "--hf", "gpt2-medium"])) == "gpt2-medium"
