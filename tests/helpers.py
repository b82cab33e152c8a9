"""What several test files share: shard writing, metrics reading, running the command, the halt hook's wait,
DDP's equivalence check, and the serving tests' model and engine driver. Fixtures live in conftest.py; a test
file imports helpers from here, never from another test file."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gptscratch import testing
from gptscratch.chat import ASSISTANT_END, ASSISTANT_START
from gptscratch.cli import main
from gptscratch.data import prepare as prep
from gptscratch.generate import generate
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, get_encoding

TINY = ["--preset", "tiny", "--device", "cpu"]  # the default batch order: rows; float32, as the preset pins
TINY_FLOAT32 = [*TINY, "--dtype", "float32"]  # pinned again where exactness is promised


def write_llmc_shard(path: Path, tokens, magic: int = 20240520, version: int = 1, count: int | None = None) -> None:
    """An llm.c shard written by hand (a 256-int32 header, then uint16 tokens), independently of data.shards;
    `magic`, `version` and `count` may lie, to make damaged shards."""
    tokens = np.asarray(tokens)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, version, len(tokens) if count is None else count)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def gptscratch(*args, env=None, **kw) -> subprocess.Popen:
    """`python -m gptscratch ARGS` in a process of its own, its output piped."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gptscratch", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def halted(p: subprocess.Popen) -> str:
    """Read p's stderr until p halts at its test hook (testing.halt); what it printed until then.

    The process stays halted until killed, so whatever happens next happens at exactly that moment,
    however slowly a loaded machine runs it; no sleep or poll decides it.
    """
    seen = []
    watchdog = threading.Timer(600, p.kill)  # a process that hangs before the hook fails the test, not CI
    watchdog.start()
    try:
        for line in p.stderr:
            seen.append(line)
            if testing.HALTED in line:
                return "".join(seen)
    finally:
        watchdog.cancel()
    p.wait()
    raise AssertionError(f"exit {p.returncode} before the test hook:\n" + "".join(seen)[-3000:])


def assert_ddp_equals_accumulation(common: list[str], tmp_path: Path) -> None:
    """2 torchrun processes (gloo) train as 1 process with 2 accumulation steps: the same losses and weights."""
    single = gptscratch("train", *common, "--out", str(tmp_path / "one"))
    assert single.wait(timeout=300) == 0, single.stderr.read()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun binds its own free port and keeps it; a port picked here and released would
    # be free to another process before torchrun binds it (a test that failed under load)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
         "train", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from gptscratch.train.checkpoint import load_model

    a = load_model(tmp_path / "one").state_dict()
    b = load_model(tmp_path / "two").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert train_losses(tmp_path / "one").keys() == train_losses(tmp_path / "two").keys()
    for s, loss in train_losses(tmp_path / "one").items():
        assert train_losses(tmp_path / "two")[s] == pytest.approx(loss, abs=1e-5)


def tiny_model(**options) -> GPT:
    """The serving tests' model: tiny, with weights spread wide enough that greedy decoding varies."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=1024, n_layer=2, n_head=2, n_embd=32, **options)).eval()
    for p in model.parameters():  # a random init this wide picks varied tokens; 0.02 would repeat one
        torch.nn.init.normal_(p, std=0.3)
    return model


def run_until_done(engine, requests: list, timeout: float = 600.0) -> None:
    """Submit and wait: for tests that drive the engine without HTTP. An engine not started
    yet is started once everything is submitted, so the requests are admitted together."""
    done: queue.SimpleQueue = queue.SimpleQueue()
    remaining = {id(r): r.n for r in requests}

    def watch(request, inner: Callable) -> Callable:
        def on_event(event) -> None:
            inner(event)
            if event.finish_reason is not None:
                done.put(id(request))
        return on_event

    for r in requests:
        r.on_event = watch(r, r.on_event)
        engine.submit(r)
    if engine.thread is None:
        engine.start()
    total = sum(remaining.values())
    deadline = time.monotonic() + timeout
    for _ in range(total):
        done.get(timeout=max(0.0, deadline - time.monotonic()))


# --- prepared data: documents, and shards read back as llm.c reads them -------------------------------

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
         "Ünïcödé", "naïve", "café", "東京", "😀", "<|endoftext|>", "don't", "we'll", "1234", "3.14", "\t",
         "tabs\n", "newline\n\n", "  "]


def make_docs(n: int, seed: int = 0, max_words: int = 400) -> list[str]:
    """Random documents with multi-byte characters, a literal '<|endoftext|>', long and empty ones."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]
    docs[3] = ""  # empty documents are dropped
    docs[5] = " \n "
    docs[7] = docs[7] * 6  # longer than a shard
    return docs


def expected_stream(docs: list[str]) -> np.ndarray:
    enc = get_encoding()
    out: list[int] = []
    for doc in docs:
        if doc.strip():
            out.append(EOT_TOKEN)
            out.extend(enc.encode_ordinary(doc))
    return np.array(out, dtype=np.uint16)


