"""`gptscratch serve` on the command line: its flags, the loopback warning, the model's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from gptscratch.serve import Limits

BAD_SERVE_FLAGS = [
    (["--api-key", ""], "--api-key"),  # no client could ever send it
    (["--api-key", "key "], "--api-key"),  # a header loses the space at its end
    (["--api-key", "kéy"], "--api-key"),
    (["--api-key", "k\x07y"], "--api-key"),
    (["--max-body", "0"], "--max-body"),
    (["--max-body", "1023"], "--max-body"),
    (["--max-body", "-5"], "--max-body"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--request-timeout", "nan"], "--request-timeout"),
    (["--keep-alive-timeout", "-1"], "--keep-alive-timeout"),
    (["--max-connections", "0"], "--max-connections"),
]


def test_binding_beyond_loopback_without_an_api_key_prints_a_one_line_warning(model, monkeypatch, capsys):
    import uvicorn

    from gptscratch.serve import serve

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # bind, say so, stop
    warnings = {}
    for host, key in (("0.0.0.0", None), ("0.0.0.0", "k"), ("127.0.0.1", None)):
        serve(model, "tiny", host=host, port=0, api_key=key)
        warnings[host, key] = capsys.readouterr().err.strip().splitlines()
    assert len(warnings["0.0.0.0", None]) == 1 and "--api-key" in warnings["0.0.0.0", None][0]
    assert warnings["0.0.0.0", "k"] == warnings["127.0.0.1", None] == []


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


@pytest.mark.parametrize("flags,named", BAD_SERVE_FLAGS, ids=[" ".join(f) for f, _ in BAD_SERVE_FLAGS])
def test_cli_serve_refuses_an_unusable_flag_in_one_line_before_loading_the_model(tmp_path, capsys, flags, named):
    from gptscratch.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "no-such-run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "no-such-run" not in err


def test_cli_serve_hands_its_limits_to_the_server_and_lists_them_in_help(tmp_path, model, monkeypatch, capsys):
    import gptscratch.serve
    from gptscratch.cli import build_parser, main
    from gptscratch.hf import save_hf

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(flag in shown for flag in ("--request-timeout", "--keep-alive-timeout", "--max-connections"))
    defaults = build_parser().parse_args(["serve", "--hf", "x"])
    assert Limits(defaults.request_timeout, defaults.keep_alive_timeout, defaults.max_connections) == Limits()
    save_hf(model, tmp_path / "tiny-hf")
    seen: dict = {}
    monkeypatch.setattr(gptscratch.serve, "serve", lambda model, name, **kwargs: seen.update(kwargs))
    assert main(["serve", "--hf", str(tmp_path / "tiny-hf"), "--request-timeout", "7", "--keep-alive-timeout", "2.5",
                 "--max-connections", "9", "--api-key", "s3cret", "--max-body", "1024"]) == 0
    assert seen["limits"] == Limits(7.0, 2.5, 9) and (seen["api_key"], seen["max_body"]) == ("s3cret", 1024)


def test_a_served_checkpoint_is_named_after_its_run():
    from gptscratch.cli import build_parser
    from gptscratch.hf.pretrained import model_name

    run = Path(__file__).parents[1] / "fixtures" / "ckpt_1ae9fdd" / "run"
    step = sorted((run / "checkpoints").iterdir())[-1]
    for path in (run, run / "checkpoints", step):
        assert model_name(build_parser().parse_args(["serve", "--ckpt", str(path)])) == "run"
    assert model_name(build_parser().parse_args(["serve", "--hf", "gpt2-medium"])) == "gpt2-medium"
