"""The kv sampler's exactness on every path it can take: the fast runner with prefix-shared
prefill, the common prefix cached once, shared prompt caches, the layer-0 token table, decode
attention by rows, row dropping, chunking and bf16. Each path is switched on through
``KVSettings`` (``kv_settings``), never by patching the module."""

from __future__ import annotations

import pytest
import torch
from rollout_testing import (
    DEVICE,
    MODELS,
    PAD,
    VOCAB,
    check_rollouts,
    common_prefix_prompts,
    full_forward_logits,
    kv_settings,
    model,
    prefix_prompts,
    prompts,
    sample,
)

from maxrl.rollout import KVCacheSampler, SamplingParams
from maxrl.rollout.base import left_pad
from maxrl.rollout.kv import DecoderRunner, supports_fast_path
from maxrl.rollout.kv.projections import Projections


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


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
@pytest.mark.parametrize("tokens_per_pass", [1, 7, 2048])
def test_prefix_shared_prefill_is_exact(name, tokens_per_pass):
    """Shared prefixes computed once, in passes that split prompts from the ones they copy."""
    settings = kv_settings(prefill_tokens_per_pass=tokens_per_pass)
    m = model(name)
    p = prefix_prompts()
    params = SamplingParams(max_new_tokens=7, temperature=0.9, stop_token_ids=(3,))
    for workers in (1, 2):
        r = KVCacheSampler(workers=workers, settings=settings).generate(
            m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(2)
        )
        check_rollouts(m, p, r, params)
    # shared mode: every prompt repeated, in shuffled order, and 16 rollouts of each
    shared = kv_settings(prefill_tokens_per_pass=tokens_per_pass, min_rows_per_shared_prompt="cpu")
    order = torch.randperm(16 * len(p), generator=torch.Generator().manual_seed(0)) % len(p)
    many = [p[i] for i in order.tolist()]
    for rollouts, n in ((many, 1), (p, 16)):
        r = KVCacheSampler(workers=1, settings=shared).generate(
            m, rollouts, params, n=n, pad_token_id=PAD, generator=torch.Generator().manual_seed(3)
        )
        check_rollouts(m, [q for q in rollouts for _ in range(n)], r, params)


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
@pytest.mark.parametrize("compact_below", [0.0, 0.75])
def test_common_prefix_cached_once_is_exact(name, compact_below):
    """The prefix all of a stream's distinct prompts share is cached once and read by one
    GEMM per kv head; the rollouts still match a full forward pass."""
    m = model(name)
    p = common_prefix_prompts()
    params = SamplingParams(max_new_tokens=8, temperature=0.9, stop_token_ids=(3, 4))
    for tokens_per_pass in (1, 2048):
        settings = kv_settings(min_common_prefix="cpu", prefill_tokens_per_pass=tokens_per_pass)
        for workers in (1, 2):
            sampler = KVCacheSampler(
                workers=workers, compact_below=compact_below, settings=settings
            )
            r = sampler.generate(
                m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(4)
            )
            check_rollouts(m, p, r, params)
    # one distinct prompt, too few repeats for shared mode: the whole prompt is the prefix
    one = [p[0]] * 3
    r = KVCacheSampler(workers=1, settings=kv_settings(min_common_prefix="cpu")).generate(
        m, one, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(5)
    )
    check_rollouts(m, one, r, params)


def runner_logits(m, prompt_ids, settings, drop_at: int, keep: list[int], rows_of=None):
    """Logits of a ``DecoderRunner`` over the prompts' prefill and 5 decode steps, keeping
    only rows ``keep`` from step ``drop_at`` on; and the runner. Row r decodes prompt
    ``rows_of[r]`` (default: one row per prompt)."""
    ids, lengths = left_pad(prompt_ids, PAD, DEVICE)
    runner = DecoderRunner(m, 6, settings)
    rows = len(prompt_ids) if rows_of is None else len(rows_of)
    tokens = torch.arange(rows, device=DEVICE) * 5 % (VOCAB - 1) + 1
    if rows_of is not None:
        rows_of = torch.tensor(rows_of, device=DEVICE)
    with torch.no_grad():
        out = [runner.prefill(ids, lengths, rows_of)]
        for step in range(5):
            if step == drop_at:
                runner.select(torch.tensor(keep, device=DEVICE))
                tokens = tokens[keep]
            out.append(runner.step(tokens))
    return [x.cpu() for x in out], runner


