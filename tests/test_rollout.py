"""Rollout samplers: exact log-probabilities, stop rules, determinism, and the distribution.

The reference for every log-probability is one full forward pass of the model over the
left-padded (prompt + rollout) sequences: ``log_softmax(logits / temperature)`` at the sampled
positions. fp32 models must agree with it to 1e-5.

The models live on ``MAXRL_TEST_DEVICE`` (default ``cpu``): ``MAXRL_TEST_DEVICE=cuda pytest
tests/test_rollout.py`` runs the same checks on a GPU (``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from maxrl.rollout import (
    HFGenerateSampler,
    KVCacheSampler,
    Rollouts,
    SamplingParams,
    make_sampler,
)
from maxrl.rollout import kv as kv_module
from maxrl.rollout.base import filter_logits, left_pad
from maxrl.rollout.kv import _common_prefix, _PrefixPlan, _split_by_work, supports_fast_path

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


def on_every_device(monkeypatch, name: str, value) -> None:
    """Set a kv sampler setting that has a CPU and a GPU value (``NAME``, ``NAME_GPU``) to
    ``value`` on both, so that a test exercises the same path on ``MAXRL_TEST_DEVICE``."""
    for suffix in ("", "_GPU"):
        monkeypatch.setattr(kv_module, name + suffix, value)


def sample(backend: str, name: str, batch: int, params: SamplingParams, seed=0, **kwargs):
    m = model(name)
    p = prompts(batch, seed)
    r = make_sampler(backend, **kwargs).generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(seed)
    )
    return m, p, r


# --- exactness -------------------------------------------------------------------------------


def test_fast_path_dispatch():
    assert supports_fast_path(model("qwen2_small")) and supports_fast_path(model("llama"))
    assert not supports_fast_path(model("gpt2"))


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama", "gpt2"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("stop", [(), (3,), (3, 5, 11)], ids=["no-stop", "one-stop", "three-stops"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_kv_logprobs_equal_full_forward(name, batch, stop, temperature):
    params = SamplingParams(max_new_tokens=10, temperature=temperature, stop_token_ids=stop)
    m, p, r = sample("kv", name, batch, params, seed=batch)
    check_rollouts(m, p, r, params)
    if stop:
        assert not r.truncated.all() or batch == 1


@pytest.mark.parametrize("name", ["qwen2_small", "gpt2"])
def test_kv_generic_path_on_fast_model_and_chunking(name):
    """The StaticCache runner on a Qwen2 model, and max_batch_size/workers chunking."""
    params = SamplingParams(max_new_tokens=8, temperature=0.9, stop_token_ids=(4,))
    for kwargs in [dict(fast_path=False), dict(max_batch_size=3), dict(workers=3)]:
        m, p, r = sample("kv", name, 8, params, seed=1, **kwargs)
        check_rollouts(m, p, r, params)


@pytest.mark.parametrize("name", ["qwen2_small", "gpt2"])
@pytest.mark.parametrize("compact_below", [0.0, 0.75, 1.0])
def test_kv_exact_when_finished_rows_are_dropped(name, compact_below):
    # stopping on a third of the vocabulary ends most rows within a few steps
    params = SamplingParams(max_new_tokens=12, stop_token_ids=tuple(range(1, VOCAB, 3)))
    m, p, r = sample("kv", name, 16, params, seed=3, compact_below=compact_below)
    check_rollouts(m, p, r, params)
    assert 1 < r.lengths.unique().numel() and not r.truncated.all()


def test_identical_prompts_are_prefilled_once_and_stay_exact():
    m = model("llama")
    # the 2nd and 4th rows are the same after left-padding but differ in length (pad inside)
    p = [[5, 6, 7], [8, 9], [5, 6, 7], [PAD, 8, 9], [5, 6, 7]]
    params = SamplingParams(max_new_tokens=6)
    r = KVCacheSampler(workers=1).generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    check_rollouts(m, p, r, params)


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


def test_prefix_plan_computes_each_trie_position_once():
    p = prefix_prompts()
    ids, lengths = left_pad(p, PAD, torch.device("cpu"))
    plan = _PrefixPlan(ids, lengths)
    trie = {tuple(q[: j + 1]) for q in p for j in range(len(q))}
    assert plan.count == len({tuple(q) for q in p}) == 8
    assert plan.computed_tokens() == len(trie) == 21
    for tokens_per_pass in (1, 5, 1000):
        parts = list(plan.passes(tokens_per_pass))
        assert parts[0].first == 0 and parts[-1].stop == plan.count
        assert sum(len(part.tokens) for part in parts) == len(trie)
        for part in parts:
            for row, col, src, src_col in zip(
                part.copy_rows, part.copy_dst_cols, part.copy_src_rows, part.copy_cols
            ):
                # a copied key/value comes from an earlier prompt with the same tokens up to it
                assert src < row
                assert col - plan.pads[row] == src_col - plan.pads[src]
                dst_prefix = plan.prompts[row][: col - plan.pads[row] + 1]
                assert dst_prefix == plan.prompts[src][: src_col - plan.pads[src] + 1]
    # each prompt's row maps back to its own tokens
    for i, q in enumerate(p):
        assert plan.prompts[plan.inverse[i]] == tuple(q)


def test_streams_get_equal_work_not_equal_rows():
    # 4 prompts sharing nothing, then 12 repeats of one prompt: the repeats cost only decoding
    unique = [[i + 1] * 10 for i in range(4)]
    prompts = sorted(unique + [[9] * 10] * 12)
    bounds = _split_by_work(prompts, 2, new_tokens=5)
    work = [len(p) - _common_prefix(p, q) + 5 for p, q in zip(prompts, [[], *prompts])]
    halves = [sum(work[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == len(prompts)
    assert abs(halves[0] - halves[1]) <= max(work) and bounds[1] < len(prompts) // 2
    # every stream keeps at least one row, whatever the work
    assert _split_by_work([[1] * 50, [2]], 2, 1) == [0, 1, 2]
    assert _split_by_work([[1]] * 3, 3, 1) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
@pytest.mark.parametrize("tokens_per_pass", [1, 7, 2048])
def test_prefix_shared_prefill_is_exact(name, tokens_per_pass, monkeypatch):
    """Shared prefixes computed once, in passes that split prompts from the ones they copy."""
    on_every_device(monkeypatch, "PREFILL_TOKENS_PER_PASS", tokens_per_pass)
    m = model(name)
    p = prefix_prompts()
    params = SamplingParams(max_new_tokens=7, temperature=0.9, stop_token_ids=(3,))
    for workers in (1, 2):
        r = KVCacheSampler(workers=workers).generate(
            m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(2)
        )
        check_rollouts(m, p, r, params)
    # shared mode: every prompt repeated, in shuffled order
    order = torch.randperm(16 * len(p), generator=torch.Generator().manual_seed(0)) % len(p)
    many = [p[i] for i in order.tolist()]
    r = KVCacheSampler(workers=1).generate(
        m, many, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(3)
    )
    check_rollouts(m, many, r, params)


def common_prefix_prompts() -> list[list[int]]:
    """Distinct prompts behind one 9-token prefix (a system prompt, say): suffixes of
    different lengths (so the prefix sits in different cache columns), one containing the pad
    id, a prompt that is the prefix alone, a repeat, and suffixes that share more."""
    system = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    suffixes = [[14, 15], [16], [], [14, 15, 17, 18, 19], [PAD, 20], [14, 15], [21, 22, 23]]
    return [system + s for s in suffixes]


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
@pytest.mark.parametrize("compact_below", [0.0, 0.75])
def test_common_prefix_cached_once_is_exact(name, compact_below, monkeypatch):
    """The prefix all of a stream's distinct prompts share is cached once and read by one
    GEMM per kv head; the rollouts still match a full forward pass."""
    on_every_device(monkeypatch, "MIN_COMMON_PREFIX", kv_module.MIN_COMMON_PREFIX)
    m = model(name)
    p = common_prefix_prompts()
    params = SamplingParams(max_new_tokens=8, temperature=0.9, stop_token_ids=(3, 4))
    for tokens_per_pass in (1, 2048):
        on_every_device(monkeypatch, "PREFILL_TOKENS_PER_PASS", tokens_per_pass)
        for workers in (1, 2):
            sampler = KVCacheSampler(workers=workers, compact_below=compact_below)
            r = sampler.generate(
                m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(4)
            )
            check_rollouts(m, p, r, params)
    # one distinct prompt, too few repeats for shared mode: the whole prompt is the prefix
    one = [p[0]] * 3
    r = KVCacheSampler(workers=1).generate(
        m, one, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(5)
    )
    check_rollouts(m, one, r, params)


def runner_logits(m, prompt_ids, by_rows: bool, drop_at: int, keep: list[int]):
    """Logits of a ``_DecoderRunner`` over the prompts' prefill and 5 decode steps, keeping
    only rows ``keep`` from step ``drop_at`` on; and the runner."""
    ids, lengths = left_pad(prompt_ids, PAD, DEVICE)
    runner = kv_module._DecoderRunner(m, 6)
    runner.by_rows = by_rows
    tokens = torch.arange(len(prompt_ids), device=DEVICE) * 5 % (VOCAB - 1) + 1
    with torch.no_grad():
        out = [runner.prefill(ids, lengths)]
        for step in range(5):
            if step == drop_at:
                runner.select(torch.tensor(keep, device=DEVICE))
                tokens = tokens[keep]
            out.append(runner.step(tokens))
    return [x.cpu() for x in out], runner


@pytest.mark.parametrize("by_rows", [True, False])
def test_common_prefix_attention_equals_per_row_cache(by_rows, monkeypatch):
    """Step by step, with rows dropped, the logits with the common prefix cached once equal
    those with every row caching its whole prompt."""
    m = model("qwen2_wide")
    logits = {}
    for least in (1, 10**9):
        on_every_device(monkeypatch, "MIN_COMMON_PREFIX", least)
        logits[least], runner = runner_logits(m, common_prefix_prompts(), by_rows, 2, [0, 2, 3, 6])
        assert runner.prefix == (9 if least == 1 else 0)
    assert [x.shape[0] for x in logits[1]] == [7, 7, 7, 4, 4, 4]
    for a, b in zip(logits[1], logits[10**9]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
@pytest.mark.parametrize("compact_below", [0.0, 0.75])
def test_shared_prompt_cache_is_exact(name, compact_below, monkeypatch):
    """Groups of rollouts of one prompt, shuffled: the prompt cache is kept once per prompt."""
    on_every_device(monkeypatch, "MIN_ROWS_PER_SHARED_PROMPT", kv_module.MIN_ROWS_PER_SHARED_PROMPT)
    calls = []
    shared_attention = kv_module._DecoderRunner._shared_attention

    def counted(runner, *args):
        calls.append(1)
        return shared_attention(runner, *args)

    monkeypatch.setattr(kv_module._DecoderRunner, "_shared_attention", counted)
    m = model(name)
    distinct = [[5, 6, 7, 8, 9], [PAD, 11], [12, 13, 14]]
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0)) % 3
    p = [distinct[i] for i in order.tolist()]
    params = SamplingParams(max_new_tokens=10, temperature=0.8, stop_token_ids=(3, 4, 10))
    sampler = KVCacheSampler(workers=1, compact_below=compact_below)
    r = sampler.generate(m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    check_rollouts(m, p, r, params)
    assert not r.truncated.all() and r.truncated.any()
    assert calls  # the shared-mode attention ran


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_layer0_table_rows_equal_the_projections(name, monkeypatch):
    """Layer 0's q/k/v looked up by token equal the fused GEMM, and the fused GEMM equals the
    model's own q_proj, k_proj and v_proj (Qwen2 with biases, Llama without)."""
    on_every_device(monkeypatch, "TABLE_MAX_VOCAB", kv_module.TABLE_MAX_VOCAB)
    m = model(name)
    fused = kv_module._Projections(m)
    assert fused.table is not None and fused.table.shape[0] == VOCAB
    tokens = torch.tensor([0, 5, 5, VOCAB - 1, 3], device=DEVICE)
    with torch.no_grad():
        h = m.model.embed_tokens(tokens)
        x = m.model.layers[0].input_layernorm(h)
        attn = m.model.layers[0].self_attn
        expected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        torch.testing.assert_close(fused(0, h, tokens), expected, rtol=0, atol=1e-6)
        fused.table = None
        torch.testing.assert_close(fused(0, h, tokens), expected, rtol=0, atol=1e-6)
        cols = slice(attn.q_proj.out_features, None)
        torch.testing.assert_close(fused(0, h, tokens, cols), expected[:, cols], rtol=0, atol=1e-6)


