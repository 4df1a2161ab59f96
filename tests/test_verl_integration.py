"""verl's own advantage computation, given the registered names, returns the library's values."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from maxrl import advantages  # noqa: E402
from maxrl.integrations import verl as maxrl_verl  # noqa: E402

pytestmark = [
    pytest.mark.verl,
    # verl announces each optional training engine it cannot import
    pytest.mark.filterwarnings("ignore:.*engine is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:Ray state API:DeprecationWarning"),
]

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
DataProto = pytest.importorskip("verl.protocol").DataProto


def _compute_advantage():
    """The function verl's trainer calls: the v1 trainer's wrapper if present, else the base."""
    try:
        from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

        return lambda data, **kw: compute_advantage_for_multi_trajectories(
            data, batch_keys=[f"{u}_0_0" for u in data.non_tensor_batch["uid"]], **kw
        )
    except ImportError:
        from verl.trainer.ppo.ray_trainer import compute_advantage

        return compute_advantage


def _algorithm_config(overrides: list[str]):
    """verl's own ``algorithm`` section with Hydra command-line overrides."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose("ppo_trainer", overrides=overrides)
    return cfg.algorithm


# Ragged groups in shuffled order: a has 3 responses, b 2, c 4, d 2 (all failures).
UIDS = np.array(["a", "b", "a", "c", "b", "a", "c", "c", "c", "d", "d"], dtype=object)
REWARDS = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0], dtype=torch.float32)
LENGTHS = [3, 5, 1, 4, 2, 5, 5, 3, 1, 2, 4]


def _batch(rewards: torch.Tensor = REWARDS) -> DataProto:
    length = 5
    mask = torch.zeros(len(LENGTHS), length)
    token_rewards = torch.zeros(len(LENGTHS), length)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
        token_rewards[i, n - 1] = rewards[i]  # outcome reward on the last response token
    return DataProto.from_dict(
        tensors={
            "token_level_rewards": token_rewards,
            "response_mask": mask,
            "responses": torch.zeros(len(LENGTHS), length, dtype=torch.long),
        },
        non_tensors={"uid": UIDS.copy()},
    )


def _expected(name: str, rewards: torch.Tensor = REWARDS, **kwargs) -> torch.Tensor:
    _, gid = np.unique(UIDS, return_inverse=True)
    adv = advantages.compute(name, rewards, group_ids=torch.as_tensor(gid), **kwargs)
    return adv.unsqueeze(-1) * _batch().batch["response_mask"]


CASES = [
    ("maxrl", "maxrl", []),
    ("maxrl.maxrl", "maxrl", []),
    ("maxrl_t", "maxrl_t", ["+algorithm.estimator_params.T=2"]),
    ("maxrl.pass_at_k", "pass_at_k", ["+algorithm.estimator_params.k=2"]),
    ("reinforce", "reinforce", []),
    ("dr_grpo", "dr_grpo", []),
    ("maxrl.rloo", "rloo", []),
    ("maxrl.grpo", "grpo", []),
]


@pytest.mark.parametrize(("verl_name", "name", "overrides"), CASES)
def test_verl_compute_advantage_equals_library(verl_name, name, overrides):
    config = _algorithm_config([f"algorithm.adv_estimator={verl_name}", *overrides])
    params = dict(config.get("estimator_params") or {})
    out = _compute_advantage()(
        _batch(), adv_estimator=config.adv_estimator, num_repeat=1, config=config
    )
    expected = _expected(name, **params)
    assert torch.equal(out.batch["advantages"], expected)
    assert torch.equal(out.batch["returns"], expected)
    if name == "maxrl":  # pin a few values: group a = [1, 0, 1] -> (r - 2/3) / (2/3)
        first_tokens = out.batch["advantages"][[0, 2, 5, 9], 0].tolist()
        assert first_tokens == pytest.approx([0.5, -1.0, 0.5, 0.0], abs=1e-7)


def test_names_leave_verl_builtins_alone():
    names = maxrl_verl.registered_names()
    assert {f"maxrl.{n}" for n in advantages.names()} <= set(names)
    assert {"maxrl", "maxrl_t", "pass_at_k", "reinforce", "dr_grpo"} <= set(names)
    assert "rloo" not in names and "grpo" not in names
    assert core_algos.get_adv_estimator_fn("rloo") is core_algos.compute_rloo_outcome_advantage
    # verl's rloo and the library's agree on the same batch
    verl_rloo, _ = core_algos.compute_rloo_outcome_advantage(
        _batch().batch["token_level_rewards"], _batch().batch["response_mask"], UIDS
    )
    torch.testing.assert_close(verl_rloo, _expected("rloo"), rtol=1e-6, atol=1e-7)
    assert maxrl_verl.register() == sorted(names)  # registering twice is harmless


def test_rewards_are_checked_and_threshold_binarises():
    fn = core_algos.get_adv_estimator_fn("maxrl")
    scored = REWARDS * 0.8 + 0.1  # 0.9 for a success, 0.1 for a failure
    batch = _batch(scored)
    with pytest.raises(ValueError, match="reward_threshold"):
        fn(batch.batch["token_level_rewards"], batch.batch["response_mask"], UIDS)
    config = _algorithm_config(["algorithm.adv_estimator=maxrl", "+algorithm.reward_threshold=0.5"])
    adv, _ = fn(batch.batch["token_level_rewards"], batch.batch["response_mask"], UIDS, config)
    assert torch.equal(adv, _expected("maxrl"))
    with pytest.raises(ValueError, match="uid"):
        fn(batch.batch["token_level_rewards"], batch.batch["response_mask"])
    with pytest.raises(ValueError, match="needs the parameter 'T'"):
        core_algos.get_adv_estimator_fn("maxrl_t")(
            _batch().batch["token_level_rewards"], _batch().batch["response_mask"], UIDS
        )


def test_entry_point_adds_the_ray_hook(monkeypatch):
    from verl.trainer import main_ppo

    seen = []
    monkeypatch.setattr(main_ppo, "main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["prog"])
    maxrl_verl.main(["algorithm.adv_estimator=maxrl"])
    hook = "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=my.hook"
    maxrl_verl.main(["algorithm.adv_estimator=maxrl", hook])
    assert seen == [
        [maxrl_verl.HOOK_OVERRIDE, "algorithm.adv_estimator=maxrl"],
        ["algorithm.adv_estimator=maxrl", hook],
    ]


@pytest.mark.slow
def test_ray_setup_hook_registers_in_workers():
    """The hook makes the names exist in a Ray worker, where verl's trainer runs."""
    ray = pytest.importorskip("ray")
    hook = maxrl_verl.HOOK_OVERRIDE.split("=", 1)[1]
    ray.init(num_cpus=1, include_dashboard=False, runtime_env={"worker_process_setup_hook": hook})
    try:

        @ray.remote
        def names():
            from verl.trainer.ppo import core_algos as worker_algos

            return sorted(k for k in worker_algos.ADV_ESTIMATOR_REGISTRY if "maxrl" in k)

        assert ray.get(names.remote()) == sorted(
            k for k in maxrl_verl.registered_names() if "maxrl" in k
        )
    finally:
        ray.shutdown()
