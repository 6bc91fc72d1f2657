"""Small random-weight Qwen3 checkpoints for demos and end-to-end tests.

No model hub is reachable on the machines this kit is tested on, and batch invariance does not
depend on trained weights: a random Qwen3 written with ``transformers`` exercises exactly the
kernels a real one does (GEMMs, RMSNorm, RoPE, paged attention, the logprob softmax). The
checkpoint is written once into a cache directory and reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_ENV = "VLLM_BI_CACHE"
_MARKER = "vllm_bi_model.json"


@dataclass(frozen=True)
class Qwen3Shape:
    """The dimensions of a random Qwen3 (defaults: a 4-layer cut of Qwen3-0.6B's width).

    Attributes:
        hidden_size: model width; the issue's floor for a meaningful test is 1024.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA when fewer than ``num_heads``).
        head_dim: per-head width (vLLM's CPU attention takes multiples of 32 up to 256).
        intermediate_size: MLP width.
        vocab_size: vocabulary; smaller than Qwen3's 151936 keeps the CPU lm_head cheap.
        max_position_embeddings: longest context the config allows.
        seed: the ``torch.manual_seed`` the weights are drawn with.
    """

    hidden_size: int = 1024
    num_layers: int = 4
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 3072
    vocab_size: int = 32768
    max_position_embeddings: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if name != "seed" and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )

    @property
    def name(self) -> str:
        """A directory name that changes whenever any dimension does."""
        return (
            f"qwen3-h{self.hidden_size}-l{self.num_layers}-q{self.num_heads}kv{self.num_kv_heads}"
            f"-d{self.head_dim}-i{self.intermediate_size}-v{self.vocab_size}-s{self.seed}"
        )


QWEN3_0_6B = Qwen3Shape()
"""Qwen3-0.6B's width (hidden 1024, 16/8 heads of 128, MLP 3072), 4 layers, 32k vocab."""


def default_cache_dir() -> Path:
    """``$VLLM_BI_CACHE``, else ``$XDG_CACHE_HOME/vllm-bi``, else ``~/.cache/vllm-bi``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vllm-bi"


def write_random_qwen3(
    directory: str | os.PathLike[str] | None = None, shape: Qwen3Shape = QWEN3_0_6B
) -> Path:
    """Write (once) a random-weight bf16 Qwen3 checkpoint and return its directory.

    Args:
        directory: where to put it; defaults to ``default_cache_dir() / shape.name``. An
            existing checkpoint written for the same shape is reused.
        shape: the dimensions.

    Returns:
        The checkpoint directory, loadable by ``vllm.LLM(model=..., skip_tokenizer_init=True)``
        and by ``transformers.AutoModelForCausalLM.from_pretrained``.
    """
    if not isinstance(shape, Qwen3Shape):
        raise TypeError(f"shape must be a Qwen3Shape, got {type(shape).__name__}")
    path = Path(directory) if directory is not None else default_cache_dir() / shape.name
    marker = path / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == asdict(shape):
        return path

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(shape.seed)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    marker.write_text(json.dumps(asdict(shape), indent=1))
    return path
