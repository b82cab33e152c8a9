"""`gptscratch eval core` against nanochat's `evaluate_task` on the same model and data, in one run.

    python -m benchmarks core --nanochat /path/to/nanochat            # GPT-2 124M's shape, synthetic tasks
    python -m benchmarks core --nanochat /path/to/nanochat --bundle ~/.cache/gptscratch/core/eval_bundle \\
        --max-per-task 20                                               # the real bundle's first 20 per task
    python -m benchmarks core --shape tiny --max-per-task 12            # a quick check, ours alone

The model has random weights of the chosen shape (speed does not depend on the values). Without --bundle
the data is six synthetic tasks shaped like CORE's: 10-shot multiple choice with long items (HellaSwag's
lengths, cropped to the context) and short ones (ARC's), 0-shot multiple choice (COPA's), a 0-shot schema
task (Winogrande's), 10-shot and 0-shot language modeling (SQuAD's and LAMBADA's). For each task the two
run one after the other on the same rows: ours (`gptscratch.evaluate.core.evaluate_task`) and nanochat's
`nanochat.core_eval.evaluate_task`, imported from the checkout given as --nanochat, with a GPT-2 BPE
tokenizer and the model behind the interface nanochat's models have (`model(ids)` returns the logits,
`max_seq_len` the context). The ratio is nanochat's total seconds over ours. nanochat's per-example
verdicts are recorded on the way (by wrapping its `evaluate_example`, which `evaluate_task` calls), so the
run also reports on how many examples the two agree. Without --nanochat ours runs alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import describe_machine, machine_info, print_json, quiet_log
from gptscratch.errors import UserError

SHAPES = {
    "124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=256),
}
_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year"
).split()
# label, type, demonstrations, delimiter, words in the query/context, in each choice/continuation, options
SYNTHETIC = (
    ("mc-long-10shot", "multiple_choice", 10, " ", 45, 15, 4),  # HellaSwag: some prompts overrun 1,024 tokens
    ("mc-short-10shot", "multiple_choice", 10, "\nAnswer: ", 25, 5, 4),  # ARC
    ("mc-0shot", "multiple_choice", 0, " ", 12, 6, 2),  # COPA
    ("schema-0shot", "schema", 0, " ", 18, 6, 2),  # Winogrande
    ("lm-10shot", "language_modeling", 10, "\nAnswer:", 90, 3, 1),  # SQuAD
    ("lm-0shot", "language_modeling", 0, " ", 70, 1, 1),  # LAMBADA
)


def synthetic_tasks(rows: int, seed: int = 0) -> list:
    """CORE-shaped tasks of pseudo-English rows, as `load_core` returns them."""
    from gptscratch.evaluate.core import Task, TaskData

    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choices(_WORDS, k=max(1, round(words * rng.uniform(0.6, 1.4)))))

    out = []
    for label, kind, shots, delimiter, long, short, options in SYNTHETIC:
        data = []
        for _ in range(rows):
            if kind == "multiple_choice":
                data.append({"query": text(long), "choices": [text(short) for _ in range(options)],
                             "gold": rng.randrange(options)})
            elif kind == "schema":
                data.append({"context_options": [text(long) for _ in range(options)], "continuation": text(short),
                             "gold": rng.randrange(options)})
            else:
                data.append({"context": text(long), "continuation": text(short)})
        task = Task(label, f"{label}.jsonl", kind, shots, delimiter, baseline=0.0)
        out.append(TaskData(task, data, [f"synthetic {label}:{i + 1}" for i in range(rows)]))
    return out


class PeerTokenizer:
    """GPT-2's BPE behind nanochat's tokenizer interface: `tok(texts, prepend=id)`, `get_bos_token_id()`."""

    def __init__(self):
        from gptscratch.tokenizer import get_encoding

        self.enc = get_encoding()

    def get_bos_token_id(self) -> int:
        from gptscratch.tokenizer import EOT_TOKEN

        return EOT_TOKEN

    def __call__(self, text, prepend=None):
        rows = self.enc.encode_ordinary_batch(text, num_threads=8) if isinstance(text, list) else [
            self.enc.encode_ordinary(text)]
        if prepend is not None:
            rows = [[prepend, *r] for r in rows]
        return rows if isinstance(text, list) else rows[0]


class PeerModel:
    """Our model behind nanochat's model interface: float32 logits of the tokenizer's ids, `max_seq_len` the context."""

    def __init__(self, model: torch.nn.Module, device: torch.device, amp: torch.dtype | None):
        self.model, self.device, self.amp = model, device, amp
        self.max_seq_len = model.config.block_size

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        from gptscratch.precision import autocast
        from gptscratch.tokenizer import VOCAB_SIZE

        with autocast(self.device, self.amp):
            logits, _ = self.model(ids)
        return logits[..., :VOCAB_SIZE].float()  # nanochat's models slice their padded head to the tokenizer's


def import_nanochat(path: str):
    """nanochat.core_eval from the checkout at `path`."""
    root = Path(path).expanduser().resolve()
    if not (root / "nanochat" / "core_eval.py").is_file():
        raise UserError(f"--nanochat {path}: no nanochat/core_eval.py there; expected a nanochat checkout")
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("nanochat.core_eval")
    except ImportError as e:
        raise UserError(f"--nanochat {path}: cannot import nanochat.core_eval ({e}); it needs jinja2") from None
    finally:
        sys.path.remove(str(root))


@contextlib.contextmanager
def recording(core_eval, verdicts: dict):
    """nanochat's evaluate_task with each evaluate_example's verdict kept in `verdicts` (index -> bool)."""
    original = core_eval.evaluate_example

    def evaluate_example(idx, *args, **kwargs):
        verdicts[idx] = bool(original(idx, *args, **kwargs))
        return verdicts[idx]

    core_eval.evaluate_example = evaluate_example
    try:
        yield
    finally:
        core_eval.evaluate_example = original


def run(args: argparse.Namespace) -> dict:
    from gptscratch.evaluate.core import evaluate_task, load_core, parse_tasks
    from gptscratch.model import GPT, GPTConfig
    from gptscratch.precision import autocast_dtype
    from gptscratch.tokenizer import get_encoding

    log = quiet_log(not args.quiet)
    device = torch.device(args.device)
    if args.max_per_task < 1 or args.batch_size < 1:
        raise UserError("--max-per-task and --batch-size must be at least 1")
    peer = import_nanochat(args.nanochat) if args.nanochat else None
    if args.bundle:
        tasks = load_core(args.bundle, parse_tasks(args.tasks), args.max_per_task)
    else:
        tasks = synthetic_tasks(args.max_per_task)
        if args.tasks:
            wanted = parse_tasks(args.tasks)
            tasks = [t for t in tasks if t.task.label in wanted]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPES[args.shape])).to(device).eval()
    amp = autocast_dtype(args.dtype, device)
    get_encoding()  # built once, outside either timing
    with torch.no_grad():  # first-call costs (allocator, kernels) outside either timing too
        model(torch.zeros(1, 8, dtype=torch.long, device=device))
    info = machine_info(device)
    log(f"bench core: {args.shape} model on {device}, dtype {args.dtype}, batch {args.batch_size}, "
        f"{'bundle ' + args.bundle if args.bundle else 'synthetic tasks'}, up to {args.max_per_task} examples a task")
    log(describe_machine(info))
    if peer is None:
        log("nanochat: skipped (pass --nanochat PATH, a nanochat checkout, to time its evaluate_task beside ours)")
    rows = []
    for data in tasks:
        t = data.task
        ours = evaluate_task(model, data, device, batch_size=args.batch_size, amp=amp)
        row = {"task": t.label, "type": t.task_type, "shots": t.num_fewshot, "examples": ours["examples"],
               "gptscratch_s": ours["seconds"], "gptscratch_acc": ours["accuracy"]}
        if peer is not None:
            meta = {"task_type": t.task_type, "num_fewshot": t.num_fewshot, "continuation_delimiter": t.delimiter,
                    "dataset_uri": t.dataset_uri}
            verdicts: dict[int, bool] = {}
            with recording(peer, verdicts):
                t0 = time.perf_counter()
                acc = peer.evaluate_task(PeerModel(model, device, amp), PeerTokenizer(), data.rows, device, meta)
                row["nanochat_s"] = time.perf_counter() - t0
            row["nanochat_acc"] = acc
            row["agree"] = sum(verdicts[i] == c for i, c in enumerate(ours["correct"]))
            row["ratio"] = row["nanochat_s"] / row["gptscratch_s"]
        rows.append(row)
        log(format_row(row))
    result = {"bench": "core", "shape": args.shape, "device": str(device), "dtype": args.dtype,
              "batch_size": args.batch_size, "data": args.bundle or "synthetic", "machine": info, "tasks": rows,
              "gptscratch_s": sum(r["gptscratch_s"] for r in rows)}
    if peer is not None:
        result["nanochat_s"] = sum(r["nanochat_s"] for r in rows)
        result["ratio"] = result["nanochat_s"] / result["gptscratch_s"]
        result["agree"] = sum(r["agree"] for r in rows)
        result["examples"] = sum(r["examples"] for r in rows)
        log(f"total: gptscratch {result['gptscratch_s']:.1f} s, nanochat {result['nanochat_s']:.1f} s: "
            f"{result['ratio']:.2f}x nanochat's speed; same verdict on {result['agree']}/{result['examples']} examples")
    else:
        log(f"total: gptscratch {result['gptscratch_s']:.1f} s")
    if args.json:
        print_json(result)
    return result


def format_row(r: dict) -> str:
    line = (f"  {r['task']:<24} {r['type']:<17} {r['shots']:>2}-shot {r['examples']:>5} examples  "
            f"gptscratch {r['gptscratch_s']:8.2f} s (acc {r['gptscratch_acc']:.3f})")
    if "nanochat_s" in r:
        line += (f"  nanochat {r['nanochat_s']:8.2f} s (acc {r['nanochat_acc']:.3f})  {r['ratio']:5.2f}x  "
                 f"agree {r['agree']}/{r['examples']}")
    return line


def add_parsers(sub) -> None:
    p = sub.add_parser("core", help="eval core against nanochat's evaluate_task, same model and data",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--nanochat", metavar="PATH", help="a nanochat checkout to time beside ours (default: ours alone)")
    p.add_argument("--bundle", metavar="DIR", help="an unpacked eval_bundle (default: synthetic CORE-shaped tasks)")
    p.add_argument("--tasks", metavar="A,B,...", help="only these tasks")
    p.add_argument("--max-per-task", type=int, default=12, metavar="N",
                   help="examples a task (synthetic: rows made; bundle: kept after the shuffle; default 12)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="124m")
    p.add_argument("--batch-size", type=int, default=16, help="ours: examples per forward pass (default 16)")
    p.add_argument("--dtype", choices=["float32", "bf16"], default="float32", help="both run under it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda args: run(args) and 0)
