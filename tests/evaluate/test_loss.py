"""evaluate/loss.py: `eval loss` and bits per byte over every window, against transformers' own loss one window
at a time."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptscratch.cli import main
from gptscratch.tokenizer import get_encoding

transformers = pytest.importorskip("transformers")


def test_eval_loss_equals_a_transformers_loop_over_every_window(hf_tiny, corpus, capsys):
    hf, path = hf_tiny
    assert main(["eval", "loss", "--hf", str(path), "--data", str(corpus), "--seq-len", "50", "--batch-size", "7",
                 "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val = np.fromfile(corpus / "c_val_000000.bin", dtype=np.uint16, offset=1024).astype(np.int64)
    losses, nats, text_bytes = [], 0.0, 0
    enc = get_encoding()
    for start in range(0, len(val) - 50, 50):  # one window at a time, transformers' own loss
        window = torch.from_numpy(val[start:start + 51])[None]
        with torch.no_grad():
            per_token = F.cross_entropy(hf(window[:, :-1]).logits[0], window[0, 1:], reduction="none")
        losses.append(per_token.mean().item())
        for loss, target in zip(per_token.tolist(), window[0, 1:].tolist(), strict=True):
            if target != enc.eot_token:  # <|endoftext|> is no text: in neither sum
                nats += loss
                text_bytes += len(enc.decode_single_token_bytes(target))
    assert got["windows"] == len(losses) == (3000 - 1) // 50
    assert got["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(got["loss"]))
    assert got["bytes"] == text_bytes and got["bpb"] == pytest.approx(nats / np.log(2) / text_bytes, rel=1e-5)
