"""CORE: every verdict against a one-example-at-a-time reference of nanochat's protocol, the bundle, ranks, the CLI.

The reference below restates nanochat's `core_eval.py` from its description (demonstrations drawn from the
list of the other rows, prompts joined by blank lines, BOS, the common token prefix or suffix, the crop),
and scores each option's sequence alone, unpadded, through transformers' GPT2LMHeadModel (or the model's
plain forward) in float64.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from gptscratch.cli import main
from gptscratch.errors import UserError
from gptscratch.evaluate import core
from gptscratch.evaluate.core import evaluate_core, evaluate_task, load_core, predictions, prompts
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import get_encoding
from tests.helpers import write_bundle

transformers = pytest.importorskip("transformers")
yaml = pytest.importorskip("yaml")

BLOCK = 64  # the tiny model's context: many prompts below are longer, so the crop is exercised
BOS = 50256
WORDS = ("the a man woman dog cat runs jumps over under quickly slowly red blue house river mountain and then it is "
         "was on in with for to of ball kitchen knife bread water sun Paris capital gold symbol").split()


# --- a synthetic bundle of each task type, with the edge cases -------------------------------------------


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def mc_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = rng.choice([2, 3, 4, 5])
        choices = [text(rng, 1, 6) for _ in range(k)]
        if i % 4 == 0:  # a shared first word: the common token prefix runs into the continuation
            word = rng.choice(WORDS)
            choices = [f"{word} {c}" for c in choices]
        if i % 5 == 0:  # equal options: the first wins the tie
            choices[-1] = choices[0]
        if i % 7 == 0:  # an option that is another's start
            choices[1] = choices[0] + " " + rng.choice(WORDS)
        query = text(rng, 2, 70 if i % 3 == 0 else 20) + "?"  # every third overruns the context
        rows.append({"query": query, "choices": choices, "gold": rng.randrange(k), "id": i})
    return rows


def schema_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = rng.choice([2, 3])
        options = [text(rng, 2, 20) for _ in range(k)]
        if i % 6 == 0:
            options[-1] = options[0]
        continuation = text(rng, 1, 80 if i % 8 == 0 else 8)  # some longer than the context: no loss
        rows.append({"context_options": options, "continuation": continuation, "gold": rng.randrange(k)})
    return rows


def lm_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        context = text(rng, 2, 80 if i % 4 == 0 else 25)
        if i % 3 == 0:  # trailing whitespace, which the protocol strips before the delimiter
            context += rng.choice([" ", "  ", "\n", " \n "])
        rows.append({"context": context, "continuation": text(rng, 1, 3)})
    return rows


def greedy_rows(hf, rows: list[dict]) -> int:
    """Give every other row of a 0-shot task (delimiter ' ') a continuation the model predicts: its greedy
    next token(s), where they tokenize back apart. Returns how many rows were changed."""
    enc = get_encoding()
    changed = 0
    for i, row in enumerate(rows):
        if i % 2:
            continue
        ids = [BOS] + enc.encode_ordinary(row["context"].strip())
        new = []
        for _ in range(1 + i % 3):
            with torch.no_grad():
                new.append(int(hf(torch.tensor([(ids + new)[-BLOCK:]])).logits[0, -1].argmax()))
        words = enc.decode(new)
        if i % 4 == 2:  # the first token right, then a word the model did not predict: wrong
            words += " " + WORDS[i % len(WORDS)]
        if not words.startswith(" ") or not words.strip():
            continue
        continuation = words[1:]
        if enc.encode_ordinary(row["context"].strip() + " " + continuation)[: len(ids) - 1 + len(new)] == ids[1:] + new:
            row["continuation"] = continuation
            changed += 1
    return changed


TASKS = [  # label, type, demonstrations, delimiter (None: core.yaml leaves it out), rows, random baseline
    ("mc_zero", "multiple_choice", 0, None, 30, 25.0),
    ("mc_answer", "multiple_choice", 3, "\nAnswer: ", 30, 25.0),
    ("mc_many", "multiple_choice", 1, " ", 100, 20.0),  # over 21 other rows: random.sample's other path
    ("schema_zero", "schema", 0, None, 30, 50.0),
    ("schema_two", "schema", 2, " ", 20, 50.0),
    ("lm_zero", "language_modeling", 0, None, 30, 0.0),
    ("lm_three", "language_modeling", 3, "\nA:", 20, 0.0),
]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A tiny random transformers GPT-2 with weights large enough to separate the options' losses."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    hf.eval()
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, hf_pair):
    rng = random.Random(0)
    make = {"multiple_choice": mc_rows, "schema": schema_rows, "language_modeling": lm_rows}
    rows_of = {label: make[kind](rng, n) for label, kind, _, _, n, _ in TASKS}
    assert greedy_rows(hf_pair[0], rows_of["lm_zero"]) >= 5
    return write_bundle(tmp_path_factory.mktemp("core") / "eval_bundle", TASKS, rows_of)


@pytest.fixture(scope="module")
def ours(hf_pair):
    from gptscratch.hf import load_hf

    return load_hf(str(hf_pair[1]))


# --- the reference ---------------------------------------------------------------------------------------


def reference_prompts(rows: list[dict], i: int, kind: str, shots: int, delimiter: str) -> list[str]:
    item, others = rows[i], [r for j, r in enumerate(rows) if j != i]
    demos = random.Random(1234 + i).sample(others, shots) if shots else []
    if kind == "multiple_choice":
        before = [d["query"] + delimiter + d["choices"][d["gold"]] for d in demos]
        return ["\n\n".join([*before, item["query"] + delimiter + c]) for c in item["choices"]]
    if kind == "schema":
        before = [d["context_options"][d["gold"]] + delimiter + d["continuation"] for d in demos]
        return ["\n\n".join([*before, o + delimiter + item["continuation"]]) for o in item["context_options"]]
    before = [d["context"].strip() + delimiter + d["continuation"] for d in demos]
    last = item["context"].strip() + delimiter
    return ["\n\n".join([*before, last]).strip(), "\n\n".join([*before, last + item["continuation"]])]


def shared_length(seqs: list[list[int]]) -> int:
    n = 0
    while n < min(map(len, seqs)) and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def reference_verdict(logits_of, texts: list[str], kind: str) -> int:
    """The option picked (multiple_choice, schema), or 1/0 for an all-argmax continuation (language_modeling)."""
    enc = get_encoding()
    seqs = [[BOS] + enc.encode_ordinary(t) for t in texts]
    if kind == "multiple_choice":
        k = shared_length(seqs)
        scored = [(k, len(s)) for s in seqs]
    elif kind == "schema":
        k = shared_length([s[::-1] for s in seqs])
        scored = [(len(s) - k, len(s)) for s in seqs]
    else:
        without, seqs = seqs[0], [seqs[1]]
        assert seqs[0][: len(without)] == without
        scored = [(len(without), len(seqs[0]))]
    means = []
    for seq, (start, end) in zip(seqs, scored, strict=True):
        cut = max(0, len(seq) - BLOCK)
        seq, start, end = seq[cut:], start - cut, end - cut
        if start < 1 or start >= end:
            means.append(math.nan)  # nothing scored inside the window
            continue
        # the predictions of the scored tokens: position q - 1 predicts token q
        logp = torch.log_softmax(logits_of(seq)[start - 1 : end - 1].double(), dim=-1)
        targets = seq[start:end]
        if kind == "language_modeling":
            return int(all(int(logp[j].argmax()) == t for j, t in enumerate(targets)))
        means.append(-sum(float(logp[j, t]) for j, t in enumerate(targets)) / len(targets))
    if kind == "language_modeling":
        return 0
    best = 0
    for j in range(1, len(means)):
        if means[j] < means[best]:  # NaN is never smaller, nor is anything smaller than a first NaN
            best = j
    return best


def reference_task(logits_of, data) -> list[int]:
    t = data.task
    return [reference_verdict(logits_of, reference_prompts(data.rows, i, t.task_type, t.num_fewshot, t.delimiter),
                              t.task_type) for i in range(len(data.rows))]


def hf_logits(hf):
    def logits_of(seq: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return hf(torch.tensor([seq])).logits[0]

    return logits_of


# --- the verdicts ----------------------------------------------------------------------------------------


def test_prompts_are_the_reference_prompts(bundle):
    for data in load_core(bundle):
        t = data.task
        for i in range(len(data.rows)):
            assert prompts(data, i) == reference_prompts(data.rows, i, t.task_type, t.num_fewshot, t.delimiter)


@pytest.fixture(scope="module")
def reference(bundle, hf_pair) -> dict[str, list[int]]:
    return {data.task.label: reference_task(hf_logits(hf_pair[0]), data) for data in load_core(bundle)}


@pytest.mark.parametrize("batch_size", [1, 6])
def test_every_verdict_is_the_one_example_at_a_time_reference_verdict(bundle, reference, ours, batch_size):
    enc = get_encoding()
    for data in load_core(bundle):
        t = data.task
        got = predictions(ours, data, list(range(len(data.rows))), "cpu", batch_size=batch_size)
        assert got == reference[t.label], t.label
        texts = [p for i in range(len(data.rows)) for p in prompts(data, i)]
        assert max(len(enc.encode_ordinary(p)) for p in texts) + 1 > BLOCK, t.label  # the crop happens
        if t.task_type != "language_modeling":
            assert len(set(got)) > 1, t.label  # not the same option every time
    lm = next(d for d in load_core(bundle) if d.task.label == "lm_zero")
    verdicts = reference["lm_zero"]
    assert 0 < sum(verdicts) < len(verdicts)  # right and wrong language_modeling verdicts both occur
    stripped = [i for i, r in enumerate(lm.rows) if r["context"] != r["context"].rstrip()]
    assert any(verdicts[i] for i in stripped)  # a context with trailing whitespace, continued right


def test_the_edge_cases_occur_in_the_synthetic_bundle(bundle):
    """The bundle above really holds what the verdict test is meant to cover."""
    enc = get_encoding()
    data = {d.task.label: d for d in load_core(bundle)}
    mc = data["mc_zero"]
    merged = shared_into_answer = tie = 0
    for i in range(len(mc.rows)):
        seqs = [[BOS] + enc.encode_ordinary(p) for p in prompts(mc, i)]
        query = [BOS] + enc.encode_ordinary(mc.rows[i]["query"])
        start = shared_length(seqs)
        # the delimiter's space belongs to the answer's first token
        merged += start < len(seqs[0]) and enc.decode([seqs[0][start]]).startswith(" ")
        shared_into_answer += start > len(query)  # a first word all choices share is not scored
        tie += len(set(mc.rows[i]["choices"])) < len(mc.rows[i]["choices"])
    assert merged and shared_into_answer and tie
    schema = data["schema_zero"]
    encoded = core.encode_examples(schema, list(range(len(schema.rows))), BLOCK)
    assert any(not len(span) for ex in encoded for span in ex.spans)  # a continuation longer than the context


def test_modern_model_verdicts_match_its_plain_forward(bundle):
    """Rotary positions, RMSNorm, QK-norm, SwiGLU, an untied head, a soft-cap and a padded vocabulary: the
    shared-prefix path against each sequence through GPT.forward alone."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, bias=False, pos_embedding="rope",
                          norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False, logit_softcap=15.0,
                          vocab_multiple=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)

    def logits_of(seq: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([seq]))[0][0, :, :50257]

    for data in load_core(bundle, ["mc_answer", "mc_many", "schema_two", "lm_zero"]):
        assert predictions(model, data, list(range(len(data.rows))), "cpu", batch_size=5) == reference_task(
            logits_of, data), data.task.label