def test_layer0_table_is_a_cpu_setting():
    """The token table follows TABLE_MAX_VOCAB on CPU and TABLE_MAX_VOCAB_GPU elsewhere (a
    meta-device copy stands in for a GPU: it has shapes but no data)."""
    cpu = MODELS["qwen2_small"]().to("cpu")
    assert kv_module._Projections(cpu).table is not None
    off_cpu = MODELS["qwen2_small"]().to("meta")
    assert kv_module.TABLE_MAX_VOCAB_GPU < VOCAB
    assert kv_module._Projections(off_cpu).table is None


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_kv_exact_without_the_layer0_table(name, monkeypatch):
    """A vocabulary above TABLE_MAX_VOCAB computes layer 0's projections by GEMM."""
    on_every_device(monkeypatch, "TABLE_MAX_VOCAB", VOCAB - 1)
    assert kv_module._Projections(model(name)).table is None
    params = SamplingParams(max_new_tokens=8, temperature=0.9, stop_token_ids=(3,))
    m, p, r = sample("kv", name, 7, params, seed=4)
    check_rollouts(m, p, r, params)


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
def test_decode_attention_by_rows_equals_matmul(name):
    """The CPU decode attention (values summed by ``embedding_bag``) and the matmul one used
    on other devices give the same logits, with left padding and dropped rows."""
    m = model(name)
    logits = {}
    for by_rows in (True, False):
        logits[by_rows], _ = runner_logits(m, prompts(6, seed=5), by_rows, 3, [0, 2, 3, 5])
    assert [x.shape[0] for x in logits[True]] == [6, 6, 6, 6, 4, 4]
    for a, b in zip(logits[True], logits[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_stop_on_the_first_token():
    params = SamplingParams(max_new_tokens=5, stop_token_ids=tuple(range(VOCAB)))
    for backend in ["kv", "hf"]:
        m, p, r = sample(backend, "qwen2_small", 4, params)
        check_rollouts(m, p, r, params)
        assert r.lengths.tolist() == [1] * 4 and not r.truncated.any()


@pytest.mark.parametrize("backend", ["kv", "hf"])
@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_greedy_is_argmax_with_temperature_one_logprobs(backend, name):
    params = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=(3,))
    m, p, r = sample(backend, name, 5, params)
    reference = check_rollouts(m, p, r, params)
    for i, logits in enumerate(reference):
        assert r.tokens[i, : len(logits)].tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("backend", ["kv", "hf"])
@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.7)])
def test_top_k_top_p_stay_in_the_allowed_set(backend, top_k, top_p):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=top_k, top_p=top_p)
    m, p, r = sample(backend, "qwen2_small", 6, params, seed=2)
    reference = check_rollouts(m, p, r, params)
    for i, logits in enumerate(reference):
        scaled = logits / params.temperature
        allowed = allowed_tokens(scaled, top_k, top_p)
        chosen = r.tokens[i, : len(logits)]
        assert allowed.gather(-1, chosen[:, None]).all()
        if top_k:
            assert (allowed.sum(-1) <= top_k).all()


