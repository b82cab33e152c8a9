"""A tokenizer trained on the corpus against GPT-2's: bytes per token, then the same model (but for its vocabulary)
trained with each for the same wall-clock, compared in val bits per byte (the one loss that compares across
tokenizers).

    python -m benchmarks tokenizer-bpb text    --data data/shakespeare,data/numpy-src
    python -m benchmarks tokenizer-bpb bytes   --data data/shakespeare --vocab-sizes 2048,4096,8192
    python -m benchmarks tokenizer-bpb compare --data data/shakespeare --vocab-sizes 4096 --budget 120
    python -m benchmarks tokenizer-bpb report  [--out runs/tokenizer-bpb]

Each corpus (`--data`, a directory `gptscratch prepare` made with GPT-2's tokenizer) gets a working directory
`--out/NAME` (NAME: the data directory's name). The modes build on each other, and each reuses what an
earlier one left there:

- `text`: the corpus back as text: its val split's documents to `val.jsonl`, its train split's to
  `train.jsonl` ({"text": ...} a line, in stream order; a document is the tokens after an `<|endoftext|>`),
  and both, val first, to `all.jsonl`. The document prepare cut at the val/train boundary stays cut there
  (at the last whole UTF-8 character before the cut): val.jsonl holds exactly the original val text.
  Documents of whitespace only are left out (prepare gives them no tokens).
- `bytes`: for each `--vocab-sizes` V, `gptscratch tokenizer train train.jsonl --vocab-size V --out bpeV`
  (train text only), then `gptscratch tokenizer eval bpeV... --data val.jsonl --json` (val text only):
  bytes/token of each beside GPT-2's.
- `compare`: for GPT-2's tokenizer and each trained `bpeV`: prepare, calibrate, train, score.

How val stays the same text for every tokenizer (the fairness the comparison rests on): prepare cuts val
by tokens, and a cut by tokens falls at a different place in the text for each tokenizer. So each
tokenizer prepares `all.jsonl` (val documents first, in order, then train's, no shuffle) with `--val-tokens`
set to the val documents' exact token count under that tokenizer, counted beforehand with the same encoder
(one `<|endoftext|>` per document, which prepare puts before each, plus its ordinary tokens): the val split
is then exactly the val documents, whole, and train exactly the train documents. This is checked after
prepare: the val shards, decoded and split at `<|endoftext|>`, must give back val.jsonl byte for byte. The
other way, preparing val.jsonl and train.jsonl as two corpora, would need a data directory made of two
prepares; this way each is one ordinary `gptscratch prepare` (with `--tokenizer bpeV` for a trained one) whose
split rule does the work.

Then, per corpus and tokenizer (`gpt2`, `bpeV`), with the `--preset` (modern-demo) model:
1. calibrate: `--calib-steps` steps (the first 5 not counted), `--calib-repeats` times, tokenizers in turn:
   the median s/step (kept in calibration.json). The vocabulary sets the size of the embedding and the head,
   so each tokenizer has its own: modern-demo with GPT-2's takes about 0.96 s a step on 2 CPU cores, so the
   default `--budget 120` gives it about 125 steps, and 290 about the preset's own 300.
2. `--max-steps` = `--budget` / (s/step), so every tokenizer gets the same seconds of training steps;
   warmup scaled with it as the preset's own (its warmup_steps / max_steps: 30/300 for modern-demo); the
   wsd decay is a fraction of --max-steps already. No evaluation, checkpoint or samples during the run.
3. `gptscratch train --preset P --data D --seed S --max-steps N --warmup-steps W` for each `--seeds` S.
4. `gptscratch eval loss --ckpt RUN --data D --json` over every val window: val loss and bits per byte (the
   summed loss over the scored tokens over the UTF-8 bytes they stand for). Each tokenizer's windows leave
   out at most one window's tail of val (seq_len tokens): bpb is a rate over what was scored, so this does
   not bias it. The bytes it scored must be nearly all of val.jsonl's (85-100%; on Shakespeare 99.97%), or
   the benchmark stops: bpb over another byte count would compare nothing.
Each run leaves `record.json` in its run directory (a finished one is reused). `report` reads only those:
per corpus and tokenizer, val bpb mean ± sd over seeds, val loss, steps, tokens/s, seconds of training steps
and wall-clock, and each trained tokenizer's bpb against GPT-2's (difference and Welch's t). Last line of
every mode: one JSON object (also written to `--json FILE`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import save_json

DEFAULT_OUT = Path("runs/tokenizer-bpb")
DEFAULT_VOCABS = {"bytes": "2048,4096,8192", "compare": "4096"}
SKIPPED_STEPS = 5  # the first steps of a run are slower (allocation, first kernels): not counted in s/step


def run_subprocess(args: list[str]) -> str:
    """`python -m gptscratch ARGS` in a process of its own; its stdout. A failure stops the benchmark with its
    stderr."""
    cmd = [sys.executable, "-m", "gptscratch", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


RUNNER = run_subprocess  # the tests run the same commands in their own process (no interpreter start each)


def gptscratch(*args: str) -> str:
    return RUNNER(list(args))


def last_json(text: str):
    return json.loads(text.strip().splitlines()[-1])


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")


# --- text: a GPT-2 data directory back into documents -------------------------------------------


def split_stream(tokens: np.ndarray, eot: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the tokens before the first `eot`, each document after an `eot` without it)."""
    at = np.flatnonzero(tokens == eot)
    pieces = np.split(tokens, at)
    return pieces[0], [p[1:] for p in pieces[1:]]


