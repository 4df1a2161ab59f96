"""Shared fixtures of the rollout tests: tiny models of every runner's architecture, prompts,
and the reference every log-probability is checked against.

The reference is one full forward pass of the model over the left-padded (prompt + rollout)
sequences: ``log_softmax(logits / temperature)`` at the sampled positions. fp32 models must
agree with it to 1e-5.

The models live on ``MAXRL_TEST_DEVICE`` (default ``cpu``): ``MAXRL_TEST_DEVICE=cuda pytest
tests/test_sampler_contract.py tests/test_kv_exactness.py`` runs the same checks on a GPU
(``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import dataclasses
import os

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from maxrl.rollout import Rollouts, SamplingParams, make_sampler
from maxrl.rollout.kv import CPU, KVSettings, settings_for

PAD = 0
VOCAB = 24
ATOL = 1e-5
DEVICE = torch.device(os.environ.get("MAXRL_TEST_DEVICE", "cpu"))


def _build(factory, config):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory(config).eval().to(DEVICE)


MODELS = {
    "qwen2_small": lambda: _build(
        Qwen2ForCausalLM,
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=128,
        ),
    ),
    "qwen2_wide": lambda: _build(
        Qwen2ForCausalLM,
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=96,
            intermediate_size=160,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=6,
            tie_word_embeddings=False,
            max_position_embeddings=128,
        ),
    ),
    "llama": lambda: _build(
        LlamaForCausalLM,
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    # not a fast-path architecture: exercises the generic StaticCache runner
    "gpt2": lambda: _build(
        GPT2LMHeadModel,
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
}
_cache: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _cache:
        _cache[name] = MODELS[name]()
    return _cache[name]


def prompts(batch: int, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths (1 to 9 tokens), one of them containing the pad id."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        length = 1 + (i * 4 + seed) % 9
        out.append(torch.randint(1, VOCAB, (length,), generator=g).tolist())
    if batch > 2:
        out[2] = [PAD, *out[2]]
    return out


def full_forward_logits(m, prompt_ids, rollouts: Rollouts) -> list[torch.Tensor]:
    """Per row: the model's logits at the positions that predicted each generated token."""
    seqs = [
        p + rollouts.tokens[i, : rollouts.lengths[i]].tolist() for i, p in enumerate(prompt_ids)
    ]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(DEVICE), mask.to(DEVICE), positions.to(DEVICE)
    with torch.no_grad():
        logits = m(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().cpu()
    out = []
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        first = width - len(s) + len(p) - 1
        out.append(logits[i, first : first + int(rollouts.lengths[i])])
    return out


def check_rollouts(m, prompt_ids, r: Rollouts, params: SamplingParams) -> list[torch.Tensor]:
    """Assert every property of the Rollouts contract; return the reference logits per row."""
    batch, width = len(prompt_ids), params.max_new_tokens
    assert r.tokens.shape == (batch, width) and r.tokens.dtype == torch.long
    assert r.logprobs.shape == (batch, width) and r.logprobs.dtype == torch.float32
    assert r.lengths.shape == (batch,) and r.truncated.dtype == torch.bool
    stops = set(params.stop_token_ids)
    reference = full_forward_logits(m, prompt_ids, r)
    temperature = params.temperature or 1.0
    for i in range(batch):
        n = int(r.lengths[i])
        assert 1 <= n <= width
        generated = r.tokens[i, :n].tolist()
        # the stop rule: no stop token before the last one; truncated iff none at all
        assert not stops.intersection(generated[:-1])
        assert bool(r.truncated[i]) == (generated[-1] not in stops)
        if r.truncated[i]:
            assert n == width
        assert (r.tokens[i, n:] == PAD).all() and (r.logprobs[i, n:] == 0).all()
        expected = (reference[i] / temperature).log_softmax(-1)
        expected = expected.gather(-1, torch.tensor(generated)[:, None]).squeeze(-1)
        torch.testing.assert_close(r.logprobs[i, :n], expected, rtol=0, atol=ATOL)
    return reference


def allowed_tokens(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Boolean mask of the tokens top-k then top-p may sample, written independently of the
    samplers: the k largest logits (ties at the k-th kept), then the shortest run of the most
    likely of those whose renormalised mass reaches top_p."""
    keep = torch.zeros(scaled.shape, dtype=torch.bool)
    for row in range(scaled.shape[0]):
        values = scaled[row].tolist()
        order = sorted(range(len(values)), key=lambda t: -values[t])
        if top_k:
            order = [t for t in order if values[t] >= values[order[top_k - 1]]]
        probs = torch.tensor([values[t] for t in order]).softmax(0).tolist()
        mass = 0.0
        for t, prob in zip(order, probs):
            keep[row, t] = True
            mass += prob
            if mass >= top_p:
                break
    return keep


def kv_settings(**changes) -> KVSettings:
    """The kv settings of ``DEVICE`` with ``changes``; a field given as ``"cpu"`` takes the CPU
    value, so that a test exercises the CPU path on any device."""
    base = settings_for(DEVICE)
    values = {k: getattr(CPU, k) if v == "cpu" else v for k, v in changes.items()}
    return dataclasses.replace(base, **values)


def sample(backend: str, name: str, batch: int, params: SamplingParams, seed=0, **kwargs):
    m = model(name)
    p = prompts(batch, seed)
    r = make_sampler(backend, **kwargs).generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(seed)
    )
    return m, p, r


def prefix_prompts() -> list[list[int]]:
    """Prompts whose prefixes overlap in every way the prefill shares work across: a common
    root, a prompt that is a prefix of others, branches at different depths, a repeat, a
    lone prompt, and different lengths (so shared positions sit in different cache columns)."""
    return [
        [5, 6, 7, 8, 9, 10],
        [5, 6, 7],
        [5, 6, 7, 8, 11],
        [5, 6, 12, 13, 14, 15, 16],
        [20, 21],
        [5, 6, 7, 8, 9, 10],
        [5, 6, 7, 8, 9, 17, 18, 19],
        [PAD, 5, 6, 7],
        [5, 6, 12, 13],
    ]


def common_prefix_prompts() -> list[list[int]]:
    """Distinct prompts behind one 9-token prefix (a system prompt, say): suffixes of
    different lengths (so the prefix sits in different cache columns), one containing the pad
    id, a prompt that is the prefix alone, a repeat, and suffixes that share more."""
    system = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    suffixes = [[14, 15], [16], [], [14, 15, 17, 18, 19], [PAD, 20], [14, 15], [21, 22, 23]]
    return [system + s for s in suffixes]
