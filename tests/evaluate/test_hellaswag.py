"""HellaSwag eval: agreement with an unbatched transformers loop, a known answer, sharding, files, the CLI.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gptscratch.cli import main
from gptscratch.errors import UserError
from gptscratch.evaluate import hellaswag
from gptscratch.evaluate.hellaswag import (
    Example,
    default_file,
    ending_losses,
    hellaswag_eval,
    load_examples,
)
from gptscratch.hf import load_hf
from gptscratch.model import GPT, GPTConfig
from gptscratch.paths import cache_dir
from gptscratch.precision import autocast_dtype
from gptscratch.tokenizer import get_encoding

transformers = pytest.importorskip("transformers")
BLOCK = 64  # the tiny model's n_positions: several test contexts are longer, so cropping is exercised
WORDS = [
    "the", "a", "man", "woman", "dog", "cat", "runs", "jumps", "over", "under", "quickly", "slowly", "red",
    "blue", "house", "river", "mountain", "and", "then", "it", "is", "was", "on", "in", "with", "for", "to",
    "of", "ball", "kitchen", "knife", "bread", "water", "sun",
]
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from gptscratch.evaluate.hellaswag import hellaswag_eval, load_examples
    from gptscratch.hf import load_hf

    # a rendezvous file, not a port: a free port picked by the test could be taken before rank 0 binds it
    rank, world = int(sys.argv[4]), 2
    dist.init_process_group("gloo", init_method=f"file://{sys.argv[3]}/rendezvous", rank=rank, world_size=world)
    result = hellaswag_eval(load_hf(sys.argv[1]), load_examples(sys.argv[2]), "cpu",
                            batch_size=2, rank=rank, world_size=world)
    with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
    """
)
BAD_FILES = {
    "malformed": (lambda good: good + "\n{not json\n", ":2: not valid JSON"),
    "label": (lambda good: good + "\n" + _record(label=4) + "\n", ":2: 'label' must be an integer 0-3"),
    "bool label": (lambda good: _record(label=True) + "\n", ":1: 'label' must be an integer"),
    "no label": (lambda good: _record(label=None).replace('"label": null, ', "") + "\n", "missing 'label'"),
    "endings": (lambda good: _record(endings=["a", "b", "c"]) + "\n", "list of 4 strings, got 3"),
    "empty": (lambda good: "\n", "no examples"),
}


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_examples(n: int, seed: int = 0) -> list[Example]:
    """Contexts of 3 to 80 words (some over the block size) and endings of 1 to 12 words."""
    rng = random.Random(seed)
    return [
        Example(
            ctx=_text(rng, rng.randint(3, 80)).capitalize() + ".",
            endings=[_text(rng, rng.randint(1, 12)) + "." for _ in range(4)],
            label=rng.randrange(4),
            ind=i,
        )
        for i in range(n)
    ]


def official_record(ex: Example) -> dict:
    """An example in the exact schema of hellaswag_{split}.jsonl."""
    return {
        "ind": ex.ind, "activity_label": "Testing", "ctx_a": ex.ctx, "ctx_b": "", "ctx": ex.ctx,
        "split": "val", "split_type": "indomain", "label": ex.label, "endings": ex.endings,
        "source_id": f"test~{ex.ind}",
    }


def write_jsonl(path, examples: list[Example]):
    path.write_text("".join(json.dumps(official_record(ex)) + "\n" for ex in examples))
    return path


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A tiny random transformers GPT-2 and the directory it was saved to."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK)
    hf = transformers.GPT2LMHeadModel(config)
    # GPT-2's init (std 0.02) gives near-uniform logits and near-tied losses; larger weights give
    # predictions that are clearly separated, so argmin comparisons are meaningful.
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    hf.eval()
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(directory)
    return hf, str(directory)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("hs") / "hellaswag_tiny.jsonl", make_examples(11, seed=1))


