"""SFT (`--preset sft`): training on the assistant's tokens only, `eval loss` and `gptscratch chat` on
conversations, and the effect: after SFT, greedy replies follow a rule the model could not have guessed, which
the same model before SFT does not.
"""

import io
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptscratch.chat import CHAT_VOCAB_SIZE
from gptscratch.cli import main
from gptscratch.data.loader import TokenLoader
from gptscratch.data.prepare import prepare
from gptscratch.hf.pretrained import load_source
from gptscratch.model import GPT
from gptscratch.repl import reply
from gptscratch.tokenizer import VOCAB_SIZE, gpt2
from gptscratch.train.checkpoint import find_checkpoint, load_checkpoint, load_model
from gptscratch.train.config import config_from_dict
from tests.helpers import (
    ANSWERS,
    NOUNS,
    QUESTIONS,
    hand_mask,
    read_metrics,
    read_stream,
    rule_conversations,
    train_losses,
    user,
    write_jsonl,
)

# The rule: a fixed, arbitrary answer per noun, asked three ways. Nothing in a noun says its answer.
RUN = ["--device", "cpu", "--dtype", "float32", "--seq-len", "64", "--batch-size", "8", "--num-samples", "0"]
SHAPE = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64"]
TINY_CHAT = [*RUN, *SHAPE]