@pytest.mark.parametrize("by_rows", [True, False])
def test_common_prefix_attention_equals_per_row_cache(by_rows):
    """Step by step, with rows dropped, the logits with the common prefix cached once equal
    those with every row caching its whole prompt."""
    m = model("qwen2_wide")
    logits = {}
    for least in (1, 10**9):
        settings = kv_settings(min_common_prefix=least, value_sums_by_rows=by_rows)
        logits[least], runner = runner_logits(m, common_prefix_prompts(), settings, 2, [0, 2, 3, 6])
        assert runner.prefix == (9 if least == 1 else 0)
    assert [x.shape[0] for x in logits[1]] == [7, 7, 7, 4, 4, 4]
    for a, b in zip(logits[1], logits[10**9]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
@pytest.mark.parametrize("compact_below", [0.0, 0.75])
def test_shared_prompt_cache_is_exact(name, compact_below):
    """Groups of rollouts of one prompt, shuffled: the prompt cache is kept once per prompt."""
    settings = kv_settings(min_rows_per_shared_prompt="cpu")
    m = model(name)
    distinct = [[5, 6, 7, 8, 9], [PAD, 11], [12, 13, 14]]
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0)) % 3
    p = [distinct[i] for i in order.tolist()]
    params = SamplingParams(max_new_tokens=10, temperature=0.8, stop_token_ids=(3, 4, 10))
    sampler = KVCacheSampler(workers=1, compact_below=compact_below, settings=settings)
    r = sampler.generate(m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    check_rollouts(m, p, r, params)
    assert not r.truncated.all() and r.truncated.any()
    # the same batch at the runner: shared mode is on, and its logits equal per-row caches
    rows_of = order.tolist()
    logits = {}
    for least in (settings.min_rows_per_shared_prompt, 10**9):
        each = kv_settings(min_rows_per_shared_prompt=least)
        logits[least], runner = runner_logits(m, distinct, each, 2, list(range(0, 60, 3)), rows_of)
        assert runner.shared == (least < 10**9)
    for a, b in zip(*logits.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_shared_prompts_by_grid_equal_one_gemm_per_prompt(name, monkeypatch):
    """Shared-prompt decode attention over the (prompts, rows) grid, with uneven rows after
    some are dropped (the grid's empty places read row 0), gives the logits of one GEMM per
    prompt, and both sample exactly."""
    from maxrl.rollout.kv import decoder

    m = model(name)
    distinct = [[5, 6, 7, 8, 9], [PAD, 11], [12, 13, 14]]
    rows_of = (torch.randperm(12, generator=torch.Generator().manual_seed(2)) % 3).tolist()
    keep = [r for r in range(12) if rows_of[r] != 1 or r % 4 == 0]  # prompt 1 keeps one row
    monkeypatch.setattr(decoder, "GRID_WASTE", float("inf"))  # the grid at any unevenness
    logits, paths = {}, {}
    for most in (0, 64):
        settings = kv_settings(min_rows_per_shared_prompt=2, prompt_grid_max_rows=most)
        logits[most], runner = runner_logits(m, distinct, settings, 2, keep, rows_of)
        paths[most] = runner.members is None
        params = SamplingParams(max_new_tokens=10, temperature=0.8, stop_token_ids=(3, 4, 10))
        p = [distinct[u] for u in rows_of]
        sampler = KVCacheSampler(workers=1, settings=settings)
        r = sampler.generate(
            m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(1)
        )
        check_rollouts(m, p, r, params)
    assert paths == {0: False, 64: True}
    assert len(keep) < 12 and logits[0][-1].shape[0] == len(keep)
    for a, b in zip(logits[0], logits[64]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_layer0_table_rows_equal_the_projections(name):
    """Layer 0's q/k/v looked up by token equal the fused GEMM, and the fused GEMM equals the
    model's own q_proj, k_proj and v_proj (Qwen2 with biases, Llama without)."""
    m = model(name)
    fused = Projections(m, table_max_vocab=VOCAB)
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


@pytest.mark.parametrize("name", ["qwen2_small", "llama"])
def test_kv_exact_with_and_without_the_layer0_table(name):
    """A vocabulary above ``table_max_vocab`` computes layer 0's projections by GEMM; at or
    below it they are looked up; both are exact."""
    assert Projections(model(name), table_max_vocab=VOCAB - 1).table is None
    params = SamplingParams(max_new_tokens=8, temperature=0.9, stop_token_ids=(3,))
    for table_max_vocab in (VOCAB - 1, VOCAB):
        settings = kv_settings(table_max_vocab=table_max_vocab)
        m, p, r = sample("kv", name, 7, params, seed=4, settings=settings)
        check_rollouts(m, p, r, params)


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
def test_decode_attention_by_rows_equals_matmul(name):
    """The CPU decode attention (values summed by ``embedding_bag``) and the matmul one used
    on other devices give the same logits, with left padding and dropped rows."""
    m = model(name)
    logits = {}
    for by_rows in (True, False):
        settings = kv_settings(value_sums_by_rows=by_rows)
        logits[by_rows], _ = runner_logits(m, prompts(6, seed=5), settings, 3, [0, 2, 3, 5])
    assert [x.shape[0] for x in logits[True]] == [6, 6, 6, 6, 4, 4]
    for a, b in zip(logits[True], logits[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prompt_set", ["varied", "common-prefix"])
def test_bf16_model_logprobs_close_to_its_full_forward(prompt_set):
    m = MODELS["qwen2_small"]().to(torch.bfloat16)
    p = prompts(6) if prompt_set == "varied" else common_prefix_prompts()
    params = SamplingParams(max_new_tokens=8, stop_token_ids=(3,))
    settings = kv_settings(min_common_prefix="cpu")
    r = KVCacheSampler(workers=1, settings=settings).generate(
        m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    reference = full_forward_logits(m, p, r)
    for i, logits in enumerate(reference):
        n = len(logits)
        expected = logits.log_softmax(-1).gather(-1, r.tokens[i, :n, None]).squeeze(-1)
        # bf16 keeps 8 mantissa bits: logits differ by a few parts in a thousand
        torch.testing.assert_close(r.logprobs[i, :n], expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("name", ["qwen2_small", "qwen2_wide", "llama"])
@pytest.mark.parametrize("mode", ["own-caches", "shared-prompts", "common-prefix"], ids=lambda m: m)
def test_bf16_sampler_logprobs_are_those_of_the_bf16_training_forward(name, mode):
    """``precision="bfloat16"`` on a float32 model samples the policy that the training forward
    under ``model.precision=bfloat16`` differentiates: its log-probabilities sit within a tenth
    of the distance between that forward and its float32 counterpart, on the same tokens."""
    from maxrl.train.logprobs import compute_precision
    from maxrl.train.packed import packed_logprobs

    m = model(name)
    n = 4
    p = common_prefix_prompts()[:4] if mode == "common-prefix" else prompts(4, seed=3)
    changes = {
        "own-caches": dict(min_rows_per_shared_prompt=10**9, min_common_prefix=10**9),
        "shared-prompts": dict(min_rows_per_shared_prompt=2, min_common_prefix=10**9),
        "common-prefix": dict(min_rows_per_shared_prompt=10**9, min_common_prefix=4),
    }[mode]
    params = SamplingParams(max_new_tokens=8, stop_token_ids=(3,))
    sampler = KVCacheSampler(workers=1, settings=kv_settings(**changes), precision="bfloat16")
    r = sampler.generate(
        m, p, params, n=n, pad_token_id=PAD, generator=torch.Generator().manual_seed(0)
    )
    train = {}
    for precision in ("bfloat16", "float32"):
        with torch.no_grad(), compute_precision(m, precision):
            logp, mask, _ = packed_logprobs(m, p, r.tokens, r.lengths, n)
        train[precision] = logp
    width = logp.shape[1]
    to_bf16_forward = ((r.logprobs[:, :width] - train["bfloat16"]) * mask).abs().sum()
    bf16_to_fp32 = ((train["float32"] - train["bfloat16"]) * mask).abs().sum()
    assert bf16_to_fp32 > 0  # bf16 changed the numbers
    assert to_bf16_forward <= 0.1 * bf16_to_fp32


@pytest.mark.parametrize("name", ["qwen2_small", "gpt2"])
def test_bf16_sampler_on_the_generic_runner_runs_the_forward_under_autocast(name):
    """The generic runner with ``precision="bfloat16"``: log-probabilities within bf16 precision
    of the model's full forward under bf16 autocast, and away from the float32 forward's."""
    m = model(name)
    p = prompts(5, seed=2)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=(3,))
    sampler = KVCacheSampler(workers=1, fast_path=False, precision="bfloat16")
    r = sampler.generate(m, p, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    fp32 = full_forward_logits(m, p, r)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        bf16 = full_forward_logits(m, p, r)
    gap_fp32 = gap_bf16 = 0.0
    for i, (a, b) in enumerate(zip(fp32, bf16)):
        n = len(a)
        tokens = r.tokens[i, :n, None]
        ref_fp32 = a.float().log_softmax(-1).gather(-1, tokens).squeeze(-1)
        ref_bf16 = b.float().log_softmax(-1).gather(-1, tokens).squeeze(-1)
        gap_fp32 = max(gap_fp32, float((r.logprobs[i, :n] - ref_fp32).abs().max()))
        gap_bf16 = max(gap_bf16, float((r.logprobs[i, :n] - ref_bf16).abs().max()))
    assert gap_fp32 > 1e-4  # far above the float32 sampler's 1e-5 agreement: bf16 ran
    assert gap_bf16 < 0.02  # bf16 keeps 8 mantissa bits; its cache and full forward round apart


def test_sampler_precision_is_checked():
    with pytest.raises(ValueError, match="float32 or bfloat16; got 'float16'"):
        KVCacheSampler(precision="float16")
