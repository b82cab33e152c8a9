"""Two BPE trainers on the same text and settings: `rustbpe` (nanochat's, what `gptscratch tokenizer train` uses)
and Hugging Face's `tokenizers`.

    python -m benchmarks bpe-trainers [--corpus stdlib] [--vocab-sizes 8192,32768] [--repeats 3]

The text (`--corpus`): by default `stdlib`, the .py files of the running Python's standard library with its
test packages (`test`, `tests`, `idle_test`) and site-packages left out, in path order (Python 3.11: 734 files,
12.1 MB): real code of many authors, present wherever the benchmark runs, about the size of the code corpus
a small model trains on. `numpy` takes numpy's own source instead (as `recipes numpy-corpus` does, 4.4 MB);
anything else is a corpus spec `prepare` accepts (its documents). Every 10th document (the 10th, 20th, ...)
is held out: neither trainer sees it, and bytes/token is measured on it.

The settings, identical for both: GPT-4's split pattern with digits in pairs (gptscratch.bpe.GPT4_PATTERN),
the 256 bytes as the base alphabet, `vocab - 5` ids learned (the 5 special tokens take the ids after them and
are never learned: each document is cut around their spellings first, as `bpe.training_texts` does, and both
trainers get the same list of pieces). rustbpe: `Tokenizer().train_from_iterator(pieces, vocab - 5,
pattern=...)`. tokenizers: a BPE model, pre-tokenizer Sequence[Split(the same regex, isolated),
ByteLevel(use_regex=False)], `BpeTrainer(vocab_size=vocab - 5, initial_alphabet=ByteLevel.alphabet())`. Both
use every core (rayon's default).

Each training runs in a process of its own, in turn (rustbpe, tokenizers, rustbpe, ... for each vocabulary
size and repeat), so one's memory never counts for the other:
- `seconds`: the training call alone (the imports and reading the pieces are done before it);
- `peak MiB`: the resident set's high-water mark during the training call above the resident set just
  before it, i.e. above the interpreter holding the same imports and the same text (the mark is reset
  through /proc/self/clear_refs before the call; where that fails, ru_maxrss minus the RSS before);
- `bytes/token`: UTF-8 bytes of the held-out pieces over their token count (rustbpe's merges through
  tiktoken, as gptscratch encodes; tokenizers' through its own encoder);
- `shared`: the fraction of the learned vocabulary the two have in common (the same tokens as bytes).
Figures are medians over `--repeats`. Last line: one JSON object (also written to `--json FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

TRAINERS = ("rustbpe", "tokenizers")
HELD_OUT_EVERY = 10
TEST_DIRS = {"test", "tests", "idle_test"}


# --- the corpus ----------------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and not TEST_DIRS & set(p.relative_to(root).parts))


def numpy_files() -> list[Path]:
    import numpy

    root = Path(numpy.__file__).parent
    return sorted(p for p in root.rglob("*.py") if "tests" not in p.parts)


def read_texts(files: list[Path]) -> list[str]:
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):  # a few files carry another encoding on purpose
            continue
    return texts


def corpus_documents(spec: str) -> list[str]:
    if spec == "stdlib":
        return read_texts(stdlib_files())
    if spec == "numpy":
        return read_texts(numpy_files())
    from gptscratch.data.sources import open_source

    return list(open_source(spec).documents(0))


def split_corpus(docs: list[str], special: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(training pieces, held-out pieces): every HELD_OUT_EVERY-th document held out, each document cut around
    the special tokens' spellings (so neither trainer learns one, and an encoder never meets one)."""
    splitter = re.compile("|".join(re.escape(s) for s in special))
    train, held = [], []
    for i, doc in enumerate(docs):
        pieces = [p for p in splitter.split(doc) if p]
        (held if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).extend(pieces)
    return train, held


