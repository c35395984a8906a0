"""bench/gpu_check.py's arithmetic and bookkeeping, on the CPU: the TreeRPO update's memory by hand,
the refusal of 7B on an H100, the roofline of rows that share a prompt, the profiler's counts, and
the time budget that skips pieces while the JSON keeps every piece done."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
spec.loader.exec_module(gpu_check)

H200_BYTES = 143771 * 2**20
QWEN25_7B_PARAMETERS = 7_615_616_512


def test_the_update_holds_weights_gradients_two_moments_reference_and_the_step_temporary():
    # 1000 bf16 parameters: 2000 bytes each for the weights, gradients, reference and AdamW's
    # sqrt(v) temporary, 4000 for its two moments
    parts = gpu_check.update_memory_bytes(1000, 2, reference=True)
    assert parts == {
        "weights": 2000,
        "gradients": 2000,
        "adamw_moments": 4000,
        "reference": 2000,
        "adamw_step_temporary": 2000,
    }
    assert sum(gpu_check.update_memory_bytes(1000, 4, reference=False).values()) == 20000


def test_the_7b_treerpo_step_is_refused_on_an_h100_and_may_run_on_an_h200():
    assert gpu_check.parameter_count(gpu_check.SHAPES["7b"]) == QWEN25_7B_PARAMETERS
    args = type("Args", (), {"tiny": False, "tree_prompts": 2})
    overrides = gpu_check.step_overrides(args, Path("m"), torch.device("cuda"), "lean")
    parts = gpu_check.update_need("7b", overrides)  # treerpo_paper: bfloat16, KL on
    # 12 bytes a parameter: 91,387,398,144 bytes = 85.1 GiB; the state without the temporary is
    # 76.2 GB, the "about 76 GB"
    assert sum(parts.values()) == 12 * QWEN25_7B_PARAMETERS
    refusal = gpu_check.memory_refusal("7b", parts, gpu_check.H100_BYTES)
    assert refusal.startswith("7b: the update holds at least 85.1 GiB (weights 14.2, ")
    assert refusal.endswith("and the card has 79.6 GiB")
    assert gpu_check.memory_refusal("7b", parts, H200_BYTES) is None
    small = gpu_check.update_need("1.5b", overrides)
    assert gpu_check.memory_refusal("1.5b", small, gpu_check.H100_BYTES) is None


def test_rows_that_share_a_prompt_read_its_keys_and_values_once_in_the_roofline():
    model = gpu_check.random_model(gpu_check.TINY, torch.device("cpu"))
    # 459,904 bf16 parameters (the output layer is the embedding): 919,808 bytes; 512 bytes of keys
    # and values a token (2 layers x 2 heads x 32 x 2 x 2 bytes); 2 prompts of 48 tokens read once
    # and 16 rows' own tokens, 7.5 on average: 216 tokens, 110,592 bytes. 1,030,400 bytes a step.
    shared = gpu_check.roofline(model, gpu_check.Case(2, 8, 48, 16), 1_030_400)
    assert shared["weight_bytes"] == 919_808
    assert shared["mean_kv_bytes"] == 110_592
    assert shared["tok_s"] == 16.0  # 16 rows, one step a second
    apart = gpu_check.roofline(model, gpu_check.Case(16, 1, 48, 16), 1_030_400)
    assert apart["mean_kv_bytes"] == (16 * 48 + 120) * 512


def test_busy_time_is_the_union_of_the_intervals():
    assert gpu_check.busy_us([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]) == 4.0


def test_the_profile_counts_the_operators_of_a_decode_step():
    a = torch.ones(8, 8)

    def sample(tokens: int) -> tuple[int, int, int]:
        for _ in range(tokens + 3):  # a step's operator, and 3 of set-up and prefill per call
            torch.mm(a, a)
        return tokens, 0, 0

    found = gpu_check.profile_steps(sample, torch.device("cpu"))
    assert found["operations"] == "cpu operators"
    assert found["per_decode_step"] == 1.0
    assert 0 < found["busy_share"] <= 1


def test_a_piece_over_the_budget_is_skipped_and_the_json_keeps_every_piece(tmp_path):
    path = tmp_path / "gpu_check.json"
    check = gpu_check.Check(path, budget_s=60, head={"device": "cpu"})
    on_disk = []

    def run() -> dict:
        on_disk.append(json.loads(path.read_text()) if path.exists() else None)
        return {"tok_s": 1.0}

    def fail() -> dict:
        raise RuntimeError("out of memory")

    Piece = gpu_check.Piece
    for piece in [
        Piece("bandwidth", "", 1, run),
        Piece("decode", "7b/64", 600, run, "7b"),
        Piece("decode", "7b/256", 1, run, "7b"),  # 7b/64 would have made the model
        Piece("decode", "1.5b/64", 1, fail, "1.5b"),
        Piece("treerpo_step", "7b/lean", 600, run, "7b"),
        Piece("tests", "", 1, run),
    ]:
        check.run(piece)
    result = json.loads(path.read_text())
    assert on_disk[1]["decode"]["1.5b/64"]["error"].endswith("RuntimeError: out of memory\n")
    assert result["bandwidth"]["tok_s"] == 1.0
    assert result["decode"]["7b/64"]["skipped"].startswith("budget: about 600 s, ")
    assert result["decode"]["7b/256"]["skipped"] == "budget: decode/7b/64 did not start"
    assert result["left"] == ["decode/7b/64", "decode/7b/256", "treerpo_step/7b/lean"]
    assert result["rest"] == "--sections decode treerpo_step --sizes 7b"
    assert result["tests"]["tok_s"] == 1.0


def test_a_refusal_is_recorded_after_the_budget_is_spent(tmp_path):
    check = gpu_check.Check(tmp_path / "gpu_check.json", budget_s=-5, head={})
    check.run(gpu_check.Piece("treerpo_step", "7b/lean", 0, lambda: {"refused": "7b: ..."}, "7b"))
    assert check.result["treerpo_step"]["7b/lean"]["refused"] == "7b: ..."
    assert check.result["left"] == []
