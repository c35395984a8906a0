import pytest
import torch

from treerl.loop.batch import completion_logprobs, make_batch, scatter_completion_values
from treerl.rollout import engine, tree
from treerl.rollout.engine import generate
from treerl.rollout.lean import LeanDecoder

PROMPTS = ["37+52\n", "1+2-3+4-5+6\n", "9\n"]  # different lengths: left padding in the engine


def sample(policy, prompts=PROMPTS, seed=0, **kwargs):
    model, tok = policy
    kwargs.setdefault("max_new_tokens", 12)
    generator = None if kwargs.get("greedy") else torch.Generator().manual_seed(seed)
    return generate(model, tok, prompts, generator=generator, **kwargs)


def test_same_seed_same_samples(policy):
    a, b = sample(policy, seed=3), sample(policy, seed=3)
    assert a.completion_ids == b.completion_ids and a.texts == b.texts
    assert all(torch.equal(x, y) for x, y in zip(a.logprobs, b.logprobs))


def test_different_seed_different_samples(policy):
    assert sample(policy, seed=3).completion_ids != sample(policy, seed=4).completion_ids


def test_greedy_is_deterministic_and_argmax(policy):
    a, b = sample(policy, greedy=True), sample(policy, greedy=True)
    assert a.completion_ids == b.completion_ids
    model, _ = policy
    # first greedy token is the argmax of a plain forward pass over the unpadded prompt
    for prompt_ids, completion in zip(a.prompt_ids, a.completion_ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
        assert completion[0] == int(logits.argmax())


def test_completions_stop_at_eos(policy):
    _, tok = policy
    gen = sample(policy, prompts=["1+2\n"] * 32, seed=0, max_new_tokens=32)
    assert any(gen.finished), "a near-uniform random model should emit EOS in 32 x 32 draws"
    for ids, logps, finished, text in zip(
        gen.completion_ids, gen.logprobs, gen.finished, gen.texts
    ):
        assert len(ids) == len(logps) >= 1
        assert tok.eos_token_id not in ids[:-1]
        assert finished == (ids[-1] == tok.eos_token_id)
        if not finished:
            assert len(ids) == 32
        assert "<eos>" not in text


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8)])
def test_behaviour_logprobs_match_full_forward(policy, temperature, top_p):
    """The sampler's log-probs are the trainer's (completion_logprobs: softmax(logits / T) over the
    whole vocabulary), with top_p < 1 too, so that the update's ratio compares one distribution on
    both sides."""
    model, tok = policy
    gen = sample(
        policy, prompts=PROMPTS * 2, seed=1, temperature=temperature, top_p=top_p, max_new_tokens=10
    )
    batch = make_batch(gen.prompt_ids, gen.completion_ids, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logprobs, _ = completion_logprobs(model, batch, temperature=temperature)
    behaviour = scatter_completion_values(gen.logprobs, batch)
    mask = batch.completion_mask
    assert mask.sum().item() == sum(len(ids) for ids in gen.completion_ids)
    assert ((logprobs - behaviour).abs() * mask).max().item() < 1e-4


def test_left_padding_does_not_change_a_prompt(policy):
    alone = sample(policy, prompts=["9\n"], greedy=True)
    padded = sample(policy, prompts=["1+2-3+4-5+6+7+8\n", "9\n"], greedy=True)
    assert padded.completion_ids[1] == alone.completion_ids[0]
    assert torch.allclose(padded.logprobs[1], alone.logprobs[0], atol=1e-5)


def test_tiny_top_p_is_greedy(policy):
    greedy = sample(policy, greedy=True)
    for seed in range(3):
        nucleus = sample(policy, seed=seed, top_p=1e-6)
        assert nucleus.completion_ids == greedy.completion_ids


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("sampler", ["generate", "sample_trees"])
def test_sampling_runs_in_eval_mode_and_restores_the_mode(policy, monkeypatch, mode, sampler):
    model, tok = policy
    seen, real = [], engine.backend_for  # both samplers go through engine.sample_sequences
    monkeypatch.setattr(
        engine, "backend_for", lambda m, *args: seen.append(m.training) or real(m, *args)
    )
    model.train(mode == "train")
    try:
        if sampler == "generate":
            sample(policy, max_new_tokens=2)
        else:
            tree.sample_trees(
                model,
                tok,
                [tok("1+2\n")["input_ids"]],
                branching=2,
                depth=2,
                step_tokens=2,
                generator=torch.Generator().manual_seed(0),
            )
        assert seen == [False]  # sampled in eval mode: no dropout in the rollout
        assert model.training == (mode == "train")  # and left as it was found
    finally:
        model.eval()


@pytest.mark.parametrize("lean", [True, False])
def test_a_repeated_prompt_is_encoded_once(policy, monkeypatch, lean):
    """n samples of a prompt share one encoding of it, and each sample is what the prompt alone
    would give."""
    model, tok = policy
    encoded_rows = []
    if lean:
        forward = LeanDecoder.forward
        monkeypatch.setattr(
            LeanDecoder,
            "forward",
            lambda self, ids, *args: encoded_rows.append(len(ids)) or forward(self, ids, *args),
        )
    else:
        monkeypatch.setattr(engine, "lean_decoder", lambda model: None)
        forward = model.forward
        monkeypatch.setattr(
            model,
            "forward",
            lambda input_ids, **kwargs: (
                encoded_rows.append(input_ids.shape) or forward(input_ids=input_ids, **kwargs)
            ),
        )
    rows = [0, 1, 0, 2, 0, 1]
    together = sample(policy, prompts=[PROMPTS[i] for i in rows], greedy=True, max_new_tokens=4)
    assert encoded_rows[0] == 3 if lean else encoded_rows[0][0] == 3
    for row, i in enumerate(rows):
        alone = sample(policy, prompts=[PROMPTS[i]], greedy=True, max_new_tokens=4)
        assert together.completion_ids[row] == alone.completion_ids[0]
        assert torch.allclose(together.logprobs[row], alone.logprobs[0], atol=1e-5)


@pytest.fixture(scope="module")
def ending_policy(policy):
    """The test model with its EOS logit raised, so that sampled lengths spread from a few tokens to
    the limit."""
    import copy

    model, tok = copy.deepcopy(policy[0]), policy[1]
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += 0.35 * torch.randn(
            model.config.hidden_size, generator=torch.Generator().manual_seed(1)
        )
    return model.eval(), tok


MANY = PROMPTS * 6


def test_a_sequence_samples_the_same_tokens_whatever_shares_its_batch(ending_policy):
    """Per-row keys: a row's samples depend on the call's seed, its index and the model, not on the
    rows beside it, the batch size or when finished rows leave; its log-probs agree to float
    rounding."""
    together = sample(ending_policy, MANY, seed=5, max_new_tokens=40)
    lengths = [len(c) for c in together.completion_ids]
    assert min(lengths) < 10 and max(lengths) == 40  # finished rows left early
    alone = sample(
        ending_policy, MANY[:1], seed=5, max_new_tokens=40
    )  # row 0 has the same key alone
    assert alone.completion_ids[0] == together.completion_ids[0]
    assert torch.allclose(alone.logprobs[0], together.logprobs[0], rtol=0.0, atol=1e-6)


def test_finished_rows_leave_the_batch(ending_policy, monkeypatch):
    """The lean backend feeds only the rows still sampling; the transformers backend, which feeds
    every row to the longest, samples the same tokens."""
    rows_fed = []
    real = LeanDecoder.step

    def spy(self, tokens, *args, **kwargs):
        rows_fed.append(tokens.shape[0])
        return real(self, tokens, *args, **kwargs)

    monkeypatch.setattr(LeanDecoder, "step", spy)
    lean = sample(ending_policy, MANY, seed=6, max_new_tokens=40)
    assert (
        len(MANY) // 2 < rows_fed[0] <= len(MANY)
        and rows_fed == sorted(rows_fed, reverse=True)
        and rows_fed[-1] < 6
    )
    monkeypatch.setattr(engine, "lean_decoder", lambda model: None)
    full = sample(ending_policy, MANY, seed=6, max_new_tokens=40)
    assert lean.completion_ids == full.completion_ids
    assert all(
        torch.allclose(a, b, rtol=0.0, atol=1e-5) for a, b in zip(lean.logprobs, full.logprobs)
    )


def test_inverse_cdf_sampling_follows_the_distribution():
    """Tokens drawn at 20,000 keys from softmax([0, 1, 2]) / T = 1 land with frequencies of 0.090,
    0.245, 0.665; a token of probability 0 (top_p) is never drawn, and its log-prob is the
    softmax's, log 0.665, not the nucleus's log 1; u near 1 stays within the support."""
    from treerl.rollout.draws import row_keys, sample_tokens, uniforms

    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    tokens, _, _ = sample_tokens(
        logits, 1.0, 1.0, uniforms(row_keys(torch.Generator().manual_seed(0), 20000, "cpu"), 0)
    )
    share = torch.bincount(tokens, minlength=3) / 20000
    assert torch.allclose(share, torch.softmax(logits[0], -1), atol=0.01)
    top, top_logps, _ = sample_tokens(
        logits, 1.0, 0.5, uniforms(row_keys(torch.Generator().manual_seed(0), 20000, "cpu"), 0)
    )
    assert set(top.tolist()) == {2}  # nucleus 0.5 keeps the 0.665 token only
    assert torch.allclose(top_logps, torch.tensor(0.6652409557748219).log())
    edge, _, _ = sample_tokens(logits[:2], 1.0, 0.5, torch.tensor([0.0, 1.0 - 2.0**-53]))
    assert edge.tolist() == [2, 2]


def test_a_draws_entropy_is_that_of_the_nucleus_it_was_drawn_from():
    """Probabilities (0.5, 0.3, 0.2): H = -(0.5 ln 0.5 + 0.3 ln 0.3 + 0.2 ln 0.2) = 1.0297; with
    top_p = 0.6 the nucleus is (0.5, 0.3), renormalised (0.625, 0.375): H = 0.6616; greedy: 0.
    Without Sampling.entropy none is computed."""
    from treerl.rollout.draws import Sampling, pick

    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(2, 3)
    keys = torch.tensor([1, 2])
    _, _, whole = pick(logits, keys, 0, Sampling(entropy=True))
    assert whole.tolist() == pytest.approx([1.0296530] * 2, abs=1e-6)
    _, _, nucleus = pick(logits, keys, 0, Sampling(top_p=0.6, entropy=True))
    assert nucleus.tolist() == pytest.approx([0.6615632] * 2, abs=1e-6)
    assert pick(logits, keys, 0, Sampling(greedy=True, entropy=True))[2].tolist() == [0.0, 0.0]
    assert pick(logits, keys, 0, Sampling())[2] is None


def test_two_level_inverse_cdf_matches_the_distribution_across_chunks():
    """A 1000-token vocabulary (3 chunks and a padded one) with its mass on tokens 5, 300 and 999
    (0.2, 0.3, 0.5): 20,000 draws land there with those frequencies and never elsewhere; the
    log-probs are log_softmax's."""
    from treerl.rollout.draws import row_keys, sample_tokens, uniforms

    logits = torch.full((20000, 1000), float("-inf"))
    logits[:, [5, 300, 999]] = torch.tensor([0.2, 0.3, 0.5]).log()
    tokens, logps, _ = sample_tokens(
        logits, 1.0, 1.0, uniforms(row_keys(torch.Generator().manual_seed(1), 20000, "cpu"), 3)
    )
    assert set(tokens.tolist()) == {5, 300, 999}
    share = torch.bincount(tokens, minlength=1000)[[5, 300, 999]] / 20000
    assert torch.allclose(share, torch.tensor([0.2, 0.3, 0.5]), atol=0.01)
    assert torch.allclose(
        logps, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1), atol=1e-6
    )
    hot, _, _ = sample_tokens(logits[:3] * 0.1, 0.1, 1.0, torch.tensor([0.0, 0.45, 1.0 - 2.0**-53]))
    assert hot.tolist() == [5, 300, 999]