def reference_losses(hf, examples: list[Example], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """build-nanogpt's metric, one sequence at a time, with transformers holding the weights."""
    enc = get_encoding()
    sums, means = [], []
    for ex in examples:
        ctx = enc.encode(ex.ctx)
        row_sums, row_means = [], []
        for ending in ex.endings:
            end = enc.encode(" " + ending)
            tokens = (ctx + end)[-block_size:]
            n_scored = min(len(end), len(tokens) - 1)
            with torch.no_grad():
                logits = hf(torch.tensor([tokens])).logits[0]
            logp = torch.log_softmax(logits[:-1].double(), dim=-1)
            targets = torch.tensor(tokens[1:])
            nll = -logp[torch.arange(len(targets)), targets][-n_scored:]
            row_sums.append(nll.sum().item())
            row_means.append(nll.mean().item())
        sums.append(row_sums)
        means.append(row_means)
    return torch.tensor(sums), torch.tensor(means)


def _record(**changes) -> str:
    return json.dumps({**official_record(make_examples(1)[0]), **changes})


@pytest.mark.parametrize("vocab_multiple", [1, 64])
def test_matches_unbatched_transformers_loop(hf_pair, vocab_multiple):
    hf, directory = hf_pair
    examples = make_examples(10)
    enc = get_encoding()
    lengths = [len(enc.encode(ex.ctx)) + len(enc.encode(" " + e)) for ex in examples for e in ex.endings]
    assert max(lengths) > BLOCK and min(lengths) < BLOCK // 2  # cropping and padding both happen
    assert len({len(enc.encode(" " + e)) for ex in examples for e in ex.endings}) > 5

    model = load_hf(directory, vocab_multiple=vocab_multiple)
    # vocab_multiple=64 adds 47 padded rows; give them large logits: they must stay out of the softmax.
    with torch.no_grad():
        model.transformer.wte.weight[model.config.vocab_size :].normal_(0.0, 1.0)
    sums, means = ending_losses(model, examples, "cpu", batch_size=3)
    ref_sums, ref_means = reference_losses(hf, examples, BLOCK)
    torch.testing.assert_close(sums, ref_sums.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(means, ref_means.float(), rtol=1e-4, atol=1e-4)
    assert sums.argmin(1).tolist() == ref_sums.argmin(1).tolist()
    assert means.argmin(1).tolist() == ref_means.argmin(1).tolist()
    assert sums.argmin(1).tolist() != means.argmin(1).tolist()  # the two metrics really differ here

    labels = torch.tensor([ex.label for ex in examples])
    result = hellaswag_eval(model, examples, "cpu", batch_size=4)
    assert result["n"] == 10
    assert result["num_correct"] == int((ref_sums.argmin(1) == labels).sum())
    assert result["num_correct_norm"] == int((ref_means.argmin(1) == labels).sum())
    assert result["acc"] == result["num_correct"] / 10
    assert result["acc_norm"] == result["num_correct_norm"] / 10


def test_trained_model_picks_the_ending_it_learned():
    """Train a tiny model on one continuation; it must pick it wherever it sits among the four."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    enc = get_encoding()
    ctx = "The chef opened the oven and"
    right = "took out a golden loaf of bread."
    wrong = ["the river froze solid overnight.", "seven trains left the station.", "quantum numbers fit."]
    tokens = torch.tensor([enc.encode(ctx + " " + right)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5

    # the right ending in each of the four positions: only its content can make all four correct
    examples = [Example(ctx, wrong[:k] + [right] + wrong[k:], label=k) for k in range(4)]
    model.train()
    result = hellaswag_eval(model, examples, "cpu")
    assert (result["n"], result["num_correct"], result["num_correct_norm"]) == (4, 4, 4)
    assert model.training  # the caller's mode is restored


def test_eval_mode_during_scoring_and_restored_after(hf_pair):
    model = load_hf(hf_pair[1])
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(module.training))
    for mode in (True, False):
        model.train(mode)
        hellaswag_eval(model, make_examples(2), "cpu")
        assert model.training is mode
    assert seen and not any(seen)


def test_two_gloo_ranks_give_the_one_rank_totals(hf_pair, data_file, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, str(script), hf_pair[1], str(data_file), str(tmp_path), str(r)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    one_rank = hellaswag_eval(load_hf(hf_pair[1]), load_examples(data_file), "cpu", batch_size=2)
    assert one_rank["n"] == 11  # odd, so the two shards differ in size (6 and 5)
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == one_rank


def test_parses_the_official_format(tmp_path):
    lines = [
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain",
         "label": 3, "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
         "source_id": "activitynet~v_-JhWjGDPHMY"},
        {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell.",
         "ctx_b": "she", "ctx": "A lady walks to a barbell. She", "split": "val", "split_type": "zeroshot",
         "label": 0, "endings": ["bends down and grabs the pole.", "swings and lands in her arms.",
                                 "pulls the barbell forward.", "pulls a rope attached to the barbell."],
         "source_id": "activitynet~v_-lJS58hyo1c"},
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines) + "\n")  # a trailing blank line is fine
    examples = load_examples(path)
    assert [(ex.ind, ex.ctx, ex.endings, ex.label) for ex in examples] == [
        (d["ind"], d["ctx"], d["endings"], d["label"]) for d in lines
    ]
    assert len(load_examples(path, limit=1)) == 1


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_one_line_user_errors(case, tmp_path, hf_pair, capsys):
    make, expected = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(make(_record()))
    with pytest.raises(UserError, match=expected) as err:
        load_examples(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    assert main(["eval", "hellaswag", "--hf", hf_pair[1], "--file", str(path), "--device", "cpu"]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("gptscratch eval: error:") and str(path) in stderr[0]


def test_missing_file(tmp_path, hf_pair, capsys):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match="no such file"):
        load_examples(path)
    assert main(["eval", "hellaswag", "--hf", hf_pair[1], "--file", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_cli_json_matches_the_function(hf_pair, data_file, capsys):
    code = main(["eval", "hellaswag", "--hf", hf_pair[1], "--file", str(data_file), "--json",
                 "--device", "cpu", "--batch-size", "3", "--limit", "7"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    got = json.loads(out[0])
    model = load_hf(hf_pair[1])
    amp = autocast_dtype("auto", torch.device("cpu"))  # the command's default --dtype
    want = hellaswag_eval(model, load_examples(data_file, limit=7), "cpu", batch_size=2, amp=amp)
    assert got == {"n": 7, "acc": want["acc"], "acc_norm": want["acc_norm"]}

    main(["eval", "hellaswag", "--hf", hf_pair[1], "--file", str(data_file), "--device", "cpu",
          "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "n=11" in out and "acc=" in out and "acc_norm=" in out


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTSCRATCH_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GPTSCRATCH_CACHE")
    assert cache_dir() == tmp_path / "x" / "gptscratch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "gptscratch"


def test_download_checks_lines_then_renames(monkeypatch, tmp_path, data_file):
    """The download path, served from a file:// URL standing in for GitHub."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "hellaswag_val.jsonl").write_bytes(data_file.read_bytes())
    monkeypatch.setattr(hellaswag, "HELLASWAG_URL", served.as_uri() + "/hellaswag_{split}.jsonl")
    monkeypatch.setenv("GPTSCRATCH_CACHE", str(tmp_path / "cache"))
    target_dir = tmp_path / "cache" / "hellaswag"

    monkeypatch.setattr(hellaswag, "SPLIT_SIZES", {"val": 12})  # one more than the file holds
    with pytest.raises(UserError, match="downloaded 11 examples, expected 12"):
        default_file("val")
    assert list(target_dir.iterdir()) == []  # no temp file left, nothing half-written under the real name

    monkeypatch.setattr(hellaswag, "SPLIT_SIZES", {"val": 11})
    path = default_file("val")
    assert path == target_dir / "hellaswag_val.jsonl"
    assert path.read_bytes() == data_file.read_bytes() and list(target_dir.iterdir()) == [path]
    (served / "hellaswag_val.jsonl").unlink()
    assert default_file("val") == path  # cached: no second download


def test_offline_download_names_file_flag(monkeypatch, tmp_path, hf_pair, capsys):
    # port 9 (discard) on localhost refuses at once: the same failure as having no network
    monkeypatch.setattr(hellaswag, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_{split}.jsonl")
    monkeypatch.setenv("GPTSCRATCH_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="--file"):
        default_file("val")
    assert main(["eval", "hellaswag", "--hf", hf_pair[1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download" in err[0] and "--file" in err[0]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
def test_a_cache_directory_that_cannot_be_created_is_one_line(monkeypatch, hf_pair, capsys):
    monkeypatch.setenv("GPTSCRATCH_CACHE", "/proc/gptscratch-cache")
    assert main(["eval", "hellaswag", "--hf", hf_pair[1], "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the cache directory /proc/gptscratch-cache/hellaswag" in err and "GPTSCRATCH_CACHE" in err
    assert err.count("\n") == 1, err


def test_modern_model_matches_its_qwen3_export(tmp_path):
    """HellaSwag scoring of a rotary/RMSNorm/QK-norm/SwiGLU model, against transformers' Qwen3 on its export."""
    transformers = pytest.importorskip("transformers")
    from gptscratch.hf import save_hf

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, n_layer=2, n_head=2, n_embd=64, vocab_multiple=64, bias=False,
                          pos_embedding="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False))
    save_hf(model, tmp_path / "qwen3")
    qwen3 = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "qwen3").eval()
    examples = make_examples(6)
    sums, means = ending_losses(model, examples, "cpu", batch_size=3)
    ref_sums, ref_means = reference_losses(qwen3, examples, BLOCK)
    torch.testing.assert_close(sums, ref_sums.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(means, ref_means.float(), rtol=1e-4, atol=1e-4)
