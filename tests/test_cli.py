"""The command line: help texts, sampling from a Hugging Face directory, one-line errors.
"""

import json

import numpy as np
import pytest
import torch

from gptscratch.cli import build_parser, main
from gptscratch.hf import save_hf
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import get_encoding
from gptscratch.train.checkpoint import save_checkpoint
from tests.helpers import write_llmc_shard


def model_dirs(root, vocab_size: int) -> tuple[str, str]:
    """A small GPT-2 of `vocab_size` tokens, as a gptscratch checkpoint and as a Hugging Face directory."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(root / "run" / "checkpoints", 1, model, torch.optim.AdamW(model.parameters()), {}, [{}], [{}])
    save_hf(model, root / "hf")
    return str(root / "run"), str(root / "hf")


@pytest.fixture
def eval_files(tmp_path):
    """A prepared split (random GPT-2 ids) and a HellaSwag file, for `eval loss` and `eval hellaswag`."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_llmc_shard(data / f"d_{split}_000000.bin", rng.integers(0, 50257, 200))
    row = {"ind": 0, "activity_label": "a", "ctx_a": "The cat", "ctx_b": "sat", "ctx": "The cat sat", "split": "val",
           "split_type": "indomain", "label": 0, "endings": ["on the mat.", "down.", "up.", "x"], "source_id": "s"}
    (tmp_path / "hs.jsonl").write_text(json.dumps(row) + "\n")
    return str(data), str(tmp_path / "hs.jsonl")


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"prepare", "train", "sample", "export", "eval", "plot"} <= set(commands)
    assert "bench" not in commands  # the benchmarks run from a clone, as python -m benchmarks
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: gptscratch" in capsys.readouterr().out


def test_greedy_sample_streams_transformers_greedy_text(hf_tiny, capsys):
    hf, path = hf_tiny
    enc = get_encoding()
    prompt = "Hello, I'm a language model,"
    ids = torch.tensor([enc.encode(prompt)])
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(ids))
    expected = enc.decode(ref[0].tolist())
    assert main(["sample", "--hf", str(path), "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0",
                 "--no-stop", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "--top-p 1.5: expected a value in (0, 1]"),
        (["--top-p", "0"], "expected a value in (0, 1]"),
        (["--device", "tpu9"], "--device 'tpu9'"),
        (["--prompt", ""], "--prompt encodes to no tokens"),
        (["--temperature", "-1"], "--temperature -1.0"),
    ],
)
def test_bad_sample_flags_fail_with_one_line(hf_tiny, capsys, args, message):
    _, path = hf_tiny
    assert main(["sample", "--hf", str(path), "--max-new-tokens", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_model_directory(tmp_path, capsys):
    assert main(["sample", "--hf", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_temperature_is_refused(hf_tiny, capsys, value):
    _, path = hf_tiny
    assert main(["sample", "--hf", str(path), "--temperature", value]) == 2
    err = capsys.readouterr().err
    assert f"--temperature {value}: expected a finite value >= 0" in err and err.count("\n") == 1


def test_a_model_too_small_for_the_tokenizer_is_refused_by_every_command_that_loads_one(tmp_path, eval_files,
                                                                                         capsys, monkeypatch):
    ckpt, hf = model_dirs(tmp_path, vocab_size=100)
    data, hellaswag = eval_files

    def never(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("gptscratch.serve.serve", never)
    cpu = ["--device", "cpu"]
    commands = [[*cmd, flag, path, *cpu] for flag, path in (("--ckpt", ckpt), ("--hf", hf)) for cmd in (
        ["sample", "--max-new-tokens", "2"], ["serve", "--port", "0"], ["eval", "loss", "--data", data],
        ["eval", "hellaswag", "--file", hellaswag])]
    commands += [["export", "--ckpt", ckpt, "--out", str(tmp_path / "export")], ["train", "--resume", ckpt]]
    commands += [["train", "--preset", "tiny", "--init-from", source, "--data", data, "--out", str(tmp_path / "ft"),
                  *cpu] for source in (ckpt, hf)]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "vocab_size 100 cannot hold GPT-2's 50,257 tokens" in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "export").exists() and not (tmp_path / "ft").exists()


def test_a_model_with_more_rows_than_the_tokenizer_is_accepted(tmp_path, eval_files, capsys):
    ckpt, hf = model_dirs(tmp_path, vocab_size=50304)  # nanoGPT's vocabulary
    data, hellaswag = eval_files
    assert main(["eval", "loss", "--hf", hf, "--data", data, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == 12
    assert main(["eval", "hellaswag", "--ckpt", ckpt, "--file", hellaswag, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