def utf8_boundary(data: bytes) -> int:
    """The length of the longest prefix of `data` that ends on a whole UTF-8 character (a token cut can fall
    inside one: GPT-2's byte-level tokens may hold part of a character)."""
    for k in range(min(4, len(data) + 1)):
        try:
            data[:len(data) - k].decode("utf-8")
            return len(data) - k
        except UnicodeDecodeError:
            continue
    raise ValueError("not UTF-8 text cut at a token boundary")


def split_tokens(data: Path, split: str) -> np.ndarray:
    from gptscratch.data.shards import find_shards, open_shard

    shards = find_shards(data, split)
    return np.concatenate([np.asarray(open_shard(s.path, sha256=s.sha256, check_vocab=False)) for s in shards])


def extract_text(data: Path, work: Path) -> dict:
    """val.jsonl, train.jsonl and all.jsonl in `work` from the GPT-2 data directory `data` (see the docstring);
    their description (also text.json). Reused when text.json names the same shards."""
    from gptscratch.data.shards import read_manifest
    from gptscratch.errors import UserError
    from gptscratch.tokenizer import EOT_TOKEN, get_encoding

    manifest = read_manifest(data)
    if manifest is None:
        raise UserError(f"--data {data}: no manifest.json; expected a directory `gptscratch prepare` made")
    if "chat" in manifest or manifest.get("tokenizer", {}).get("name") != "gpt2" or (data / "tokenizer").exists():
        raise UserError(f"--data {data}: expected text prepared with GPT-2's tokenizer (no --chat, no --tokenizer)")
    shards = [s["sha256"] for s in manifest["shards"]]
    described = work / "text.json"
    if described.exists():
        info = json.loads(described.read_text())
        if info.get("shards") == shards and all((work / f).exists() for f in ("val.jsonl", "train.jsonl", "all.jsonl")):
            return info
    enc = get_encoding()
    val_head, val_docs = split_stream(split_tokens(data, "val"), EOT_TOKEN)
    train_head, train_docs = split_stream(split_tokens(data, "train"), EOT_TOKEN)
    val = ([val_head] if len(val_head) else []) + val_docs  # a stream that does not open with <|endoftext|>
    val_bytes = [enc.decode_bytes(d.tolist()) for d in val]
    train_bytes = [enc.decode_bytes(d.tolist()) for d in train_docs]
    if len(train_head):  # the document the val/train cut went through: each side keeps its part
        cut = utf8_boundary(val_bytes[-1])
        val_bytes[-1], moved = val_bytes[-1][:cut], val_bytes[-1][cut:]
        train_bytes.insert(0, moved + enc.decode_bytes(train_head.tolist()))
    try:
        val_text = [t for t in (b.decode("utf-8") for b in val_bytes) if t and not t.isspace()]
        train_text = [t for t in (b.decode("utf-8") for b in train_bytes) if t and not t.isspace()]
    except UnicodeDecodeError as e:
        raise UserError(f"--data {data}: a document is not UTF-8 text ({e})") from None
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "val.jsonl", val_text)
    write_jsonl(work / "train.jsonl", train_text)
    write_jsonl(work / "all.jsonl", val_text + train_text)
    info = {"data": str(data), "shards": shards, "straddler_cut": bool(len(train_head)),
            "val_documents": len(val_text), "train_documents": len(train_text),
            "val_bytes": sum(len(t.encode("utf-8")) for t in val_text),
            "train_bytes": sum(len(t.encode("utf-8")) for t in train_text),
            "val_gpt2_tokens": int(sum(len(d) for d in val)), "train_gpt2_tokens": int(sum(len(d) for d in train_docs))}
    described.write_text(json.dumps(info, indent=1) + "\n")
    return info


