"""The command line: help texts, sampling from a Hugging Face directory, one-line errors."""

import pytest
import torch

from gptscratch.cli import build_parser, main
from gptscratch.tokenizer import get_encoding


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"prepare", "train", "sample", "export", "eval", "plot", "bench"} <= set(commands)
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


def test_pytorch_model_bin_loads_too(hf_tiny, tmp_path):
    from gptscratch.hf import load_hf

    hf, path = hf_tiny
    # the older layout: config.json + a pickled state dict (transformers 5 no longer writes it)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    x = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        assert (load_hf(str(tmp_path / "bin"))(x)[0] - hf(x).logits).abs().max() <= 1e-5


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
