"""Encoding each distinct context once gives the log-probs and gradients of encoding every sequence
whole."""

import copy

import pytest
import torch

from treerl.loop.batch import completion_logprobs, make_batch

CONTEXTS = [[5, 6, 7], [5, 6, 7], [5, 6, 7], [8, 9], [8, 9], [5, 6, 7, 10, 11, 12], [4]]
COMPLETIONS = [[20, 21, 1], [22], [23, 24, 25, 26], [30, 31], [32, 33, 34], [40, 1], [50, 51, 52]]


def whole_sequence_logprobs(model, temperature: float) -> list[torch.Tensor]:
    """Each sequence alone, unpadded: the log-prob of every completion token."""
    out = []
    for context, completion in zip(CONTEXTS, COMPLETIONS):
        ids = torch.tensor([context + completion])
        logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float() / temperature
        out.append(logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1))
    return out


def test_each_distinct_context_is_encoded_once():
    batch = make_batch(CONTEXTS, COMPLETIONS)
    assert batch.context_ids.shape == (4, 6)
    assert batch.context_index.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert batch.context_mask.sum(-1).tolist() == [3, 2, 6, 1]
    assert batch.completion_mask.sum(-1).tolist() == [len(c) for c in COMPLETIONS]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_contexts_give_the_whole_sequence_logprobs_and_gradient(policy, temperature):
    model = copy.deepcopy(policy[0]).train()
    weights = [torch.linspace(-1, 1, len(c)) for c in COMPLETIONS]
    reference = whole_sequence_logprobs(model, temperature)
    sum(((r * w).sum() for r, w in zip(reference, weights)), torch.tensor(0.0)).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    batch = make_batch(CONTEXTS, COMPLETIONS)
    logprobs, _ = completion_logprobs(model, batch, temperature)
    mask = batch.completion_mask.bool()
    for row, values in enumerate(reference):
        assert torch.allclose(logprobs[row][mask[row]], values, atol=1e-5), row
    per_token = torch.zeros_like(logprobs)
    per_token[mask] = torch.cat(weights)
    (logprobs * per_token).sum().backward()
    for got, want in zip((p.grad for p in model.parameters()), expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_one_token_completions(policy):
    model = policy[0]
    batch = make_batch([[5, 6], [7]], [[1], [2]])
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(model, batch, with_entropy=True)
        alone = model(input_ids=torch.tensor([[7]])).logits[0, -1].log_softmax(-1)[2]
    assert logprobs.shape == entropy.shape == (2, 1)
    assert logprobs[1, 0] == pytest.approx(float(alone), abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_log_probs_equal_the_whole_ones_with_their_gradient(policy, chunk):
    """train.logit_chunk: the output head on a few tokens at a time from the final hidden states,
    recomputed in the backward pass, gives the log-probs, entropies and weight gradient of the whole
    computation."""
    import copy

    model, tok = copy.deepcopy(policy[0]).train(), policy[1]
    contexts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("1+2\n", "37+52-9\n")]
    completions = [
        tok(t, add_special_tokens=False)["input_ids"]
        for t in ("3\nAnswer: 3", "80", "89-9\n80\nAnswer:")
    ]
    batch = make_batch([contexts[0], contexts[1], contexts[1]], completions)
    results = []
    for size in (0, chunk):
        model.zero_grad()
        logprobs, entropy = completion_logprobs(model, batch, 0.7, with_entropy=True, chunk=size)
        ((logprobs + 0.1 * entropy) * batch.completion_mask).sum().backward()
        results.append((logprobs, entropy, [p.grad.clone() for p in model.parameters()]))
    (whole_lp, whole_ent, whole_grad), (lp, ent, grad) = results
    assert torch.allclose(lp, whole_lp, atol=1e-6) and torch.allclose(ent, whole_ent, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grad, whole_grad))


@pytest.mark.parametrize("chunk", [0, 4])
def test_activation_checkpointing_gives_the_same_log_probs_and_gradient(policy, chunk):
    """train.gradient_checkpointing: transformers recomputes each layer in the backward pass and
    drops caches, so each completion runs with its own copy of its context; the numbers are those of
    the shared-context path."""
    import copy

    tok = policy[1]
    batch = make_batch(
        [
            tok(t, add_special_tokens=False)["input_ids"]
            for t in ("1+2\n", "37+52-9\n", "37+52-9\n")
        ],
        [tok(t, add_special_tokens=False)["input_ids"] for t in ("3\nAnswer: 3", "80", "89-9\n80")],
    )
    results = []
    for checkpointing in (False, True):
        model = copy.deepcopy(policy[0]).train()
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        logprobs, entropy = completion_logprobs(
            model, batch, with_entropy=True, chunk=chunk, shared_contexts=not checkpointing
        )
        ((logprobs - 0.1 * entropy) * batch.completion_mask).sum().backward()
        results.append((logprobs, [p.grad for p in model.parameters()]))
    (shared, shared_grad), (alone, alone_grad) = results
    assert torch.allclose(
        (shared - alone) * batch.completion_mask, torch.zeros_like(shared), atol=1e-6
    )
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(shared_grad, alone_grad))
