"""The machine's matmul peak, the denominator of the benches' achieved-FLOP/s figures (the CPU analogue of MFU)."""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, shapes: list[tuple[int, int, int]], repeats: int = 5,
                device: str = "cpu") -> float:
    """Best FLOP/s of torch.mm over the shapes (m, k, n) on `device`, each timed `repeats` times after one
    warm-up."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        torch.mm(a, b)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def model_shapes(config: dict, rows: int) -> list[tuple[int, int, int]]:
    """The MLP matmuls of a Qwen2-style model over `rows` tokens, and 2048^3 and 8192^3 for reference (the
    largest sets a GPU's peak)."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    big = [(8192, 8192, 8192)] if torch.cuda.is_available() else []
    return [(rows, hidden, ffn), (rows, ffn, hidden), (2048, 2048, 2048), *big]