# --- one training, in its own process ------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table, the alphabet `tokenizers`' ByteLevel spells tokens in."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def child(trainer: str, pieces_file: str, vocab_size: int, n_special: int, pattern: str, out: str) -> None:
    """Train once with `trainer` on the pieces in `pieces_file`; write the figures (and the learned tokens as
    hex, one a line, to `out` + ".tokens") to `out`."""
    import resource

    data = json.loads(Path(pieces_file).read_text(encoding="utf-8"))
    train, held = data["train"], data["held"]
    del data
    n_learned = vocab_size - n_special
    if trainer == "rustbpe":
        import rustbpe
        import tiktoken

        tok = rustbpe.Tokenizer()
    else:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        bpe_trainer = trainers.BpeTrainer(vocab_size=n_learned, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rss_before = _status_kib("VmRSS") or 0
    reset = _reset_peak()
    t0 = time.perf_counter()
    if trainer == "rustbpe":
        tok.train_from_iterator(train, n_learned, pattern=pattern)
    else:
        tok.train_from_iterator(train, trainer=bpe_trainer)
    seconds = time.perf_counter() - t0
    hwm = _status_kib("VmHWM") if reset else None
    peak_kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # held-out bytes/token (not timed), and the learned tokens as bytes
    if trainer == "rustbpe":
        ranks = {bytes(t): r for t, r in tok.get_mergeable_ranks()}
        enc = tiktoken.Encoding("bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(held))
        learned = list(ranks)
    else:
        tokens = sum(len(e.ids) for e in tok.encode_batch(held, add_special_tokens=False))
        back = {c: b for b, c in bytes_to_unicode().items()}
        learned = [bytes(back[c] for c in t) for t in tok.get_vocab()]
    held_bytes = sum(len(p.encode("utf-8")) for p in held)
    Path(out + ".tokens").write_text("".join(t.hex() + "\n" for t in sorted(learned)))
    Path(out).write_text(json.dumps({
        "trainer": trainer, "vocab_size": vocab_size, "learned": len(learned), "seconds": seconds,
        "rss_before_mib": rss_before / 1024, "peak_mib": (peak_kib - rss_before) / 1024,
        "peak_total_mib": peak_kib / 1024, "peak_from": "VmHWM" if hwm is not None else "ru_maxrss",
        "held_bytes": held_bytes, "held_tokens": tokens, "bytes_per_token": held_bytes / tokens}))


def run_child(trainer: str, pieces_file: Path, vocab_size: int, n_special: int, pattern: str, out: Path) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    code = (f"from benchmarks.bpe_trainers import child; child({trainer!r}, {str(pieces_file)!r}, {vocab_size}, "
            f"{n_special}, {pattern!r}, {str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{trainer} at vocab {vocab_size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# --- the benchmark -------------------------------------------------------------------------------


def bench(corpus: str, vocab_sizes: list[int], repeats: int, work: Path, log=print) -> dict:
    import importlib.metadata

    from benchmarks.harness import _cpu_model
    from gptscratch.bpe import GPT4_PATTERN, SPECIAL_TOKENS

    docs = corpus_documents(corpus)
    n_docs = len(docs)
    train, held = split_corpus(docs, SPECIAL_TOKENS)
    train_bytes = sum(len(p.encode("utf-8")) for p in train)
    held_bytes = sum(len(p.encode("utf-8")) for p in held)
    log(f"corpus {corpus}: {n_docs} documents, training text {train_bytes / 1e6:.2f} MB, held out "
        f"{held_bytes / 1e6:.2f} MB (every {HELD_OUT_EVERY}th document)")
    pieces = work / "pieces.json"
    pieces.write_text(json.dumps({"train": train, "held": held}), encoding="utf-8")
    del train, held, docs
    runs: dict[str, dict[str, list[dict]]] = {str(v): {t: [] for t in TRAINERS} for v in vocab_sizes}
    for r in range(repeats):
        for v in vocab_sizes:
            for t in TRAINERS if r % 2 == 0 else TRAINERS[::-1]:  # A B, then B A: neither always goes first
                out = work / f"{t}-{v}-{r}.json"
                res = run_child(t, pieces, v, len(SPECIAL_TOKENS), GPT4_PATTERN, out)
                runs[str(v)][t].append(res)
                log(f"  repeat {r + 1}/{repeats} vocab {v:>6,} {t:<10} {res['seconds']:7.2f} s  "
                    f"{res['peak_mib']:8.1f} MiB  {res['bytes_per_token']:.4f} bytes/token")
    rows = []
    for v in vocab_sizes:
        sets = {t: set((work / f"{t}-{v}-0.json.tokens").read_text().split()) for t in TRAINERS}
        shared = len(sets["rustbpe"] & sets["tokenizers"]) / max(len(s) for s in sets.values())
        for t in TRAINERS:
            rs = runs[str(v)][t]
            rows.append({"trainer": t, "vocab_size": v, "learned": rs[0]["learned"],
                         "seconds": statistics.median(x["seconds"] for x in rs),
                         "seconds_all": [x["seconds"] for x in rs],
                         "peak_mib": statistics.median(x["peak_mib"] for x in rs),
                         "peak_mib_all": [x["peak_mib"] for x in rs],
                         "peak_total_mib": statistics.median(x["peak_total_mib"] for x in rs),
                         "peak_from": rs[0]["peak_from"],
                         "bytes_per_token": rs[0]["bytes_per_token"],
                         "bytes_per_token_same_every_repeat": len({x["bytes_per_token"] for x in rs}) == 1,
                         "shared_vocab": shared})
    versions = {p: importlib.metadata.version(p) for p in ("rustbpe", "tokenizers", "tiktoken")}
    return {"bench": "bpe-trainers", "corpus": corpus, "documents": n_docs,
            "train_bytes": train_bytes, "held_out_bytes": held_bytes, "repeats": repeats,
            "pattern": "gpt4 (digits in pairs)", "special_tokens": len(SPECIAL_TOKENS),
            "machine": {"cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "python": sys.version.split()[0],
                        **versions},
            "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n| vocab | trainer | seconds (median of {result['repeats']}) | peak MiB above the loaded interpreter "
          "| held-out bytes/token | tokens shared |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['vocab_size']:,} | {r['trainer']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
              f"{r['bytes_per_token']:.3f} | {r['shared_vocab']:.1%} |")
    for v in sorted({r["vocab_size"] for r in result["rows"]}):
        a, b = (next(r for r in result["rows"] if r["vocab_size"] == v and r["trainer"] == t) for t in TRAINERS)
        print(f"vocab {v:,}: tokenizers / rustbpe: {b['seconds'] / a['seconds']:.2f}x the time, "
              f"{b['peak_mib'] / max(a['peak_mib'], 1e-9):.1f}x the memory")


def run(args: argparse.Namespace) -> int:
    from benchmarks.harness import int_list

    vocab_sizes = int_list(args.vocab_sizes, "--vocab-sizes")
    from gptscratch.bpe import check_vocab_size

    for v in vocab_sizes:
        check_vocab_size(v)
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(args.corpus, vocab_sizes, args.repeats, Path(tmp))
    print_table(result)
    if args.json:
        # imported here, not at the top: each trainer's process imports this module, and harness loads torch
        from benchmarks.harness import save_json

        save_json(args.json, result)
    print(json.dumps(result))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("bpe-trainers", help="rustbpe against HF tokenizers: time, peak memory, held-out bytes/token",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="stdlib",
                   help="stdlib (Python's standard library source, tests left out), numpy (numpy's source), or a "
                   "corpus spec prepare accepts; every 10th document is held out")
    p.add_argument("--vocab-sizes", default="8192,32768", help="ids in all, the 5 special tokens included")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", metavar="FILE",
                   help="also write the result here (e.g. benchmarks/results/cpu_bpe_trainers.json)")
    p.set_defaults(func=run)