def read_raw(path: Path) -> np.ndarray:
    """A shard read as llm.c reads it: 256 int32 header, then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1
    tokens = np.fromfile(path, dtype="<u2", offset=1024)
    assert len(tokens) == header[2]
    return tokens


def stream_of(out: Path, manifest: dict, split: str | None = None) -> np.ndarray:
    parts = [read_raw(out / s["file"]) for s in manifest["shards"] if split in (None, s["split"])]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def check_manifest_matches_files(out: Path, manifest: dict) -> None:
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for s in manifest["shards"]:
        data = (out / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        tokens = read_raw(out / s["file"])
        assert len(tokens) == s["tokens"]
        assert int(np.count_nonzero(tokens == EOT_TOKEN)) == s["documents"]
        assert f"_{s['split']}_" in s["file"]
    for split in ("val", "train"):
        mine = [s for s in manifest["shards"] if s["split"] == split]
        assert manifest["splits"][split]["tokens"] == sum(s["tokens"] for s in mine)
    assert manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"])
    assert not list(out.glob("*.tmp")) and not (out / prep.STATE_FILE).exists()


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["prepare", *argv, "--quiet", "--workers", "1"])
    err = capsys.readouterr().err.strip()
    return code, err


# --- serving ----------------------------------------------------------------------------------------


def greedy(model: GPT, prompt: str, n: int) -> str:
    ids = get_encoding().encode(prompt, allowed_special={"<|endoftext|>"})
    out = generate(model, torch.tensor([ids]), n, temperature=0.0, stop_token=EOT_TOKEN)[0, len(ids):].tolist()
    return get_encoding().decode([t for t in out if t != EOT_TOKEN])


def collect(requests: list) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    for r in requests:
        def on_event(ev, tokens=tokens):
            tokens.setdefault(ev.index, []).extend(ev.tokens)
        r.on_event = on_event
    return tokens


# --- torchrun -----------------------------------------------------------------------------------------

QUIET = ["--num-samples", "1", "--sample-tokens", "1"]


def torchrun(*args: str, env: dict | None = None) -> subprocess.Popen:
    """2 processes of `gptscratch ARGS` under torchrun; --standalone: torchrun picks and keeps its own port."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
         *args], env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    """Running, not yet a zombie (a zombie holds no lock)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- CORE --------------------------------------------------------------------------------------------


def write_bundle(root: Path, tasks, rows_of: dict[str, list[dict]]) -> Path:
    """A CORE eval bundle as nanochat's unpacks: core.yaml, eval_meta_data.csv and a jsonl per task, where each
    task is (label, icl_task_type, shots, continuation_delimiter or None, _, random baseline)."""
    (root / "eval_data" / "tasks").mkdir(parents=True)
    entries, meta = [], [("Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline")]
    for label, kind, shots, delimiter, _, baseline in tasks:
        uri = f"tasks/{label}.jsonl"
        (root / "eval_data" / uri).write_text("".join(json.dumps(r) + "\n" for r in rows_of[label]))
        entry = {"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": kind}
        if delimiter is not None:
            entry["continuation_delimiter"] = delimiter
        entries.append(entry)
        meta.append((label, "test", kind, shots, len(rows_of[label]), baseline))
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}))
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        csv.writer(f).writerows(meta)
    return root


# --- conversations -------------------------------------------------------------------------------


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


NOUNS = ["apple", "river", "candle", "mountain", "violin", "garden", "rocket", "pebble", "lantern", "ocean",
         "feather", "castle"]
ANSWERS = ["seven", "purple", "Tuesday", "copper", "north", "zebra", "eleven", "silver", "Friday", "orange", "west",
           "tiger"]
QUESTIONS = ["What is the secret word for {}?", "Tell me the code for {}.", "{}: which word?"]


def rule_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """One exchange, or (a third of them) two."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = []
        for _ in range(1 + (rng.random() < 1 / 3)):
            i = rng.randrange(len(NOUNS))
            turns += [user(rng.choice(QUESTIONS).format(NOUNS[i])), assistant(ANSWERS[i])]
        out.append(turns)
    return out


def varied_conversations(n: int) -> list[list[dict]]:
    """Multi-turn, some with a system message; every message numbered, so no two are alike."""
    out = []
    for i in range(n):
        turns = [user(f"question {i}.{t}: " + "word " * (i % 7)) if t % 2 == 0 else assistant(f"answer {i}.{t} ok")
                 for t in range(2 * (1 + i % 3))]
        out.append(([{"role": "system", "content": f"system {i}"}] if i % 4 == 0 else []) + turns)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps({"messages": r})) + "\n" for r in rows))
    return path


def read_stream(data: Path, split: str | None = None) -> np.ndarray:
    manifest = json.loads((data / "manifest.json").read_text())
    return np.concatenate([np.fromfile(data / s["file"], dtype="<u2", offset=1024) for s in manifest["shards"]
                           if split is None or s["split"] == split]).astype(np.int64)


def hand_mask(ids: np.ndarray) -> np.ndarray:
    """Which ids the assistant wrote: those from just after <|assistant_start|> through <|assistant_end|>."""
    out, inside = [], False
    for t in ids.tolist():
        if t == ASSISTANT_START:
            out.append(False)
            inside = True
        elif t == ASSISTANT_END:
            out.append(inside)
            inside = False
        else:
            inside = inside and t < EOT_TOKEN
            out.append(inside)
    return np.array(out)