def accuracy(model: GPT, question: int = 0) -> float:
    """The share of nouns whose greedy reply is exactly the rule's answer."""
    hits = [reply(model, [user(QUESTIONS[question].format(n))], 6) == a for n, a in zip(NOUNS, ANSWERS, strict=True)]
    return sum(hits) / len(hits)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`base`: a tiny model trained two steps on unrelated text; `sft`: a tiny model SFT'd from random weights on the
    rule's conversations; `from-base`: two SFT steps from `base`."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(1)
    text = [" ".join(rng.choice(["the", "a", "word", "river", "of", "and", "secret", "code", "what"])
                     for _ in range(300)) for _ in range(30)]
    (root / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
    prepare(str(root / "text.jsonl"), root / "text", workers=1, progress=False)
    assert main(["train", "--preset", "tiny", *TINY_CHAT, "--data", str(root / "text"), "--out", str(root / "base"),
                 "--max-steps", "2"]) == 0
    prepare(str(write_jsonl(root / "rule.jsonl", rule_conversations(400))), root / "rule", chat=True, workers=1,
            progress=False)
    sft = ["--preset", "sft", *RUN, "--data", str(root / "rule"), "--lr", "3e-3", "--warmup-steps", "10",
           "--dropout", "0", "--eval-interval", "60", "--ckpt-interval", "0"]
    assert main(["train", *sft, *SHAPE, "--out", str(root / "sft"), "--max-steps", "120"]) == 0
    assert main(["train", *sft, "--init-from", str(root / "base"), "--out", str(root / "from-base"),
                 "--max-steps", "2"]) == 0
    return root


def first_batch(data: Path, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    return TokenLoader(data, "train", cfg.batch_size, cfg.seq_len, seed=cfg.seed, shuffle="rows").next_batch()


def assistant_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> float:
    """Plain cross-entropy over the targets the loader kept (the loader's own are checked above)."""
    with torch.no_grad():
        logits, _ = model.eval()(x)
    keep = y >= 0
    return F.cross_entropy(logits[keep], y[keep]).item()


def test_sft_follows_the_rule_that_the_model_before_it_does_not(runs):
    cfg = load_checkpoint(find_checkpoint(runs / "sft")).config
    cfg = config_from_dict(cfg)
    torch.manual_seed(cfg.seed)  # the run's random init, as `train` draws it
    before = GPT(cfg.model_config())
    x, y = first_batch(runs / "rule", cfg)
    assert assistant_loss(before, x, y) == pytest.approx(train_losses(runs / "sft")[0], rel=1e-4)  # the run's start
    after = load_model(runs / "sft").eval()
    accuracy_before, accuracy_after = accuracy(before), accuracy(after)
    print(f"rule accuracy over {len(NOUNS)} nouns: {accuracy_before:.2f} before SFT, {accuracy_after:.2f} after")
    assert accuracy_before == 0.0
    assert accuracy_after == 1.0
    assert accuracy(after, question=2) == 1.0  # each of the ways the question was asked in training
    val = [r["val_loss"] for r in read_metrics(runs / "sft") if "val_loss" in r]
    assert val[-1] < val[0] / 10


def test_sft_from_a_base_model_starts_its_chat_rows_as_typical_tokens_of_the_base(runs):
    base = load_model(runs / "base")
    cfg = config_from_dict(load_checkpoint(find_checkpoint(runs / "from-base")).config)
    torch.manual_seed(cfg.seed)  # the run's generator, as `train` seeds it
    start = load_source(cfg, gpt2(chat=True))  # what the run started from, rebuilt from the base
    wte, base_wte = start.transformer.wte.weight.detach(), base.transformer.wte.weight.detach()
    assert start.config.vocab_size == CHAT_VOCAB_SIZE and base.config.vocab_size == VOCAB_SIZE
    assert torch.equal(wte[:VOCAB_SIZE], base_wte[:VOCAB_SIZE])
    # each chat row a draw around the real rows' mean, at their per-dimension spread, no two alike
    real = base_wte[:VOCAB_SIZE]
    z = (wte[VOCAB_SIZE:CHAT_VOCAB_SIZE] - real.mean(0)) / real.std(0)
    assert abs(z.mean().item()) < 0.2 and 0.8 < z.std().item() < 1.2 and len(set(z[:, 0].tolist())) == 4
    x, y = first_batch(runs / "rule", cfg)
    assert 0 < (y >= 0).sum() < y.numel() / 3  # most targets are the user's and the format's, not trained
    assert assistant_loss(start, x, y) == pytest.approx(train_losses(runs / "from-base")[0], rel=1e-4)


def test_eval_loss_on_conversations_scores_the_assistants_tokens_alone(runs, capsys):
    root = runs
    assert main(["eval", "loss", "--ckpt", str(root / "sft"), "--data", str(root / "rule"), "--seq-len", "40",
                 "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = load_model(root / "sft").eval()
    val = read_stream(root / "rule", "val")
    keep = hand_mask(val)
    nats, count = 0.0, 0
    for s in range(0, len(val) - 40, 40):  # one window at a time
        with torch.no_grad():
            logits = model(torch.from_numpy(val[s:s + 40])[None])[0][0, :, :CHAT_VOCAB_SIZE]
        losses = F.cross_entropy(logits, torch.from_numpy(val[s + 1:s + 41]), reduction="none")
        nats += losses[torch.from_numpy(keep[s + 1:s + 41])].sum().item()
        count += int(keep[s + 1:s + 41].sum())
    assert got["chat"] is True and got["tokens"] == count
    assert got["loss"] == pytest.approx(nats / count, rel=1e-5)
    # a base model has no logits for the chat tokens: refused in one line
    assert main(["eval", "loss", "--ckpt", str(root / "base"), "--data", str(root / "rule"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds conversations, which only a chat model scores" in err and len(err.strip().splitlines()) == 1


def test_chat_answers_line_by_line_streams_and_ends_at_end_of_input(runs, tmp_path, monkeypatch, capsys):
    root = runs
    lines = ["What is the secret word for apple?", "Tell me the code for river.", "/new", "castle: which word?"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["chat", "--ckpt", str(root / "sft"), "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == ["seven", "purple", "(a new conversation)", "tiger"]
    # the export reads back as a chat model and answers the same
    assert main(["export", "--ckpt", str(root / "sft"), "--out", str(tmp_path / "hf")]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("rocket: which word?\n"))
    assert main(["chat", "--hf", str(tmp_path / "hf"), "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "eleven"
    # `sample` shows a chat model's chat tokens by name
    prompt = "<|endoftext|><|user_start|>What is the secret word for ocean?<|user_end|><|assistant_start|>"
    assert main(["sample", "--ckpt", str(root / "sft"), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "4", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(prompt + "orange<|assistant_end|>")


def test_a_model_that_never_learned_the_chat_tokens_is_refused_in_one_line(runs, monkeypatch, capsys):
    root = runs
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["chat", "--ckpt", str(root / "base"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--ckpt {root / 'base'}: not a chat model" in err and len(err.strip().splitlines()) == 1


def test_chat_data_and_a_chat_run_must_go_together(runs, tmp_path, capsys):
    root = runs
    cases = [
        (["--preset", "tiny", *TINY_CHAT, "--data", str(root / "rule")], "holds conversations (prepared with --chat)"),
        (["--preset", "sft", *TINY_CHAT, "--data", str(root / "text")], "--chat: --data"),
        (["--preset", "tiny", *TINY_CHAT, "--init-from", str(root / "sft"), "--data", str(root / "text")],
         "a chat model; train it further on conversations"),
        (["--preset", "sft", *TINY_CHAT, "--data", str(root / "rule"), "--shuffle", "shards"],
         "chat data is read with --shuffle rows"),
    ]
    for i, (argv, message) in enumerate(cases):
        assert main(["train", *argv, "--out", str(tmp_path / str(i)), "--max-steps", "1"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