def test_core_metric_is_the_mean_of_the_centered_accuracies(bundle, ours):
    tasks = load_core(bundle, max_per_task=12)
    result = evaluate_core(ours, tasks, "cpu", batch_size=4)
    assert set(result) == {"results", "centered_results", "core_metric", "examples", "seconds"}
    centered = []
    for data in tasks:
        acc = sum(v == data.gold(i) for i, v in enumerate(
            predictions(ours, data, list(range(len(data.rows))), "cpu"))) / len(data.rows)
        base = data.task.baseline / 100
        assert result["results"][data.task.label] == pytest.approx(acc)
        assert result["centered_results"][data.task.label] == pytest.approx((acc - base) / (1 - base))
        assert result["examples"][data.task.label] == 12
        centered.append((acc - base) / (1 - base))
    assert result["core_metric"] == pytest.approx(sum(centered) / len(centered))


def test_max_per_task_keeps_the_first_rows_of_nanochats_shuffle(bundle):
    lines = (bundle / "eval_data" / "tasks" / "mc_many.jsonl").read_text().splitlines()
    everything = [json.loads(line) for line in lines]
    random.Random(1337).shuffle(everything)
    (data,) = load_core(bundle, ["mc_many"], max_per_task=9)
    assert data.rows == everything[:9]
    first_line = lines.index(json.dumps(data.rows[0])) + 1
    assert data.where[0] == f"{bundle / 'eval_data' / 'tasks' / 'mc_many.jsonl'}:{first_line}"
    (whole,) = load_core(bundle, ["mc_many"])
    assert whole.rows == everything


