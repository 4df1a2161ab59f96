"""The sampler contract, checked for every backend: exact log-probabilities, the stop rule,
the group-major layout of ``n`` rollouts per prompt, determinism, and bad requests.

Backends: ``kv`` (its fast runner on Qwen2/Llama, the generic one on GPT-2), ``kv-generic``
(the generic runner forced on every model) and ``hf`` (``model.generate``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rollout_testing import (
    MODELS,
    PAD,
    VOCAB,
    allowed_tokens,
    check_rollouts,
    model,
    prompts,
)

from maxrl.rollout import HFGenerateSampler, KVCacheSampler, SamplingParams, make_sampler

BACKENDS = {
    "kv": ("kv", {}),
    "kv-generic": ("kv", {"fast_path": False}),
    "hf": ("hf", {"max_batch_size": 4}),
}


def sampler(backend: str):
    name, kwargs = BACKENDS[backend]
    return make_sampler(name, **kwargs)


def generate(backend, name, prompt_ids, params, seed=0, n=1):
    m = model(name)
    r = sampler(backend).generate(
        m, prompt_ids, params, n=n, pad_token_id=PAD, generator=torch.Generator().manual_seed(seed)
    )
    return m, r


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["qwen2_small", "llama", "gpt2"])
@pytest.mark.parametrize("stop", [(), (3, 5, 11)], ids=["no-stop", "three-stops"])
def test_logprobs_equal_full_forward(backend, name, stop):
    params = SamplingParams(max_new_tokens=9, temperature=0.8, stop_token_ids=stop)
    p = prompts(7, seed=len(stop))
    m, r = generate(backend, name, p, params, seed=1)
    check_rollouts(m, p, r, params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 4])
def test_n_rollouts_per_prompt_are_group_major(backend, n):
    """Row g * n + j is rollout j of prompt g; each matches its own prompt's full forward."""
    params = SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=(3,))
    p = prompts(5, seed=2)
    m, r = generate(backend, "qwen2_small", p, params, seed=3, n=n)
    assert r.tokens.shape == (5 * n, 6)
    check_rollouts(m, [q for q in p for _ in range(n)], r, params)
    if n > 1:  # the rollouts of a prompt are independent draws, not copies
        groups = r.tokens.view(5, n, 6)
        assert any(len({tuple(row.tolist()) for row in g}) > 1 for g in groups)


@pytest.mark.parametrize("backend", ["kv", "hf"])
def test_n_equals_repeating_the_prompts(backend):
    """Asking for n rollouts of each prompt samples exactly what the repeated prompts would."""
    params = SamplingParams(max_new_tokens=6, stop_token_ids=(3,))
    p = prompts(4, seed=4)
    _, grouped = generate(backend, "llama", p, params, seed=5, n=3)
    _, flat = generate(backend, "llama", [q for q in p for _ in range(3)], params, seed=5)
    assert torch.equal(grouped.tokens, flat.tokens)
    assert torch.equal(grouped.logprobs, flat.logprobs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_on_the_first_token(backend):
    params = SamplingParams(max_new_tokens=5, stop_token_ids=tuple(range(VOCAB)))
    p = prompts(4)
    m, r = generate(backend, "qwen2_small", p, params)
    check_rollouts(m, p, r, params)
    assert r.lengths.tolist() == [1] * 4 and not r.truncated.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_greedy_is_argmax_with_temperature_one_logprobs(backend, name):
    params = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=(3,))
    p = prompts(5)
    m, r = generate(backend, name, p, params)
    reference = check_rollouts(m, p, r, params)
    for i, logits in enumerate(reference):
        assert r.tokens[i, : len(logits)].tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.7)])
def test_top_k_top_p_stay_in_the_allowed_set(backend, top_k, top_p):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=top_k, top_p=top_p)
    p = prompts(6, seed=2)
    m, r = generate(backend, "qwen2_small", p, params, seed=2)
    reference = check_rollouts(m, p, r, params)
    for i, logits in enumerate(reference):
        scaled = logits / params.temperature
        allowed = allowed_tokens(scaled, top_k, top_p)
        chosen = r.tokens[i, : len(logits)]
        assert allowed.gather(-1, chosen[:, None]).all()
        if top_k:
            assert (allowed.sum(-1) <= top_k).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_generator_is_deterministic(backend):
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(3,))
    runs = [generate(backend, "qwen2_small", prompts(9, s), params, seed=s)[1] for s in (5, 5, 6)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_rng_untouched_with_a_generator(backend):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(backend, "qwen2_small", prompts(2), SamplingParams(max_new_tokens=3))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_mode_is_restored(backend):
    m = model("qwen2_small")
    m.train()
    try:
        generate(backend, "qwen2_small", prompts(2), SamplingParams(max_new_tokens=2))
        assert m.training
    finally:
        m.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompts_as_tuples_tensors_and_arrays_give_the_same_rollouts(backend):
    p = prompts(6, seed=7)
    mixed = [tuple(p[0]), torch.tensor(p[1]), np.array(p[2]), *p[3:]]
    params = SamplingParams(max_new_tokens=5)
    runs = [generate(backend, "qwen2_small", q, params)[1] for q in (p, mixed)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_requests_raise(backend):
    m = model("qwen2_small")
    params = SamplingParams(max_new_tokens=2)
    s = sampler(backend)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        s.generate(m, [[1], []], params, pad_token_id=PAD)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        s.generate(m, [], params, pad_token_id=PAD)
    with pytest.raises(ValueError, match="n \\(rollouts per prompt\\) must be an integer >= 1"):
        s.generate(m, [[1]], params, n=0, pad_token_id=PAD)


def test_bad_sampler_options_raise():
    with pytest.raises(ValueError, match="max_batch_size"):
        KVCacheSampler(max_batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        KVCacheSampler(workers=0)
    with pytest.raises(ValueError, match="compact_below"):
        KVCacheSampler(compact_below=2.0)
    with pytest.raises(ValueError, match="max_batch_size"):
        HFGenerateSampler(max_batch_size=0)


def test_hf_ignores_the_models_generation_config():
    m = MODELS["qwen2_small"]()
    m.generation_config.no_repeat_ngram_size = 1  # would forbid any repeated token
    m.generation_config.repetition_penalty = 5.0
    p = prompts(8)
    params = SamplingParams(max_new_tokens=12)
    r = make_sampler("hf").generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    check_rollouts(m, p, r, params)
    # 12 draws over 24 tokens repeat one with probability > 0.9 per row
    assert any(len(set(row.tolist())) < 12 for row in r.tokens)
    assert m.generation_config.no_repeat_ngram_size == 1


def test_make_sampler_names():
    assert isinstance(make_sampler(), KVCacheSampler)
    assert isinstance(make_sampler("hf"), HFGenerateSampler)
    with pytest.raises(ValueError, match="unknown sampler 'beam'"):
        make_sampler("beam")


def test_vllm_import_error_names_the_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            make_sampler("vllm", model="unused")
    else:
        pytest.skip("vllm is installed; its sampler needs a GPU test")
