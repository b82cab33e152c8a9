"""A/B on a GPU: GPT-2 124M training step with the chunked fused LM head + cross-entropy (the training
path, `return_logits=False`) against full logits + F.cross_entropy, both compiled, bf16 autocast,
fused AdamW. Decides which loss path `gptscratch train` uses on CUDA.

    PYTHONPATH=src python3 benchmarks/gpu_loss_ab.py [--batch-size 64] [--dry-run]
"""

import argparse
import json
import statistics
import time

import torch

from gptscratch.model import GPT, GPTConfig
from gptscratch.optim import configure_optimizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    cfg = GPTConfig(vocab_multiple=64) if not args.dry_run else GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, vocab_multiple=64)
    B, T = (args.batch_size, 1024) if not args.dry_run else (2, 64)
    torch.backends.cuda.matmul.allow_tf32 = True
    x = torch.randint(0, 50257, (B, T), device=dev)
    y = torch.randint(0, 50257, (B, T), device=dev)
    runs = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = GPT(cfg).to(dev)
        opt = configure_optimizer(model, 6e-4, device_type=dev.type)
        cmodel = torch.compile(model)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                _, loss = cmodel(x, y, return_logits=not fused)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t0 = time.perf_counter()
        for _ in range(3):
            loss = step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(5):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            rates.append(5 * B * T / (time.perf_counter() - t0))
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        name = "fused_chunked_ce" if fused else "full_logits_ce"
        runs[name] = {"tokens_per_s": statistics.median(rates), "all": [round(r) for r in rates],
                      "warmup_s": round(warm, 1), "peak_mib": round(peak), "loss": float(loss)}
        print(name, runs[name], flush=True)
        del model, opt, cmodel
    print(json.dumps({"batch": B, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                      "torch": torch.__version__, **runs}))


if __name__ == "__main__":
    main()
