"""gptscratch prepare against raw tiktoken: tokens/s of `prepare` on a local corpus against tiktoken's
`encode_ordinary_batch` over the same documents in a `multiprocessing.Pool` of as many workers.

gptscratch's data modules (and so tiktoken) are imported inside the functions that use them: `python -m
benchmarks gpu` imports this module too, and the GPU run needs only torch and transformers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import alternate, describe_machine, machine_info, print_json, quiet_log, summary
from gptscratch.errors import UserError

# A few hundred common words, for a synthetic corpus when no --corpus is given. Real text (FineWeb) is
# better: pass --corpus to measure on it.
_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think say help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
    "small end put home read hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world near build self earth "
    "father head stand own page should country found answer school grow study still learn plant cover food sun "
    "four between state keep eye never last let thought city tree cross farm hard start might story saw far sea "
    "draw left late run don't while press close night real life few north 1990 2024 3.14 $5 (see above) -- e.g."
).split()


def synthetic_corpus(directory: Path, docs: int, doc_chars: int, seed: int = 0) -> Path:
    """Write `docs` text files of about `doc_chars` characters of pseudo-English each."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        parts, n = [], 0
        while n < doc_chars:
            sentence = " ".join(rng.choices(_WORDS, k=rng.randint(5, 25)))
            sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!", ",\n"])
            if rng.random() < 0.1:
                sentence += "\n\n"
            parts.append(sentence)
            n += len(sentence) + 1
        (directory / f"doc{i:06d}.txt").write_text(" ".join(parts), encoding="utf-8")
    return directory


def read_documents(corpus: str, split_docs_on: str | None = None) -> list[str]:
    """The documents `prepare` reads from the local source `corpus`, through its own source reader, so that
    both sides of the comparison tokenize exactly the same texts (a directory of .txt files: one per file)."""
    from gptscratch.data.sources import open_source

    return list(open_source(corpus, split_docs_on=split_docs_on).documents(0))


_worker_encoding = None


def _init_worker() -> None:
    global _worker_encoding
    from gptscratch.tokenizer import get_encoding

    _worker_encoding = get_encoding()


def _encode_chunk(texts: list[str]):
    """One worker's share of the raw baseline: token ids with an <|endoftext|> before each document, as uint16."""
    from gptscratch.tokenizer import EOT_TOKEN

    out = []
    for ids in _worker_encoding.encode_ordinary_batch(texts, num_threads=1):
        out.append(np.array([EOT_TOKEN], dtype=np.uint16))
        out.append(np.asarray(ids, dtype=np.uint16))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint16)


def tiktoken_pool(docs: list[str], workers: int, chunk_docs: int = 64) -> int:
    """Tokens of `docs` encoded by a fresh Pool of `workers` processes (started inside the timing, as
    prepare's own must be), each calling tiktoken's encode_ordinary_batch on chunks of documents."""
    chunks = [docs[i : i + chunk_docs] for i in range(0, len(docs), chunk_docs)]
    with multiprocessing.Pool(workers, initializer=_init_worker) as pool:
        return sum(len(a) for a in pool.imap(_encode_chunk, chunks))


def _manifest_tokens(manifest: dict, out_dir: Path) -> int:
    """Token count from prepare's manifest, or from the size of the uint16 shards it wrote."""
    for key in ("tokens", "num_tokens", "total_tokens", "n_tokens"):
        if isinstance(manifest.get(key), int):
            return manifest[key]
    splits = manifest.get("splits")
    if isinstance(splits, dict):
        counts = [v.get("tokens") for v in splits.values() if isinstance(v, dict)]
        if counts and all(isinstance(c, int) for c in counts):
            return sum(counts)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.suffix in (".bin", ".npy"))
    return size // 2


