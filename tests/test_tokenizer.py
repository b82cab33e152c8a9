"""tokenizer.py: GPT-2's BPE built offline, equal to tiktoken's own gpt2 encoding."""

import hashlib
import json
import socket

import pytest
import tiktoken

from gptscratch import tokenizer


def test_known_ids():
    enc = tokenizer.get_encoding()
    assert enc.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.eot_token == 50256 == tokenizer.EOT_TOKEN
    assert enc.n_vocab == 50257


def test_unicode_round_trip():
    enc = tokenizer.get_encoding()
    text = "naïve café — 日本語のテキスト, emoji 🤖🚀, Ελληνικά, עברית, tabs\tand\nnewlines  "
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_no_network_and_no_cache_writes(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tokenizer.get_encoding.cache_clear()
    enc = tokenizer.get_encoding()
    assert enc.encode("offline") == enc.encode_ordinary("offline")
    assert list(tmp_path.iterdir()) == []  # tiktoken's data-gym-cache was not written


def test_same_merges_as_tiktoken_gpt2_definition():
    """Our Encoding reproduces tiktoken's own gpt2 encoding on text the merges must get right."""
    enc = tokenizer.get_encoding()
    text = "  The quick brown fox's 12345 jumps!!! over\n\n the lazy dog\u00a0\u200b."
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert isinstance(enc, tiktoken.Encoding)
    assert max(ids) < 50257


def test_bad_vocab_file_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "vocab.bpe").write_text("not the real file")
    (bad / "encoder.json").write_text("{}")

    class Files:
        def __truediv__(self, name):
            return bad

    monkeypatch.setattr(tokenizer.importlib.resources, "files", lambda pkg: Files())
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(tokenizer.UserError, match="vocab.bpe"):
            tokenizer.get_encoding()
    finally:
        tokenizer.get_encoding.cache_clear()


# --- your own tokenizer, end to end: prepare, train, and every command that reads a model --------------------

