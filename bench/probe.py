"""The machine's matmul peak, the denominator of the benches' achieved-FLOP/s figures (the CPU
analogue of MFU)."""

from __future__ import annotations

import time

import torch


def matmul_peak(
    dtype: torch.dtype, shapes: list[tuple[int, int, int]], repeats: int = 5, device: str = "cpu"
) -> float:
    """Best FLOP/s of torch.mm over the shapes (m, k, n) on `device`, each timed `repeats` times
    after one warm-up; on a GPU also over 8192^3, which it takes to reach a GPU's peak."""
    gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else lambda: None
    best = 0.0
    for m, k, n in [*shapes, *([(8192, 8192, 8192)] if gpu else [])]:
        a, b = (
            torch.randn(m, k, dtype=dtype, device=device),
            torch.randn(k, n, dtype=dtype, device=device),
        )
        torch.mm(a, b)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def model_shapes(config: dict, rows: int) -> list[tuple[int, int, int]]:
    """The MLP matmuls of a Qwen2-style model over `rows` tokens, and 2048^3 for reference."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    return [(rows, hidden, ffn), (rows, ffn, hidden), (2048, 2048, 2048)]