def test_filter_logits_sets():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda k, p: torch.isfinite(filter_logits(logits, k, p))[0].tolist()  # noqa: E731
    assert keep(2, 1.0) == [True, True, False, False, False]
    # the smallest set whose mass reaches p: 0.5 < 0.6 needs the 0.2 as well
    assert keep(0, 0.6) == [True, True, False, False, False]
    assert keep(0, 0.5) == [True, False, False, False, False]
    # top-p after top-k renormalises: in the top 3 (mass 0.85) 0.5/0.85 < 0.7
    assert keep(3, 0.7) == [True, True, False, False, False]


# --- the hf backend --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2_small", "gpt2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_logprobs_equal_full_forward(name, temperature):
    params = SamplingParams(max_new_tokens=9, temperature=temperature, stop_token_ids=(3, 7))
    m, p, r = sample("hf", name, 6, params, seed=4, max_batch_size=4)
    check_rollouts(m, p, r, params)


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


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["kv", "hf"])
def test_seeded_generator_is_deterministic(backend):
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(3,))
    runs = [sample(backend, "qwen2_small", 9, params, seed=s)[2] for s in (5, 5, 6)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)


@pytest.mark.parametrize("backend", ["kv", "hf"])
def test_global_rng_untouched_with_a_generator(backend):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample(backend, "qwen2_small", 2, SamplingParams(max_new_tokens=3))
    assert torch.equal(torch.rand(3), expected)


