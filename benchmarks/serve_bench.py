"""`gptscratch serve`'s batched decoding against the same requests one after another, through real HTTP.

    python -m benchmarks serve                      # GPT-2 124M's shape, 16 clients x 64 new tokens
    python -m benchmarks serve --shape tiny --clients 4 --max-tokens 8   # a quick check

One server (random weights of the chosen shape: speed does not depend on the values) is started in this
process with `--max-batch` equal to the number of clients. Each round sends the same requests twice: one
after another (each decoded alone: batch 1), then all at once from one thread per client (decoded
together). Throughput is completion tokens over wall-clock; latency is each request's time from send to
its last byte. Rounds alternate the two modes, so a machine that slows down hurts both alike; the ratio
is taken per round and its median reported. Greedy decoding, so both modes produce the same tokens.

Each round also decodes the same prompts with the library's `generate()` in this process, one at a time
(no server, no HTTP): `engine_vs_generate` is the server's one-at-a-time speed over that, what a single
request pays for going through the engine (per-row positions, HTTP, JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from gptscratch.model import GPT, GPTConfig

SHAPES = {
    "124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=256),
}
WORDS = ("the history of", "a recipe for", "in the beginning", "when the rain", "to be or not", "import torch",
         "the quick brown fox", "dear diary,", "once upon a time", "the theorem states", "breaking news:",
         "my favourite", "how to train", "chapter one", "the results show", "in conclusion")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict:
    import httpx

    from gptscratch.generate import generate
    from gptscratch.serve import serving_in_thread
    from gptscratch.serve.engine import Engine
    from gptscratch.tokenizer import EOT_TOKEN, get_encoding

    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPES[args.shape])).eval()
    engine = Engine(model, max_batch=args.clients, max_queue=4 * args.clients).start()
    prompts = [f"{WORDS[i % len(WORDS)]} number {i}" for i in range(args.clients)]
    rounds = []
    with serving_in_thread(engine, "bench") as base, httpx.Client(timeout=3600) as http:
        def ask(prompt: str, out: list) -> None:
            t0 = time.perf_counter()
            r = http.post(f"{base}/v1/completions", json={"model": "bench", "prompt": prompt, "temperature": 0,
                                                          "max_tokens": args.max_tokens})
            r.raise_for_status()
            out.append((time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]))

        ask("warm up", [])
        for _ in range(args.rounds):
            seq: list = []
            t0 = time.perf_counter()
            for p in prompts:
                ask(p, seq)
            seq_s = time.perf_counter() - t0
            par: list = []
            threads = [threading.Thread(target=ask, args=(p, par)) for p in prompts]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            par_s = time.perf_counter() - t0
            gen_tokens, t0 = 0, time.perf_counter()
            for p in prompts:  # what the server's one-at-a-time decoding does, without the server
                ids = get_encoding().encode(p)
                out = generate(model, torch.tensor([ids]), args.max_tokens, temperature=0.0, stop_token=EOT_TOKEN)
                new_ids = out[0, len(ids):].tolist()
                gen_tokens += new_ids.index(EOT_TOKEN) if EOT_TOKEN in new_ids else len(new_ids)
            gen_s = time.perf_counter() - t0
            tokens = sum(n for _, n in seq)
            rounds.append({
                "sequential_tok_s": tokens / seq_s, "batched_tok_s": sum(n for _, n in par) / par_s,
                "sequential_latency_p50": percentile([s for s, _ in seq], 50),
                "sequential_latency_p99": percentile([s for s, _ in seq], 99),
                "batched_latency_p50": percentile([s for s, _ in par], 50),
                "batched_latency_p99": percentile([s for s, _ in par], 99),
                "tokens": tokens})
            rounds[-1]["ratio"] = rounds[-1]["batched_tok_s"] / rounds[-1]["sequential_tok_s"]
            rounds[-1]["generate_tok_s"] = gen_tokens / gen_s
            rounds[-1]["engine_vs_generate"] = rounds[-1]["sequential_tok_s"] / rounds[-1]["generate_tok_s"]
            print(json.dumps({k: round(v, 3) for k, v in rounds[-1].items()}), flush=True)
    engine.stop()
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result = {"shape": args.shape, "clients": args.clients, "max_tokens": args.max_tokens,
              "threads": torch.get_num_threads(), "rounds": rounds, "median": median}
    print(f"batched {median['batched_tok_s']:.1f} tok/s vs sequential {median['sequential_tok_s']:.1f} tok/s: "
          f"{median['ratio']:.2f}x; latency p50/p99 batched {median['batched_latency_p50']:.1f}/"
          f"{median['batched_latency_p99']:.1f} s, sequential {median['sequential_latency_p50']:.1f}/"
          f"{median['sequential_latency_p99']:.1f} s; one at a time, the server at "
          f"{median['engine_vs_generate']:.2f}x generate()'s {median['generate_tok_s']:.1f} tok/s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="batched serving against sequential, through HTTP",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="124m")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.set_defaults(func=lambda args: run(args) and 0)