# --- bytes: train tokenizers on train, weigh them on val ----------------------------------------


def train_tokenizer(work: Path, vocab_size: int) -> Path:
    """`work/bpeV`, trained on train.jsonl (reused when it already is, from the same text)."""
    tok = work / f"bpe{vocab_size}"
    spec = str(work / "train.jsonl")
    manifest = tok / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        chars = sum(len(t) for t in read_jsonl(work / "train.jsonl"))
        if m.get("vocab_size") == vocab_size and m.get("source", {}).get("spec") == spec and m.get("chars") == chars:
            return tok
    gptscratch("tokenizer", "train", spec, "--vocab-size", str(vocab_size), "--out", str(tok), "--quiet")
    return tok


def bytes_stage(work: Path, vocab_sizes: list[int]) -> list[dict]:
    toks = [train_tokenizer(work, v) for v in vocab_sizes]
    rows = json.loads(gptscratch("tokenizer", "eval", *map(str, toks), "--data", str(work / "val.jsonl"), "--json",
                                 "--max-chars", str(10**12), "--quiet"))
    base = rows[0]["bytes_per_token"]
    for row in rows:
        row["tokenizer"] = Path(row["tokenizer"]).name
        row["vs_gpt2"] = row["bytes_per_token"] / base
    return rows


def print_bytes(corpus: str, rows: list[dict]) -> None:
    print(f"\n{corpus}: val bytes per token (tokenizers trained on train only)\n"
          "| tokenizer | vocab | val tokens | bytes/token | vs GPT-2 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['tokens']:,} | {r['bytes_per_token']:.3f} | "
              f"{r['vs_gpt2']:.3f}x |")


# --- compare: the same model trained with each tokenizer for the same seconds -------------------


def encoder(tok: Path | None):
    from gptscratch.bpe import load
    from gptscratch.tokenizer import get_encoding

    return get_encoding() if tok is None else load(tok)


def val_token_count(enc, docs: list[str]) -> tuple[int, int]:
    """(tokens prepare gives `docs`: one <|endoftext|> and the ordinary tokens each, the ordinary tokens alone)."""
    text = sum(len(ids) for ids in enc.encode_ordinary_batch(docs))
    return text + len(docs), text


def prepare_command(work: Path, out: Path, val_tokens: int, tok: Path | None) -> list[str]:
    return ["prepare", str(work / "all.jsonl"), "--out", str(out), "--val-tokens", str(val_tokens), "--quiet",
            *(["--tokenizer", str(tok)] if tok is not None else [])]


def check_val(data: Path, enc, docs: list[str], val_tokens: int) -> None:
    """The val split of `data` is exactly `docs`, each after an <|endoftext|>, or the comparison is off."""
    from gptscratch.data.shards import read_manifest

    got = read_manifest(data)["splits"]["val"]["tokens"]
    if got != val_tokens:
        raise SystemExit(f"{data}: val holds {got:,} tokens, not the {val_tokens:,} of the val documents")
    head, pieces = split_stream(split_tokens(data, "val"), enc.eot_token)
    if len(head) or [enc.decode_bytes(p.tolist()) for p in pieces] != [d.encode("utf-8") for d in docs]:
        raise SystemExit(f"{data}: the val split does not decode to the val documents")