@pytest.mark.parametrize("vocab", [3, 85, 256])
def test_one_chunk_draws_what_the_two_level_search_draws(vocab):
    """Within one chunk inverse_cdf searches the weights alone: for weights spread from flat to
    peaked, with a nucleus's zeros, and u at 0, just below 1 and at random, it draws bit for bit the
    tokens of the two-level search over that chunk (whose chunk search can only give chunk 0)."""
    from treerl.rollout.draws import CHUNK, inverse_cdf, search_chunks

    generator = torch.Generator().manual_seed(vocab)
    scale = torch.linspace(0.1, 12.0, 64)[:, None]
    weights = torch.softmax(torch.randn(64, vocab, generator=generator) * scale, -1)
    weights[::4, : vocab // 2] = 0.0  # a nucleus keeps part of the vocabulary
    padded = torch.nn.functional.pad(weights, (0, CHUNK - vocab))[:, None]
    totals = padded.sum(-1, dtype=torch.float64)
    # u at random, and u on the running sum's steps, where one rounding more picks the next token
    steps = weights.double().cumsum(-1) / totals
    at_step = steps.gather(1, torch.randint(vocab, (64, 1), generator=generator))[:, 0]
    for u in (torch.rand(64, dtype=torch.float64, generator=generator), at_step.clamp(max=0.999)):
        u[:2] = torch.tensor([0.0, 1.0 - 2.0**-53])
        expected = search_chunks(padded, totals, u)
        assert torch.equal(inverse_cdf(weights, u), expected)
        assert len(set(expected.tolist())) > 2  # the draws spread over the vocabulary


GRID = 2**53
"""`uniforms` draws u = n / 2^53, n in [0, 2^53): a draw's exact probability is a count of n over
GRID."""


def exact_draw_distribution(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """P(sample_tokens draws token k) for logits [V] at T = 1 over every u, exactly: u -> token is
    monotone (the target u x total rises with u; the chunk, then the token within it, rise with the
    target), so a range [lo, hi) of n whose ends draw the same token draws it throughout. Ranges
    whose ends differ are halved until they are one n wide (at most 53 rounds, each round's
    midpoints drawn as one batch)."""
    from treerl.rollout.draws import sample_tokens

    vocab = logits.shape[-1]

    def draw(n: torch.Tensor) -> torch.Tensor:
        return (
            sample_tokens(logits.expand(len(n), vocab), 1.0, top_p, n.double() / GRID)[0]
            if len(n)
            else n
        )

    lo, hi = torch.tensor([0]), torch.tensor([GRID])
    at_lo, at_hi = draw(lo), torch.tensor([vocab])  # n = GRID is past the end: no token
    count = torch.zeros(vocab, dtype=torch.long)
    while len(lo):
        settled = (at_lo == at_hi) | (hi - lo == 1)
        count.index_add_(0, at_lo[settled], (hi - lo)[settled])
        lo, hi, at_lo, at_hi = (t[~settled] for t in (lo, hi, at_lo, at_hi))
        mid = (lo + hi) // 2
        at_mid = draw(mid)
        lo, hi, at_lo, at_hi = (
            torch.cat(pair) for pair in ((lo, mid), (mid, hi), (at_lo, at_mid), (at_mid, at_hi))
        )
    assert int(count.sum()) == GRID
    return count.double() / GRID


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@pytest.mark.parametrize("shape", ["flat", "peaked"])
def test_a_draw_follows_the_softmax_to_float64_precision(shape):
    """The exact distribution of a draw from 1024 tokens (4 chunks), flat (logits N(0, 0.1^2)) or
    peaked (one logit at 30 over N(0, 3^2): the others' probabilities span 7e-18 to 2e-8), is
    float64's softmax to 1e-7 in total variation (1.6e-8 and 5e-14 here), and every token above
    1e-14 (90 values of n) is drawn. With fp32 sums and target, the flat one was 6.5e-6 off and the
    peaked one drew only its top token (fp32's step near 1 is 6e-8)."""
    logits = torch.randn(1024, generator=torch.Generator().manual_seed(0)) * (
        0.1 if shape == "flat" else 3.0
    )
    if shape == "peaked":
        logits[0] = 30.0
    softmax = torch.softmax(logits.double(), -1)
    drawn = exact_draw_distribution(logits[None], 1.0)
    assert total_variation(drawn, softmax) < 1e-7
    assert (drawn[softmax > 1e-14] > 0).all()


def test_top_p_draws_only_inside_the_nucleus():
    """A peaked 4096-token distribution (50 logits raised by 25 over N(0, 3^2)) at top_p 0.95: a
    draw's exact distribution is the nucleus renormalised (float64) to 1e-7 in total variation, with
    nothing outside. In fp32, target - (the chunks before its chunk) came out an ulp below 0 for
    some targets, and the chunk's first token, of probability 1e-11 and outside the nucleus, was
    drawn with probability 6e-8."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, generator=generator) * 3.0
    logits[torch.randperm(4096, generator=generator)[:50]] += 25.0
    weights, order = torch.softmax(logits.double(), -1).sort(descending=True)
    weights[weights.cumsum(-1) - weights > 0.95] = 0.0
    nucleus = torch.zeros(4096, dtype=torch.float64).scatter(0, order, weights / weights.sum())
    drawn = exact_draw_distribution(logits[None], 0.95)
    assert float(drawn[nucleus == 0].sum()) == 0.0
    assert total_variation(drawn, nucleus) < 1e-7