def test_model_mode_is_restored(bundle, ours):
    (data,) = load_core(bundle, ["mc_zero"], max_per_task=3)
    for mode in (True, False):
        ours.train(mode)
        evaluate_task(ours, data, "cpu")
        assert ours.training is mode
    ours.eval()


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from gptscratch.errors import UserError
    from gptscratch.evaluate.core import evaluate_core, evaluate_task, load_core
    from gptscratch.hf import load_hf

    # a rendezvous file, not a port: a free port picked by the test could be taken before rank 0 binds it
    rank, world = int(sys.argv[4]), 2
    dist.init_process_group("gloo", init_method=f"file://{sys.argv[3]}/rendezvous", rank=rank, world_size=world)
    model, tasks = load_hf(sys.argv[1]), load_core(sys.argv[2], max_per_task=11)
    result = evaluate_core(model, tasks, "cpu", batch_size=3, rank=rank, world_size=world)
    result["correct"] = {d.task.label: evaluate_task(model, d, "cpu", rank=rank, world_size=world)["correct"]
                         for d in tasks}
    del result["seconds"]
    try:  # a row only rank 1 reads is bad: both ranks stop, neither waits for the other
        evaluate_task(model, load_core(sys.argv[5])[0], "cpu", rank=rank, world_size=world)
    except UserError as e:
        result["error"] = str(e)
    with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
    """
)


JOINED = [{"context": "The cat sat on the mat and", "continuation": " then slept"},
          {"context": "hello", "continuation": "world"}]  # 'helloworld' is not 'hello' and more tokens


def test_two_gloo_ranks_give_the_one_rank_result(bundle, hf_pair, ours, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    bad = write_bundle(tmp_path / "bad", [("joined", "language_modeling", 0, "", 2, 0.0)], {"joined": JOINED})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(hf_pair[1]), str(bundle), str(tmp_path), str(r),
                               str(bad)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    tasks = load_core(bundle, max_per_task=11)  # odd: the two ranks' shares differ in size
    one = evaluate_core(ours, tasks, "cpu", batch_size=3)
    del one["seconds"]
    one["correct"] = {d.task.label: evaluate_task(ours, d, "cpu")["correct"] for d in tasks}
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[1].pop("error").startswith(f"{bad / 'eval_data' / 'tasks' / 'joined.jsonl'}:2: the prompt without")
    assert got[0].pop("error") == "task joined: another process stopped on bad input (its message is above)"
    assert got == [json.loads(json.dumps(one))] * 2


# --- the command -----------------------------------------------------------------------------------------


def test_cli_json_is_evaluate_core(bundle, hf_pair, ours, capsys):
    code = main(["eval", "core", "--hf", str(hf_pair[1]), "--bundle", str(bundle), "--json", "--device", "cpu",
                 "--dtype", "float32", "--max-per-task", "8", "--tasks", "mc_zero,lm_zero", "--batch-size", "3"])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 1
    got = json.loads(out[0])
    want = evaluate_core(ours, load_core(bundle, ["mc_zero", "lm_zero"], 8), "cpu")
    for key in ("results", "centered_results", "core_metric", "examples"):
        assert got[key] == want[key]
    assert list(got["results"]) == ["mc_zero", "lm_zero"] and set(got["seconds"]) == {"mc_zero", "lm_zero"}
    assert "mc_zero" in captured.err and "CORE" in captured.err  # the summary lines go to stderr

    assert main(["eval", "core", "--hf", str(hf_pair[1]), "--bundle", str(bundle), "--device", "cpu",
                 "--max-per-task", "4", "--tasks", "schema_two"]) == 0
    out = capsys.readouterr().out
    assert "schema_two" in out and "accuracy" in out and "CORE" in out


def one_line_error(capsys, argv: list[str], *expected: str) -> None:
    assert main(argv) == 2
    # the download's progress bar may come first
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.strip().startswith("eval_bundle.zip:")]
    assert len(err) == 1 and err[0].startswith("gptscratch eval: error:"), err
    for text_ in expected:
        assert text_ in err[0], err[0]


def copy_bundle(bundle, tmp_path):
    import shutil

    return shutil.copytree(bundle, tmp_path / "eval_bundle")


def replace_line(path, n: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = line
    path.write_text("\n".join(lines) + "\n")


BAD_BUNDLES = {
    "no core.yaml": (lambda b: (b / "core.yaml").unlink(), "core.yaml: no such file"),
    "no baselines": (lambda b: (b / "eval_meta_data.csv").unlink(), "eval_meta_data.csv: no such file"),
    "no task file": (lambda b: (b / "eval_data" / "tasks" / "mc_zero.jsonl").unlink(), "mc_zero.jsonl: no such file"),
    "bad json": (lambda b: replace_line(b / "eval_data" / "tasks" / "mc_zero.jsonl", 3, "{oops"),
                 "mc_zero.jsonl:3: not valid JSON"),
    "mc shape": (lambda b: replace_line(b / "eval_data" / "tasks" / "mc_zero.jsonl", 5,
                                        json.dumps({"query": "q", "choices": ["a", "b"], "gold": 2})),
                 "mc_zero.jsonl:5: not a multiple_choice row; expected query (text), choices"),
    "schema shape": (lambda b: replace_line(b / "eval_data" / "tasks" / "schema_two.jsonl", 2,
                                            json.dumps({"context_options": "a", "continuation": "b", "gold": 0})),
                     "schema_two.jsonl:2: not a schema row"),
    "lm shape": (lambda b: replace_line(b / "eval_data" / "tasks" / "lm_three.jsonl", 4, json.dumps({"context": "a"})),
                 "lm_three.jsonl:4: not a language_modeling row; expected context (text), continuation (text)"),
    "task type": (lambda b: (b / "core.yaml").write_text((b / "core.yaml").read_text().replace(
        "icl_task_type: schema", "icl_task_type: cloze", 1)), "icl_task_type 'cloze'; expected one of"),
    "no baseline": (lambda b: (b / "eval_meta_data.csv").write_text(
        "Eval Task,Random baseline\nmc_zero,25\n"), "no 'Random baseline' for task 'mc_answer'"),
}


@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_a_bad_bundle_is_one_line_naming_the_file(case, bundle, hf_pair, tmp_path, capsys):
    damage, expected = BAD_BUNDLES[case]
    copy = copy_bundle(bundle, tmp_path)
    damage(copy)
    with pytest.raises(UserError) as err:
        load_core(copy)
    assert str(copy) in str(err.value) and expected in str(err.value)
    one_line_error(capsys, ["eval", "core", "--hf", str(hf_pair[1]), "--bundle", str(copy)], expected)


def test_bad_flags_and_tasks_are_one_line(bundle, hf_pair, capsys):
    hf = ["eval", "core", "--hf", str(hf_pair[1]), "--bundle", str(bundle)]
    one_line_error(capsys, [*hf, "--tasks", "mc_zero,hellaswag"], "--tasks: unknown task 'hellaswag'", "mc_zero")
    one_line_error(capsys, [*hf, "--max-per-task", "0"], "--max-per-task 0")
    one_line_error(capsys, [*hf, "--batch-size", "0"], "--batch-size 0")
    one_line_error(capsys, [*hf, "--max-per-task", "3", "--tasks", "mc_answer"],
                   "task mc_answer: 3 demonstrations per example need at least 4 rows, 3 kept")
    one_line_error(capsys, ["eval", "core", "--bundle", str(bundle)], "exactly one of --hf")
    one_line_error(capsys, [*hf[:4], "--bundle", str(bundle / "nowhere")], "--bundle", "no such directory")


def test_a_model_too_small_for_the_tokenizer_is_refused(bundle, tmp_path, capsys):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=BLOCK,
                                                              vocab_size=1000))
    hf.save_pretrained(tmp_path / "small_vocab")
    capsys.readouterr()
    one_line_error(capsys, ["eval", "core", "--hf", str(tmp_path / "small_vocab"), "--bundle", str(bundle),
                            "--tasks", "mc_zero"], "50,257")
    (data,) = load_core(bundle, ["mc_zero"], max_per_task=2)
    with pytest.raises(UserError, match=r"vocabulary has 1,000 tokens; CORE is tokenized with GPT-2's BPE \(50,257"):
        evaluate_task(GPT(GPTConfig(block_size=BLOCK, vocab_size=1000, n_layer=1, n_head=2, n_embd=32)), data, "cpu")


def test_rows_past_the_tokenizers_ids_change_no_verdict(bundle, reference, ours):
    """nanoGPT's 50,304-row vocabulary: the extra rows, given large logits here, stay out of the softmax."""
    wide = GPT(GPTConfig(block_size=BLOCK, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    state = ours.state_dict()
    with torch.no_grad():
        for name, p in wide.state_dict().items():
            if p.shape == state[name].shape:
                p.copy_(state[name])
            else:  # the token table, tied to the head: GPT-2's rows, then rows that would win every argmax
                p[:50257] = state[name]
                p[50257:] = 5 * state[name][:47]
    for data in load_core(bundle, ["mc_answer", "lm_zero"]):
        assert predictions(wide, data, list(range(len(data.rows))), "cpu") == reference[data.task.label]


def test_a_row_that_does_not_tokenize_apart_is_one_line(tmp_path, ours, capsys):
    root = write_bundle(tmp_path / "b", [("joined", "language_modeling", 0, "", 2, 0.0)], {"joined": JOINED})
    (data,) = load_core(root)
    with pytest.raises(UserError, match=r"joined.jsonl:2: the prompt without the continuation does not tokenize"):
        evaluate_task(ours, data, "cpu")


# --- the download ----------------------------------------------------------------------------------------


def bundle_zip(bundle) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                z.write(path, "eval_bundle/" + path.relative_to(bundle).as_posix())
    return buf.getvalue()


@pytest.fixture
def served(bundle, tmp_path, monkeypatch):
    """The bundle as a zip behind a file:// URL, with its sha256 pinned, and an empty cache."""
    data = bundle_zip(bundle)
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "eval_bundle.zip").write_bytes(data)
    monkeypatch.setattr(core, "EVAL_BUNDLE_URL", (tmp_path / "served" / "eval_bundle.zip").as_uri())
    monkeypatch.setattr(core, "EVAL_BUNDLE_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setenv("GPTSCRATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_the_bundle_is_downloaded_checked_and_unpacked_once(served, bundle, hf_pair, capsys):
    path = core.bundle_path()
    assert path == served / "cache" / "core" / "eval_bundle"
    assert (path / "core.yaml").read_text() == (bundle / "core.yaml").read_text()
    assert sorted(p.name for p in (served / "cache" / "core").iterdir()) == ["eval_bundle"]  # no zip, no temp
    (served / "served" / "eval_bundle.zip").unlink()
    assert core.bundle_path() == path  # cached: no second download
    assert main(["eval", "core", "--hf", str(hf_pair[1]), "--tasks", "lm_zero", "--max-per-task", "3", "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == {"lm_zero": 3}


def test_a_download_with_another_hash_leaves_nothing_in_the_cache(served, monkeypatch, hf_pair, capsys):
    monkeypatch.setattr(core, "EVAL_BUNDLE_SHA256", "0" * 64)
    with pytest.raises(UserError, match="sha256 .*, expected 0000"):
        core.bundle_path()
    assert list((served / "cache").iterdir()) == []
    one_line_error(capsys, ["eval", "core", "--hf", str(hf_pair[1])], "sha256", "--bundle DIR")
    assert list((served / "cache").iterdir()) == []


def test_offline_download_names_the_bundle_flag(monkeypatch, tmp_path, hf_pair, capsys):
    # port 9 (discard) on localhost refuses at once: the same failure as having no network
    monkeypatch.setattr(core, "EVAL_BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")
    monkeypatch.setenv("GPTSCRATCH_CACHE", str(tmp_path))
    one_line_error(capsys, ["eval", "core", "--hf", str(hf_pair[1])], "cannot download", "--bundle DIR")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