def prepare_arm(work: Path, name: str, tok: Path | None) -> dict:
    """`work/data-NAME`: all.jsonl prepared with the tokenizer, val exactly the val documents (checked)."""
    from gptscratch.data.shards import read_manifest

    enc = encoder(tok)
    docs = read_jsonl(work / "val.jsonl")
    val_tokens, text_tokens = val_token_count(enc, docs)
    out = work / f"data-{name}"
    cmd = prepare_command(work, out, val_tokens, tok)
    try:  # an earlier prepare of the same text with the same tokenizer is reused
        if not (out / "manifest.json").exists() or read_manifest(out)["settings"]["source"] != cmd[1]:
            raise SystemExit("not prepared")
        check_val(out, enc, docs, val_tokens)
    except SystemExit:
        gptscratch(*cmd, "--overwrite")
        check_val(out, enc, docs, val_tokens)
    val_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"name": name, "data": str(out), "tokenizer": str(tok) if tok else "gpt2", "vocab_size": enc.n_vocab,
            "val_tokens": val_tokens, "val_bytes": val_bytes, "val_bytes_per_token": val_bytes / text_tokens,
            "prepare": " ".join(["gptscratch", *cmd])}


def step_times(run: Path) -> list[float]:
    from gptscratch.plot import read_metrics

    return [m["dt_ms"] / 1000 for m in read_metrics(run) if "dt_ms" in m]


def train_args(preset: str, data: str, out: Path, seed: int, max_steps: int, warmup: int, eval_interval: int) -> list:
    return ["train", "--preset", preset, "--data", data, "--out", str(out), "--seed", str(seed),
            "--max-steps", str(max_steps), "--warmup-steps", str(warmup), "--eval-interval", str(eval_interval),
            "--ckpt-interval", "0", "--num-samples", "0", "--device", "cpu", "--overwrite"]


def calibrate(work: Path, arms: list[dict], preset: str, steps: int, repeats: int) -> dict[str, float]:
    """Median s/step of each arm's training step, the arms in turn, `repeats` short runs each. Kept in
    calibration.json and reused for the same arms and settings, so a compare run again (after an interruption,
    or with more seeds) gives the same --max-steps and reuses its finished runs."""
    if steps <= SKIPPED_STEPS:
        raise SystemExit(f"--calib-steps {steps}: expected more than {SKIPPED_STEPS} (the first are not counted)")
    key = {"preset": preset, "steps": steps, "repeats": repeats,
           "arms": {a["name"]: [a["data"], a["vocab_size"], a["val_tokens"]] for a in arms}}
    saved = work / "calibration.json"
    if saved.exists() and json.loads(saved.read_text())["key"] == key:
        return json.loads(saved.read_text())["s_per_step"]
    times: dict[str, list[float]] = {a["name"]: [] for a in arms}
    for r in range(repeats):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            run = work / "calibrate" / f"{arm['name']}-{r}"
            gptscratch(*train_args(preset, arm["data"], run, 1337, steps, 0, 0))
            times[arm["name"]] += step_times(run)[SKIPPED_STEPS:]
    speed = {name: statistics.median(t) for name, t in times.items()}
    saved.write_text(json.dumps({"key": key, "s_per_step": speed, "all": times}, indent=1) + "\n")
    return speed


def schedule(preset: str, budget: float, s_per_step: float) -> tuple[int, int]:
    """(--max-steps, --warmup-steps) for `budget` seconds of steps, warmup the preset's fraction of the run."""
    from gptscratch.train.config import resolve_config

    cfg = resolve_config(preset)
    steps = max(1, round(budget / s_per_step))
    return steps, round(steps * cfg.warmup_steps / cfg.max_steps)