def bench_prepare(corpus: Path, workers: int, repeats: int, work_dir: Path, split_docs_on: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    from gptscratch.data.prepare import prepare

    docs = read_documents(str(corpus), split_docs_on)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    counts: dict[str, int] = {}

    def run_prepare() -> None:
        out = work_dir / "prepared"
        shutil.rmtree(out, ignore_errors=True)
        manifest = prepare(str(corpus), out, workers=workers, split_docs_on=split_docs_on, progress=False)
        counts["prepare"] = _manifest_tokens(manifest if isinstance(manifest, dict) else {}, out)

    def run_tiktoken() -> None:
        counts["tiktoken"] = tiktoken_pool(docs, workers)

    log("  warm-up")
    run_tiktoken()  # also warms the page cache for prepare's reads
    run_prepare()
    log(f"  tokens: prepare {counts['prepare']:,}, raw tiktoken {counts['tiktoken']:,}")
    runs = {"gptscratch prepare": (run_prepare, counts["prepare"], repeats),
            "raw tiktoken": (run_tiktoken, counts["tiktoken"], repeats)}
    rates = alternate(runs, torch.device("cpu"), log)
    shutil.rmtree(work_dir / "prepared", ignore_errors=True)
    result = {"corpus": str(corpus), "documents": len(docs), "bytes": n_bytes, "workers": workers,
              "prepare": {**summary(rates["gptscratch prepare"]), "tokens": counts["prepare"]},
              "tiktoken": {**summary(rates["raw tiktoken"]), "tokens": counts["tiktoken"]}}
    result["ratio"] = result["prepare"]["tokens_per_s"] / result["tiktoken"]["tokens_per_s"]
    return result


def print_prepare(result: dict, machine: str) -> None:
    print(f"bench prepare: {result['corpus']} ({result['documents']} documents, {result['bytes'] / 1e6:.1f} MB), "
          f"{result['workers']} worker(s)")
    print(machine)
    print(f"{'implementation':<20} {'tokens/s':>12} {'min':>12} {'max':>12} {'tokens':>12}")
    for label, key in (("gptscratch prepare", "prepare"), ("raw tiktoken", "tiktoken")):
        r = result[key]
        print(f"{label:<20} {r['tokens_per_s']:>12.0f} {r['min']:>12.0f} {r['max']:>12.0f} {r['tokens']:>12,}")
    print(f"ratio prepare / raw tiktoken: {result['ratio']:.3f}x (medians of {result['prepare']['repeats']} "
          "alternating repeats)")
    sys.stdout.flush()


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.workers < 1 or args.docs < 1 or args.doc_chars < 1:
        raise UserError("--repeats, --workers, --docs and --doc-chars must be at least 1")
    info = machine_info(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="gptscratch-bench-") as tmp:
        work = Path(tmp)
        if args.corpus:
            corpus = Path(args.corpus).expanduser()
        else:
            corpus = synthetic_corpus(work / "corpus", args.docs, args.doc_chars, seed=args.seed)
        result = bench_prepare(corpus, args.workers, args.repeats, work, split_docs_on=args.split_docs_on,
                               log=quiet_log(not args.quiet))
        if not args.corpus:
            result["corpus"] = f"synthetic ({args.docs} docs x {args.doc_chars} chars, seed {args.seed})"
    print_prepare(result, describe_machine(info))
    if args.json:
        print_json({"bench": "prepare", "machine": info, **result})
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "prepare", help="gptscratch prepare tokens/s against raw tiktoken with the same workers",
        description="Tokens/s of gptscratch's data preparation on a local corpus against raw tiktoken "
                    "encode_ordinary_batch over the same documents in a multiprocessing.Pool of as many workers.")
    p.add_argument("--corpus", help="a local source prepare reads: a directory of .txt files (one document each), a "
                                    "file or a glob (default: a synthetic corpus)")
    p.add_argument("--split-docs-on", help="separator between documents inside a .txt file (as in prepare)")
    p.add_argument("--docs", type=int, default=4000, help="synthetic corpus: documents (default 4000, about 20 MB)")
    p.add_argument("--doc-chars", type=int, default=5000, help="synthetic corpus: characters each (default 5000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for both (default: cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)
