"""gptscratch: GPT-2 reproduced from scratch in PyTorch."""

import os

# Bit-exact resume on a CPU needs MKL to compute a matmul the same way in every process: by default it
# may pick its code path by the buffers' memory alignment and drop threads when the machine is busy, and
# two fresh runs then differed in the 6th digit of their first loss. Set before torch loads MKL (a
# caller's own values win); on this machine it cost no measurable speed.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from gptscratch.errors import UserError  # noqa: E402
from gptscratch.model import GPT, GPTConfig  # noqa: E402

__all__ = ["GPT", "GPTConfig", "UserError"]
__version__ = "0.1.0"
