"""lm-evaluation-harness against `gptscratch serve`, offline: the real `lm_eval` package, its `local-completions`
model on our server with the server's own tokenizer routes, gives what its `hf` backend gives on the export."""

import json

import pytest
import torch

from gptscratch.hf import save_hf
from gptscratch.model import GPT, GPTConfig
from gptscratch.serve import serving_in_thread
from gptscratch.serve.engine import Engine

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

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


def test_tokenize_and_detokenize_round_trip_and_refuse_bad_input():
    torch.manual_seed(0)
    engine = Engine(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32)).eval(), max_batch=2).start()
    try:
        with serving_in_thread(engine, "tiny") as base:
            text = "héllo <|endoftext|> 123  spaces"
            got = httpx.post(f"{base}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
            assert got["tokens"] == engine.enc.encode(text, allowed_special="all") and got["count"] == len(
                got["tokens"])
            assert httpx.post(f"{base}/detokenize", json={"tokens": got["tokens"]}).json() == {"prompt": text}
            for route, body, param in (("tokenize", {"prompt": 5}, "prompt"), ("tokenize", {}, "prompt"),
                                       ("detokenize", {"tokens": [50257]}, "tokens"),
                                       ("detokenize", {"tokens": "abc"}, "tokens")):
                r = httpx.post(f"{base}/{route}", json=body)
                assert r.status_code == 400 and r.json()["error"]["param"] == param, (route, body, r.text)
    finally:
        engine.stop()
