"""The kv sampler's planning: which prompt computes which prompt positions, how rows are split
over streams, and the settings chosen per device."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from rollout_testing import PAD, prefix_prompts

from maxrl.rollout.base import left_pad
from maxrl.rollout.kv import CPU, GPU, KVCacheSampler, KVSettings, settings_for
from maxrl.rollout.kv.plan import PrefixPlan, common_prefix, split_by_work


def test_prefix_plan_computes_each_trie_position_once():
    p = prefix_prompts()
    ids, lengths = left_pad(p, PAD, torch.device("cpu"))
    plan = PrefixPlan(ids, lengths)
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
    bounds = split_by_work(prompts, 2, new_tokens=5)
    work = [len(p) - common_prefix(p, q) + 5 for p, q in zip(prompts, [[], *prompts])]
    halves = [sum(work[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == len(prompts)
    assert abs(halves[0] - halves[1]) <= max(work) and bounds[1] < len(prompts) // 2
    # every stream keeps at least one row, whatever the work
    assert split_by_work([[1] * 50, [2]], 2, 1) == [0, 1, 2]
    assert split_by_work([[1]] * 3, 3, 1) == [0, 1, 2, 3]


def test_settings_are_chosen_per_device():
    assert settings_for("cpu") is CPU and settings_for(torch.device("cuda")) is GPU
    # the GPU settings turn off what adds launches per step there (docs/rollout.md)
    assert GPU.table_max_vocab == 0 and not GPU.value_sums_by_rows
    assert GPU.min_common_prefix > 10**6 and GPU.min_rows_per_shared_prompt > 10**6
    assert CPU.table_max_vocab >= 32 and CPU.value_sums_by_rows
    assert KVCacheSampler().settings is None  # resolved from the model's device at generate
    with pytest.raises(dataclasses.FrozenInstanceError):
        CPU.prefill_tokens_per_pass = 1


@pytest.mark.parametrize(
    "field, value",
    [("prefill_tokens_per_pass", 0), ("min_rows_per_worker", 0), ("table_max_vocab", -1)],
)
def test_bad_settings_raise(field, value):
    with pytest.raises(ValueError, match=f"KVSettings.{field} must be"):
        KVSettings(**{field: value})
