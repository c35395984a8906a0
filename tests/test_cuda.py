"""On a GPU: the lean backend samples there what it samples on the CPU, its cascade attention holds
in bf16, and a training step runs and reports its GPU memory. Skipped without CUDA;
bench/gpu_check.py runs them (`pytest -k cuda`). TREERL_TEST_DEVICE=cpu runs them on the CPU, to
check the tests themselves."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from treerl.rollout.backend import Forks
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import LeanDecoder, Plan, lean_decoder
from treerl.rollout.lean_backend import LeanBackend

DEVICE = os.environ.get("TREERL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)


def sample_tree(model, tok, device):
    ids = [
        tok(p, add_special_tokens=False)["input_ids"] for p in ["37+52\n", "1+2-3+4-5+6\n", "9\n"]
    ]
    keys = row_keys(torch.Generator().manual_seed(3), len(ids), "cpu").to(device)
    return LeanBackend(lean_decoder(model)).sample(
        ids, keys, 12, Sampling(), tok.eos_token_id, Forks(3, 3, 4)
    )


def test_cuda_lean_backend_samples_the_trees_the_cpu_samples(policy):
    """The same keys, fp32 weights: at least 90% of the tree's sequences have the same tokens on
    both devices (a draw within float noise of a token boundary may differ), and their log-probs
    agree to 1e-4."""
    model, tok = policy
    on_cpu = sample_tree(model, tok, "cpu")
    on_device = sample_tree(copy.deepcopy(model).to(DEVICE), tok, DEVICE)
    assert [(s.parent, s.start, s.child) for s in on_cpu[:3]] == [
        (s.parent, s.start, s.child) for s in on_device[:3]
    ]
    same = [
        a for a, b in zip(on_cpu, on_device) if a.token_ids == b.token_ids and a.start == b.start
    ]
    assert len(on_cpu) > 9 and len(same) >= 0.9 * len(on_cpu)
    for a, b in zip(on_cpu, on_device):
        if a.token_ids == b.token_ids:
            assert torch.allclose(a.logprobs, b.logprobs.cpu(), atol=1e-4)


def test_cuda_cascade_attention_in_bf16_is_attention():
    """Eight rows in three groups sharing prefixes of 40, 7 and 19 slots, 1 to 30 own slots each, 8
    query heads over 2 key-value heads, bf16, queries and keys of std 2.5 (scores up to about 23, as
    in a trained model's sharp heads): each row's output is fp32 sdpa over its prefix and own slots
    rounded once to bf16, a mean relative error below bf16's 2^-9 (scores and probabilities in bf16
    miss that by 3x)."""
    torch.manual_seed(0)
    kv, heads, dim = 2, 8, 64
    keys = torch.randn(kv, 400, dim, device=DEVICE, dtype=torch.bfloat16) * 2.5
    values = torch.randn(kv, 400, dim, device=DEVICE, dtype=torch.bfloat16)
    slots = torch.randperm(400, device=DEVICE)
    prefixes = [slots[:40], slots[40:47], slots[47:66]]
    group = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1], device=DEVICE)
    own_lengths = [1, 30, 5, 12, 2, 17, 9, 24]
    owns, at = [], 66
    for length in own_lengths:
        owns.append(slots[at : at + length])
        at += length
    shared = torch.zeros(3, 40, dtype=torch.long, device=DEVICE)
    for g, prefix in enumerate(prefixes):
        shared[g, : len(prefix)] = prefix
    own = torch.zeros(8, 30, dtype=torch.long, device=DEVICE)
    for row, row_slots in enumerate(owns):
        own[row, : len(row_slots)] = row_slots
    visible = torch.cat(
        [
            torch.stack(
                [torch.arange(40, device=DEVICE) < len(prefixes[g]) for g in group.tolist()]
            ),
            torch.stack([torch.arange(30, device=DEVICE) < n for n in own_lengths]),
        ],
        dim=1,
    )
    slot = torch.tensor([0, 1, 0, 0, 1, 2, 2, 1], device=DEVICE)
    plan = Plan(own[:, 0], own, shared, group, slot, 3, visible, 1)  # blocks of one slot
    decoder = LeanDecoder.__new__(LeanDecoder)
    decoder.kv_heads = kv
    q = torch.randn(8, heads, dim, device=DEVICE, dtype=torch.bfloat16) * 2.5
    out = decoder.attend_paged(q, keys, values, plan, scaling=dim**-0.5)
    assert out.dtype == torch.bfloat16
    for row in range(8):
        context = torch.cat([prefixes[int(group[row])], owns[row]])
        k = keys[:, context].float().repeat_interleave(heads // kv, 0)
        v = values[:, context].float().repeat_interleave(heads // kv, 0)
        expected = F.scaled_dot_product_attention(q[row].float()[:, None], k, v, scale=dim**-0.5)[
            :, 0
        ]
        assert float((out[row].float() - expected).abs().mean() / expected.abs().mean()) < 2.0**-9


def test_cuda_training_step_reports_its_gpu_memory_and_changes_the_weights(model_dir, tmp_path):
    """One TreeRPO step in bf16 autocast on the device, every sibling group kept and an entropy
    bonus (a gradient even when every reward is 0): it trains (the weights change) and logs a peak
    GPU memory (None on the CPU)."""
    from safetensors.torch import load_file

    from treerl.config import load_config
    from treerl.loop.trainer import train

    out = tmp_path / "run"
    train(
        load_config(
            None,
            [
                f"model.name_or_path={model_dir}",
                f"model.device={DEVICE}",
                "algo.name=treerpo",
                "tree.depth=2",
                "rollout.n=3",
                "rollout.max_new_tokens=8",
                "rollout.batch_prompts=4",
                "algo.params.prune_tau=0",
                "train.filter_tau=null",
                "eval.problems=2",
                "eval.max_new_tokens=4",
                "train.steps=1",
                "train.save_every=1",
                "train.threads=1",
                "output.progress=false",
                "model.autocast=bfloat16",
                "algo.entropy_coef=0.01",
            ],
        ),
        out,
    )
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert (
        (metrics["memory/gpu_peak_gib"] or 0) > 0
        if DEVICE != "cpu"
        else metrics["memory/gpu_peak_gib"] is None
    )
    before = load_file(model_dir / "model.safetensors")
    after = load_file(out / "checkpoints" / "step_1" / "model.safetensors")
    assert any(not torch.equal(before[name], after[name].to(before[name].dtype)) for name in before)