OWN_VOCAB = 400
PHRASES = ["the cat sat on the mat", "naïve café, déjà vu", "日本語のテキスト", "emoji 😀 🚀", "x = 12345 + 678",
           "    indented\tline", "Hello, I'm a language model,"]


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A tokenizer trained on a small corpus, that corpus prepared with it, and a tiny model trained on it."""
    pytest.importorskip("rustbpe")
    import random

    from gptscratch import bpe
    from gptscratch.cli import main

    root = tmp_path_factory.mktemp("own")
    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "mon", "sha", "el", "qu", "über", "né", "日本", "語", "😀", "12", "345", "\t"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    docs = [" ".join(rng.choice(PHRASES + words) for _ in range(rng.randint(3, 30))) for _ in range(300)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    enc, manifest = bpe.train(str(root / "corpus.jsonl"), OWN_VOCAB, progress=False)
    bpe.save(enc, manifest, root / "tok")
    assert main(["prepare", str(root / "corpus.jsonl"), "--out", str(root / "data"), "--tokenizer", str(root / "tok"),
                 "--quiet", "--workers", "2"]) == 0
    assert main(["train", "--preset", "tiny", "--device", "cpu", "--data", str(root / "data"), "--out",
                 str(root / "run"), "--seq-len", "16", "--batch-size", "4", "--max-steps", "3", "--eval-interval", "3",
                 "--eval-batches", "1", "--sample-tokens", "4", "--hellaswag-interval", "0"]) == 0
    return root, tokenizer.load_trained(root / "tok"), docs


def test_prepare_with_your_tokenizer_writes_its_ids_and_a_copy_named_by_hash(own):
    from tests.helpers import read_stream

    root, tok, docs = own
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"] == {"name": "bpe", "vocab_size": OWN_VOCAB, "eot_token": OWN_VOCAB - 5,
                                     "ranks_sha256": hashlib.sha256((root / "tok" / "ranks.tiktoken").read_bytes())
                                     .hexdigest()}
    for name in ("ranks.tiktoken", "manifest.json"):
        assert (root / "data" / "tokenizer" / name).read_bytes() == (root / "tok" / name).read_bytes()
    stream = read_stream(root / "data")
    # every document, <|endoftext|> first, encoded by tiktoken from the trained ranks
    want = [i for d in docs for i in [tok.eot, *tiktoken.Encoding(
        "ref", pat_str=tok.enc._pat_str, mergeable_ranks=tok.enc._mergeable_ranks, special_tokens={}).encode(d)]]
    assert stream.tolist() == want


def test_training_takes_the_vocabulary_from_the_data_and_every_checkpoint_carries_the_tokenizer(own):
    from gptscratch.train.checkpoint import list_checkpoints, load_checkpoint

    root, tok, _ = own
    for step in list_checkpoints(root / "run" / "checkpoints"):
        saved = load_checkpoint(step)
        assert saved.model_config.vocab_size == OWN_VOCAB and saved.tokenizer.sha256 == tok.sha256
        assert (step / "tokenizer" / "ranks.tiktoken").read_bytes() == (root / "tok" / "ranks.tiktoken").read_bytes()
        assert json.loads((step / "state.json").read_text())["tokenizer"]["ranks_sha256"] == tok.sha256


def test_sample_decodes_with_the_checkpoints_tokenizer(own, capsys):
    import torch

    from gptscratch.cli import main
    from gptscratch.generate import generate
    from gptscratch.train.checkpoint import load_model

    root, tok, _ = own
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(root / "run"), "--prompt", "naïve café", "--temperature", "0",
                 "--max-new-tokens", "8", "--device", "cpu", "--no-stop"]) == 0
    ids = tok.enc.encode("naïve café")
    out = generate(load_model(root / "run"), torch.tensor([ids]), 8, temperature=0.0)[0, len(ids):].tolist()
    text = b"".join(tok.enc.decode_single_token_bytes(t) for t in out if t != tok.eot).decode("utf-8", "replace")
    assert capsys.readouterr().out == "naïve café" + text + "\n"


def test_eval_loss_counts_bytes_by_the_models_tokenizer(own, capsys):
    from gptscratch.cli import main
    from tests.helpers import read_stream

    root, tok, _ = own
    capsys.readouterr()
    assert main(["eval", "loss", "--ckpt", str(root / "run"), "--data", str(root / "data"), "--seq-len", "16",
                 "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    val = read_stream(root / "data", "val")
    targets = val[1:(len(val) - 1) // 16 * 16 + 1]
    assert result["bytes"] == sum(len(tok.enc.decode_single_token_bytes(t)) for t in targets if t != tok.eot)
    assert 0 < result["bpb"] < 20


def test_hellaswag_and_core_read_their_text_with_the_models_tokenizer(own, tmp_path, capsys):
    from gptscratch.cli import main
    from tests.helpers import write_bundle

    root, _, _ = own
    hs = tmp_path / "hs.jsonl"
    hs.write_text("".join(json.dumps({"ctx": "the cat", "endings": [p, "sat", "日本語", "😀"], "label": i % 4}) + "\n"
                          for i, p in enumerate(PHRASES)))
    # GPT-2's ids for this text reach 50k: a model of 400 rows would fail on the first of them
    assert main(["eval", "hellaswag", "--ckpt", str(root / "run"), "--file", str(hs), "--json", "--device",
                 "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(PHRASES)
    rows = [{"context": f"{p} and", "continuation": " the cat"} for p in PHRASES]
    bundle = write_bundle(tmp_path / "bundle", [("lm", "language_modeling", 0, " ", 0, 0.0)], {"lm": rows})
    assert main(["eval", "core", "--ckpt", str(root / "run"), "--bundle", str(bundle), "--json", "--device",
                 "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == {"lm": len(PHRASES)}


def test_serving_encodes_and_decodes_with_the_models_tokenizer(own):
    import torch

    from gptscratch.generate import generate
    from gptscratch.serve import serving_in_thread
    from gptscratch.serve.engine import Engine
    from gptscratch.train.checkpoint import load_checkpoint

    httpx = pytest.importorskip("httpx")
    root, tok, _ = own
    saved = load_checkpoint(root / "run")
    model = saved.load_model()
    engine = Engine(model, max_batch=2, tokenizer=saved.tokenizer).start()
    try:
        with serving_in_thread(engine, "own") as base:
            got = httpx.post(f"{base}/tokenize", json={"prompt": "naïve café 😀"}).json()
            assert got["tokens"] == tok.enc.encode("naïve café 😀")
            info = httpx.get(f"{base}/tokenizer_info").json()
            assert info["vocab_size"] == OWN_VOCAB and info["eos_token"] == "<|endoftext|>"
            r = httpx.post(f"{base}/v1/completions", json={"model": "own", "prompt": "naïve café", "max_tokens": 6,
                                                           "temperature": 0}).json()
            ids = tok.enc.encode("naïve café")
            out = generate(model, torch.tensor([ids]), 6, temperature=0.0, stop_token=tok.eot)[0, len(ids):].tolist()
            assert r["choices"][0]["text"] == tok.enc.decode([t for t in out if t != tok.eot])
            # a chat request renders with the tokenizer's own chat tokens (it has them from its first step)
            chat = httpx.post(f"{base}/v1/chat/completions", json={
                "model": "own", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
            assert chat["usage"]["prompt_tokens"] == len([tok.eot, tok.user_start, *tok.enc.encode("hi"),
                                                          tok.user_end, tok.assistant_start])
    finally:
        engine.stop()


def test_fine_tuning_from_your_model_keeps_its_tokenizer(own, tmp_path):
    from gptscratch.cli import main
    from gptscratch.train.checkpoint import load_checkpoint

    root, tok, _ = own
    assert main(["train", "--preset", "tiny", "--device", "cpu", "--data", str(root / "data"), "--out",
                 str(tmp_path / "ft"), "--init-from", str(root / "run"), "--seq-len", "16", "--batch-size", "4",
                 "--max-steps", "1", "--eval-interval", "0", "--sample-interval", "0", "--hellaswag-interval",
                 "0"]) == 0
    saved = load_checkpoint(tmp_path / "ft")
    assert saved.tokenizer.sha256 == tok.sha256 and saved.model_config.vocab_size == OWN_VOCAB


def test_data_and_a_model_whose_tokenizers_differ_are_refused_in_one_line(own, tmp_path, capsys):
    from gptscratch.cli import main
    from tests.helpers import write_llmc_shard

    root, _, _ = own
    gpt2_data = tmp_path / "gpt2"
    gpt2_data.mkdir()
    write_llmc_shard(gpt2_data / "t_train_000000.bin", list(range(300)) * 10)
    write_llmc_shard(gpt2_data / "t_val_000000.bin", list(range(300)))
    common = ["--preset", "tiny", "--device", "cpu", "--seq-len", "16", "--batch-size", "4", "--max-steps", "5"]
    for argv in (["eval", "loss", "--ckpt", str(root / "run"), "--data", str(gpt2_data), "--device", "cpu"],
                 ["train", *common, "--data", str(gpt2_data), "--init-from", str(root / "run"), "--out",
                  str(tmp_path / "a")],
                 ["train", *common, "--data", str(gpt2_data), "--resume", str(root / "run"), "--out",
                  str(root / "run")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "ids mean different text" in err, err
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").rglob("step_*"))


def test_a_damaged_or_too_large_tokenizer_is_refused_in_one_line_and_nothing_is_written(own, tmp_path, capsys):
    import shutil

    from gptscratch.cli import main

    root, _, _ = own
    bad = tmp_path / "bad"
    shutil.copytree(root / "tok", bad)
    data = (bad / "ranks.tiktoken").read_bytes()
    (bad / "ranks.tiktoken").write_bytes(data.replace(b" 300\n", b" 301\n", 1))
    big = tmp_path / "big"
    shutil.copytree(root / "tok", big)
    manifest = json.loads((big / "manifest.json").read_text())
    (big / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": 70_000}))
    for directory, words in ((bad, "differs from the manifest"), (big, "exceeds 65,536"),
                             (tmp_path / "none", "not a directory")):
        capsys.readouterr()
        out = tmp_path / f"out-{directory.name}"
        assert main(["prepare", str(root / "corpus.jsonl"), "--out", str(out), "--tokenizer", str(directory),
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert not out.exists()
    # the data's own copy changed after prepare: training on it is refused, naming the copy
    damaged = tmp_path / "data"
    shutil.copytree(root / "data", damaged)
    (damaged / "tokenizer" / "ranks.tiktoken").write_bytes(
        (damaged / "tokenizer" / "ranks.tiktoken").read_bytes() + b"AAAA 999\n")
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--device", "cpu", "--data", str(damaged), "--out",
                 str(tmp_path / "r"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranks.tiktoken" in err, err


def test_conversations_prepare_and_fine_tune_with_your_tokenizers_own_chat_tokens(own, tmp_path, capsys):
    from gptscratch.chat import encode_conversation
    from gptscratch.cli import main
    from gptscratch.repl import reply
    from gptscratch.train.checkpoint import load_checkpoint
    from tests.helpers import read_stream, rule_conversations, write_jsonl

    root, tok, _ = own
    convs = rule_conversations(60)
    assert main(["prepare", str(write_jsonl(tmp_path / "c.jsonl", convs)), "--chat",
                 "--tokenizer", str(root / "tok"), "--out", str(tmp_path / "chat"), "--quiet", "--workers", "1"]) == 0
    want = [i for c in convs for i in encode_conversation(c, tok)[0]]
    assert read_stream(tmp_path / "chat").tolist() == want
    assert {tok.user_start, tok.assistant_end} <= set(want) and max(want) < OWN_VOCAB
    assert json.loads((tmp_path / "chat" / "manifest.json").read_text())["chat"]["tokens"]["<|assistant_end|>"] \
        == OWN_VOCAB - 1
    # SFT from the base model: no new rows, the same tokenizer; its loss over the assistant's tokens
    assert main(["train", "--preset", "sft", "--device", "cpu", "--data", str(tmp_path / "chat"), "--init-from",
                 str(root / "run"), "--out", str(tmp_path / "sft"), "--seq-len", "16", "--batch-size", "4",
                 "--max-steps", "2", "--eval-interval", "2", "--eval-batches", "1", "--sample-interval", "0",
                 "--hellaswag-interval", "0", "--total-batch-tokens", "0"]) == 0
    saved = load_checkpoint(tmp_path / "sft")
    assert saved.model_config.vocab_size == OWN_VOCAB and saved.tokenizer.sha256 == tok.sha256
    capsys.readouterr()
    assert main(["eval", "loss", "--ckpt", str(tmp_path / "sft"), "--data", str(tmp_path / "chat"), "--seq-len",
                 "16", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["chat"] is True
    answer = reply(saved.load_model(), [{"role": "user", "content": "hi"}], 4, tok=saved.tokenizer)
    assert isinstance(answer, str)


def test_an_export_carries_your_tokenizer_for_transformers_and_for_gptscratch(own, tmp_path, capsys):
    import torch

    from gptscratch.cli import main
    from gptscratch.train.checkpoint import load_model

    transformers = pytest.importorskip("transformers")
    root, tok, _ = own
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", str(root / "run"), "--out", str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in [*PHRASES, "  two  spaces\n\n\nand 1234567 😀😀", "<|user_start|>hi<|assistant_end|>"]:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.enc.encode(text, allowed_special="all"), text
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == \
        (OWN_VOCAB, tok.eot, [tok.eot, tok.assistant_end])
    ids = torch.tensor([tok.enc.encode("naïve café 日本語")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ours, _ = load_model(root / "run").eval()(ids)
        assert torch.allclose(hf(ids).logits, ours[..., :OWN_VOCAB], atol=1e-4)
    # gptscratch reads the export back with its tokenizer: as a model to score, and as a source to train from
    capsys.readouterr()
    assert main(["eval", "loss", "--hf", str(out), "--data", str(root / "data"), "--seq-len", "16", "--json",
                 "--device", "cpu"]) == 0
    from_hf = json.loads(capsys.readouterr().out)
    assert main(["eval", "loss", "--ckpt", str(root / "run"), "--data", str(root / "data"), "--seq-len", "16",
                 "--json", "--device", "cpu"]) == 0
    assert from_hf["bpb"] == pytest.approx(json.loads(capsys.readouterr().out)["bpb"], abs=1e-5)
    assert main(["train", "--preset", "tiny", "--device", "cpu", "--data", str(root / "data"), "--out",
                 str(tmp_path / "ft"), "--init-from", str(out), "--seq-len", "16", "--batch-size", "4", "--max-steps",
                 "1", "--eval-interval", "0", "--sample-interval", "0", "--hellaswag-interval", "0"]) == 0