# --- the sampling distribution ---------------------------------------------------------------


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
        m, [prompt] * n, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(r.tokens[:, 0], minlength=VOCAB).double() / n
    bound = 5 * torch.sqrt(q.double() * (1 - q.double()) / n) + 1 / n
    assert ((freq - q.double()).abs() <= bound).all(), (freq - q).abs().max()
    # the reported log-probability is that of the untruncated tempered distribution
    expected = (logits / temperature).log_softmax(-1)[r.tokens[:, 0]]
    torch.testing.assert_close(r.logprobs[:, 0], expected, rtol=0, atol=ATOL)


# --- bf16 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_set", ["varied", "common-prefix"])
def test_bf16_model_logprobs_close_to_its_full_forward(prompt_set, monkeypatch):
    on_every_device(monkeypatch, "MIN_COMMON_PREFIX", kv_module.MIN_COMMON_PREFIX)
    m = MODELS["qwen2_small"]().to(torch.bfloat16)
    p = prompts(6) if prompt_set == "varied" else common_prefix_prompts()
    params = SamplingParams(max_new_tokens=8, stop_token_ids=(3,))
    r = KVCacheSampler(workers=1).generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    reference = full_forward_logits(m, p, r)
    for i, logits in enumerate(reference):
        n = len(logits)
        expected = logits.log_softmax(-1).gather(-1, r.tokens[i, :n, None]).squeeze(-1)
        # bf16 keeps 8 mantissa bits: logits differ by a few parts in a thousand
        torch.testing.assert_close(r.logprobs[i, :n], expected, rtol=0, atol=0.05)


