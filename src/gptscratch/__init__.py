"""gptscratch: GPT-2 reproduced from scratch in PyTorch."""

from gptscratch.errors import UserError
from gptscratch.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "UserError"]
__version__ = "0.1.0"
