"""The sampling rules every backend shares (``maxrl.rollout.base``): top-k then top-p
filtering, the request's validation, and the distribution the tokens are drawn from."""

from __future__ import annotations

import pytest
import torch
from rollout_testing import ATOL, DEVICE, VOCAB, allowed_tokens, model

from maxrl.rollout import KVCacheSampler, SamplingParams
from maxrl.rollout.base import filter_logits


def test_filter_logits_sets():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda k, p: torch.isfinite(filter_logits(logits, k, p))[0].tolist()  # noqa: E731
    assert keep(2, 1.0) == [True, True, False, False, False]
    # the smallest set whose mass reaches p: 0.5 < 0.6 needs the 0.2 as well
    assert keep(0, 0.6) == [True, True, False, False, False]
    assert keep(0, 0.5) == [True, False, False, False, False]
    # top-p after top-k renormalises: in the top 3 (mass 0.85) 0.5/0.85 < 0.7
    assert keep(3, 0.7) == [True, True, False, False, False]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.3, 6, 0.8)])
def test_first_token_frequencies_match_the_model(temperature, top_k, top_p):
    """20,000 first tokens of one prompt against the model's exact next-token distribution.

    Each token's count is Binomial(n, q); |count/n - q| <= 5 sqrt(q (1-q) / n) + 1/n holds for
    all 24 tokens with probability > 0.9999 for a correct sampler, and the bound never exceeds
    0.018, so an error of 2% on any token fails. The draws are seeded: the test is
    deterministic.
    """
    m = model("qwen2_small")
    prompt = [5, 9, 2, 14]
    n = 20_000
    with torch.no_grad():
        logits = m(torch.tensor([prompt], device=DEVICE)).logits[0, -1].float().cpu()
    allowed = allowed_tokens((logits / temperature)[None], top_k, top_p)[0]
    q = (logits / temperature).masked_fill(~allowed, float("-inf")).softmax(-1)
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    r = KVCacheSampler().generate(
        m, [prompt], params, n=n, pad_token_id=0, generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(r.tokens[:, 0], minlength=VOCAB).double() / n
    bound = 5 * torch.sqrt(q.double() * (1 - q.double()) / n) + 1 / n
    assert ((freq - q.double()).abs() <= bound).all(), (freq - q).abs().max()
    # the reported log-probability is that of the untruncated tempered distribution
    expected = (logits / temperature).log_softmax(-1)[r.tokens[:, 0]]
    torch.testing.assert_close(r.logprobs[:, 0], expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, top_k=-2), "top_k"),
        (dict(max_new_tokens=4, stop_token_ids=(-1,)), "stop_token_ids"),
    ],
)
def test_bad_sampling_params_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