def train_arm(work: Path, corpus: str, arm: dict, preset: str, seed: int, steps: int, warmup: int,
              s_per_step: float, budget: float, eval_interval: int) -> dict:
    from gptscratch.train.config import resolve_config

    run = work / "runs" / f"{arm['name']}-{seed}"
    settings = {"preset": preset, "data": arm["data"], "seed": seed, "max_steps": steps, "warmup_steps": warmup,
                "eval_interval": eval_interval}
    record_path = run / "record.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            return record
    t0 = time.perf_counter()
    gptscratch(*train_args(preset, arm["data"], run, seed, steps, warmup, eval_interval))
    wall = time.perf_counter() - t0
    val = last_json(gptscratch("eval", "loss", "--ckpt", str(run), "--data", arm["data"], "--device", "cpu",
                               "--json"))
    scored = val["bytes"] / arm["val_bytes"]  # all but the split's first token and the last window's tail
    if not 0.85 <= scored <= 1.0:  # bits per byte over bytes that are not this val text's would compare nothing
        raise SystemExit(f"eval loss of {run} scored {val['bytes']:,} bytes of the val text's {arm['val_bytes']:,}; "
                         "expected nearly all: does it count bytes with the data directory's tokenizer?")
    dts = step_times(run)
    cfg = resolve_config(preset)
    train_s = sum(dts)
    record = {"corpus": corpus, "tokenizer": arm["name"], "vocab_size": arm["vocab_size"], "seed": seed,
              "settings": settings, "budget_s": budget, "s_per_step_calibrated": s_per_step,
              "steps": len(dts), "train_s": train_s, "wall_s": wall,
              "s_per_step": statistics.median(dts[SKIPPED_STEPS:] or dts),
              "tokens_per_s": len(dts) * cfg.batch_size * cfg.seq_len / train_s,
              "val_bytes_per_token": arm["val_bytes_per_token"], "val_loss": val["loss"], "val_bpb": val["bpb"],
              "scored_bytes_fraction": scored,
              "eval": val, "run": str(run)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def compare(work: Path, corpus: str, vocab_sizes: list[int], preset: str, seeds: list[int], budget: float,
            calib_steps: int, calib_repeats: int, eval_interval: int) -> list[dict]:
    arms = [prepare_arm(work, "gpt2", None)]
    arms += [prepare_arm(work, f"bpe{v}", train_tokenizer(work, v)) for v in vocab_sizes]
    for arm in arms:
        print(f"{corpus} {arm['name']}: val {arm['val_tokens']:,} tokens, {arm['val_bytes_per_token']:.3f} "
              f"bytes/token", flush=True)
    speed = calibrate(work, arms, preset, calib_steps, calib_repeats)
    records = []
    for arm in arms:
        steps, warmup = schedule(preset, budget, speed[arm["name"]])
        print(f"{corpus} {arm['name']}: {speed[arm['name']]:.3f} s/step -> --max-steps {steps} --warmup-steps "
              f"{warmup}", flush=True)
        for seed in seeds:
            rec = train_arm(work, corpus, arm, preset, seed, steps, warmup, speed[arm["name"]], budget, eval_interval)
            print(f"  seed {seed}: val bpb {rec['val_bpb']:.4f}, val loss {rec['val_loss']:.4f}, {rec['steps']} "
                  f"steps in {rec['train_s']:.0f} s of steps ({rec['wall_s']:.0f} s wall)", flush=True)
            records.append(rec)
    return records


# --- report: the tables from the records alone ---------------------------------------------------


def load_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/runs/*/record.json"))]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def welch_t(a: list[float], b: list[float]) -> float | None:
    """Welch's t of mean(a) - mean(b); None without two values on each side or without spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (statistics.mean(a) - statistics.mean(b)) / se if se > 0 else None


def report(records: list[dict]) -> dict:
    """Per corpus, a row per tokenizer (GPT-2's first, then by vocabulary), with its bpb against GPT-2's."""
    out: dict = {}
    for corpus in sorted({r["corpus"] for r in records}):
        mine = [r for r in records if r["corpus"] == corpus]
        names = sorted({r["tokenizer"] for r in mine},
                       key=lambda n: (n != "gpt2", next(r["vocab_size"] for r in mine if r["tokenizer"] == n)))
        rows = []
        for name in names:
            runs = sorted((r for r in mine if r["tokenizer"] == name), key=lambda r: r["seed"])
            bpb, loss = mean_sd([r["val_bpb"] for r in runs]), mean_sd([r["val_loss"] for r in runs])
            rows.append({"tokenizer": name, "vocab_size": runs[0]["vocab_size"], "seeds": [r["seed"] for r in runs],
                         "val_bpb": bpb[0], "val_bpb_sd": bpb[1], "val_loss": loss[0], "val_loss_sd": loss[1],
                         "bpb_all": [r["val_bpb"] for r in runs], "steps": statistics.mean(r["steps"] for r in runs),
                         "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                         "train_s": statistics.mean(r["train_s"] for r in runs),
                         "wall_s": statistics.mean(r["wall_s"] for r in runs),
                         "budget_s": runs[0]["budget_s"], "val_bytes_per_token": runs[0]["val_bytes_per_token"]})
        base = next((row for row in rows if row["tokenizer"] == "gpt2"), None)
        for row in rows:
            row["bpb_vs_gpt2"] = row["val_bpb"] - base["val_bpb"] if base else None
            row["welch_t"] = welch_t(row["bpb_all"], base["bpb_all"]) if base and row is not base else None
        out[corpus] = rows
        print(f"\n{corpus}: the same model and seconds of training steps, val bits per byte (mean ± sd over seeds)\n"
              "| tokenizer | vocab | val bytes/token | seeds | val bpb | vs GPT-2 (t) | val loss | steps | tokens/s "
              "| s of steps | s wall |\n|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            vs = "" if r["bpb_vs_gpt2"] is None or r is base else f"{r['bpb_vs_gpt2']:+.4f}"
            if r["welch_t"] is not None:
                vs += f" ({r['welch_t']:+.1f})"
            print(f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['val_bytes_per_token']:.3f} | {len(r['seeds'])} | "
                  f"{r['val_bpb']:.4f} ± {r['val_bpb_sd']:.4f} | {vs or '-'} | {r['val_loss']:.3f} ± "
                  f"{r['val_loss_sd']:.3f} | {r['steps']:.0f} | {r['tokens_per_s']:,.0f} | {r['train_s']:.0f} | "
                  f"{r['wall_s']:.0f} |")
    return out


# --- the command ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from benchmarks.harness import int_list
    from gptscratch.bpe import check_vocab_size
    from gptscratch.errors import UserError

    result: dict = {"bench": "tokenizer-bpb", "mode": args.mode}
    if args.mode == "report":
        result["corpora"] = report(load_records(args.out))
        if not result["corpora"]:
            raise UserError(f"--out {args.out}: no run records (*/runs/*/record.json); run `compare` first")
    else:
        vocab_sizes = int_list(args.vocab_sizes or DEFAULT_VOCABS.get(args.mode, "4096"), "--vocab-sizes")
        for v in vocab_sizes:
            check_vocab_size(v)
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers like 1337,1,2") from None
        if args.budget <= 0:
            raise UserError(f"--budget {args.budget}: expected a positive number of seconds")
        result["corpora"] = {}
        for data in (Path(d) for d in args.data.split(",") if d):
            work = args.out / data.name
            text = extract_text(data, work)
            corpus = data.name
            if args.mode == "text":
                print(f"{corpus}: val {text['val_documents']:,} documents ({text['val_bytes']:,} bytes), train "
                      f"{text['train_documents']:,} ({text['train_bytes']:,} bytes) -> {work}")
                result["corpora"][corpus] = text
            elif args.mode == "bytes":
                rows = bytes_stage(work, vocab_sizes)
                print_bytes(corpus, rows)
                result["corpora"][corpus] = {"text": text, "rows": rows}
            else:
                compare(work, corpus, vocab_sizes, args.preset, seeds, args.budget, args.calib_steps,
                        args.calib_repeats, args.eval_interval)
        if args.mode == "compare":
            result["corpora"] = report([r for r in load_records(args.out)
                                        if r["corpus"] in {Path(d).name for d in args.data.split(",")}])
    if args.json:
        save_json(args.json, result)
    print(json.dumps(result))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("tokenizer-bpb", help="a tokenizer trained on the corpus against GPT-2's: bytes/token, and "
                       "val bits per byte of the same model trained with each for the same seconds",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("text", "bytes", "compare", "report"))
    p.add_argument("--data", default="data/shakespeare",
                   help="GPT-2 data directories from `gptscratch prepare`, comma-separated (default data/shakespeare)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="working directory: one folder per corpus")
    p.add_argument("--vocab-sizes", default="",
                   help="trained tokenizers' vocabularies (bytes: default 2048,4096,8192; compare: default 4096)")
    p.add_argument("--preset", default="modern-demo", help="compare: the model and recipe trained with each")
    p.add_argument("--seeds", default="1337,1,2", help="compare: training seeds")
    p.add_argument("--budget", type=float, default=120.0,
                   help="compare: seconds of training steps each run gets (evaluation excluded)")
    p.add_argument("--calib-steps", type=int, default=15, help="compare: steps of each calibration run")
    p.add_argument("--calib-repeats", type=int, default=2, help="compare: calibration runs of each tokenizer")
    p.add_argument("--eval-interval", type=int, default=0,
                   help="compare: the trainer's val estimate every this many steps (0: none; not counted in the "
                   "budget)")
    p.add_argument("--json", default="", metavar="FILE", help="also write the last line's JSON here")
    p.set_defaults(func=run)
