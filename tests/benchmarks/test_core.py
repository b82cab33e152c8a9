"""`python -m benchmarks core` runs end to end on tiny shapes: ours alone, and beside a nanochat checkout (a
stand-in here, with nanochat's interface). No test asserts a speed."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from benchmarks.__main__ import main

pytest.importorskip("yaml")
TINY = ["core", "--shape", "tiny", "--max-per-task", "11", "--tasks", "mc-short-10shot,schema-0shot,lm-0shot",
        "--json"]

# nanochat's core_eval interface: evaluate_task calls evaluate_example(idx, model, tokenizer, data, device, meta)
# for each example and returns the mean. This one calls the tokenizer and model as nanochat's does and says
# "right" on even examples.
STAND_IN = textwrap.dedent(
    """
    import torch

    def evaluate_example(idx, model, tokenizer, data, device, task_meta):
        tokens = tokenizer(["a prompt", "another"], prepend=tokenizer.get_bos_token_id())
        assert tokens[0][0] == 50256 and len(tokens) == 2
        logits = model(torch.tensor([tokens[0][: model.max_seq_len]], device=device))
        assert logits.shape[-1] == 50257 and logits.dtype == torch.float32
        return idx % 2 == 0

    def evaluate_task(model, tokenizer, data, device, task_meta):
        return sum(float(evaluate_example(i, model, tokenizer, data, device, task_meta))
                   for i in range(len(data))) / len(data)
    """
)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_bench_core_runs_ours_alone_and_says_why(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    assert "nanochat: skipped (pass --nanochat PATH" in out
    result = last_json(out)
    assert [t["task"] for t in result["tasks"]] == ["mc-short-10shot", "schema-0shot", "lm-0shot"]
    assert all(t["examples"] == 11 and t["gptscratch_s"] > 0 for t in result["tasks"])
    assert "ratio" not in result


def test_bench_core_times_a_nanochat_checkout_beside_ours(tmp_path, monkeypatch, capsys):
    from benchmarks.core import SHAPES, synthetic_tasks
    from gptscratch.evaluate.core import evaluate_task
    from gptscratch.model import GPT, GPTConfig

    (tmp_path / "nanochat" / "nanochat").mkdir(parents=True)
    (tmp_path / "nanochat" / "nanochat" / "__init__.py").write_text("")
    (tmp_path / "nanochat" / "nanochat" / "core_eval.py").write_text(STAND_IN)
    for name in ("nanochat", "nanochat.core_eval"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert main([*TINY, "--nanochat", str(tmp_path / "nanochat")]) == 0
    result = last_json(capsys.readouterr().out)
    for name in ("nanochat", "nanochat.core_eval"):
        sys.modules.pop(name, None)

    # the agreement counted is ours against the stand-in's "right on even examples"
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPES["tiny"])).eval()
    tasks = {d.task.label: d for d in synthetic_tasks(11)}
    for row in result["tasks"]:
        ours = evaluate_task(model, tasks[row["task"]], "cpu")["correct"]
        assert row["agree"] == sum(c == (i % 2 == 0) for i, c in enumerate(ours))
        assert row["nanochat_acc"] == pytest.approx(6 / 11) and row["ratio"] > 0
    assert result["ratio"] == pytest.approx(result["nanochat_s"] / result["gptscratch_s"])
    assert result["examples"] == 33


def test_bench_core_refuses_a_path_without_nanochat(tmp_path, capsys):
    assert main([*TINY, "--nanochat", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no nanochat/core_eval.py there" in err[0]