# --- interface -------------------------------------------------------------------------------


def test_make_sampler_names():
    assert isinstance(make_sampler(), KVCacheSampler)
    assert isinstance(make_sampler("hf"), HFGenerateSampler)
    with pytest.raises(ValueError, match="unknown sampler 'beam'"):
        make_sampler("beam")


def test_vllm_import_error_names_the_install():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            make_sampler("vllm", model="unused")
    else:
        pytest.skip("vllm is installed; its sampler needs a GPU test")


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


def test_bad_requests_raise():
    m = model("qwen2_small")
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        KVCacheSampler().generate(m, [[1], []], params, pad_token_id=PAD)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        KVCacheSampler().generate(m, [], params, pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_batch_size"):
        KVCacheSampler(max_batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        KVCacheSampler(workers=0)


def test_prompts_as_tuples_tensors_and_arrays_give_the_same_rollouts():
    import numpy as np

    m = model("qwen2_small")
    p = prompts(6, seed=7)
    mixed = [tuple(p[0]), torch.tensor(p[1]), np.array(p[2]), *p[3:]]
    params = SamplingParams(max_new_tokens=5)
    runs = [
        KVCacheSampler(workers=2).generate(
            m, q, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
        )
        for q in (p, mixed)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)


def test_training_mode_is_restored():
    m = model("qwen2_small")
    m.train()
    try:
        sample("kv", "qwen2_small", 2, SamplingParams(max_new_tokens=2))
        assert m.training
    finally:
        m.eval()
