"""gptscratch: GPT-2 reproduced from scratch in PyTorch.

Importing the package has one side effect, on purpose: it pins two MKL settings (below) unless they are
already set. Nothing else happens at import; `GPT` and `GPTConfig` are loaded on first use, so that
importing a torch-free part (`gptscratch.data.prepare`, whose worker processes tokenize) never loads torch.
"""

import os

# Bit-exact resume on a CPU needs MKL to compute a matmul the same way in every process: by default it
# may pick its code path by the buffers' memory alignment and drop threads when the machine is busy, and
# two fresh runs then differed in the 6th digit of their first loss. MKL reads these once, when torch
# loads it, so they are set here, the one place that runs before any of our modules imports torch,
# whichever way in is used (the command, `python -m gptscratch`, torchrun, or a script importing the
# library). setdefault: a caller's own values win. On this machine it cost no measurable speed.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from gptscratch.errors import UserError  # noqa: E402

__all__ = ["GPT", "GPTConfig", "UserError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("GPT", "GPTConfig"):
        from gptscratch import model

        return getattr(model, name)
    raise AttributeError(f"module 'gptscratch' has no attribute {name!r}")
