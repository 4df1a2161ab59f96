"""The library's group advantage estimators in verl's estimator registry (verl 0.9.1).

Importing this module registers every estimator of :mod:`maxrl.advantages` with
``verl.trainer.ppo.core_algos.register_adv_est``, so a verl run selects one with
``algorithm.adv_estimator=NAME``. Names:

- ``maxrl.<name>`` for every library estimator (``maxrl.maxrl``, ``maxrl.rloo``,
  ``maxrl.grpo``, ...): always available, never clashing with verl.
- the bare ``<name>`` as well where verl has no estimator of that name: ``maxrl``, ``maxrl_t``,
  ``pass_at_k``, ``reinforce``, ``dr_grpo``. ``rloo`` and ``grpo`` stay verl's own (verl's
  ``grpo`` is special-cased in its trainer and never reaches the registry).

Parameters come from the ``algorithm`` config section: ``algorithm.estimator_params`` (a dict:
``T`` for maxrl_t, ``k`` for pass_at_k, ...) and ``algorithm.reward_threshold`` (binarise rewards
as r >= threshold; binary estimators reject other rewards without it). Both keys are new to
verl's schema, so Hydra needs a ``+``: ``+algorithm.estimator_params.T=4``.

verl runs its trainer inside a Ray actor, a different process from the one that imported this
module, so the registration must also happen there. ``python -m maxrl.integrations.verl ARGS``
runs verl's ``main_ppo`` with ARGS plus a Ray ``worker_process_setup_hook`` that calls
:func:`register` in every Ray worker; with verl's own entry point, add that override by hand::

    +ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=maxrl.integrations.verl.register
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from maxrl import advantages as adv_lib

__all__ = ["PREFIX", "HOOK_OVERRIDE", "estimator_fn", "register", "registered_names", "main"]

PREFIX = "maxrl."
HOOK_OVERRIDE = (
    "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=maxrl.integrations.verl.register"
)


def _algorithm_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    value = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
    if value is not None and hasattr(value, "items") and not isinstance(value, dict):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    return value


def estimator_fn(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """A verl advantage-estimator function for library estimator ``name``.

    Follows verl's signature: ``token_level_rewards`` and ``response_mask`` of shape
    (batch, response_length), ``index`` the prompt uid of each response (the group label;
    groups may be ragged), ``config`` the ``algorithm`` section. The outcome reward is the sum of
    the token-level rewards; the returned (advantages, returns) are the per-response advantage
    broadcast over the response tokens and masked.
    """
    adv_lib.get(name)  # an unknown name fails here, not inside a training step

    def compute_maxrl_advantage(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: np.ndarray | None = None,
        config: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise ValueError(
                f"advantage estimator {name!r} needs the prompt uid of each response to form "
                f"groups; verl passes it as `index` when the batch carries non_tensor_batch['uid']"
            )
        scores = token_level_rewards.sum(dim=-1)
        _, group_ids = np.unique(np.asarray(index), return_inverse=True)
        params = dict(_algorithm_get(config, "estimator_params") or {})
        advantages = adv_lib.compute(
            name,
            scores.detach().cpu(),
            group_ids=torch.as_tensor(group_ids.reshape(-1)),
            reward_threshold=_algorithm_get(config, "reward_threshold"),
            **params,
        )
        advantages = advantages.to(scores).unsqueeze(-1) * response_mask
        return advantages, advantages

    compute_maxrl_advantage.__name__ = f"compute_{name}_advantage"
    compute_maxrl_advantage.maxrl_estimator = name
    return compute_maxrl_advantage


def registered_names() -> dict[str, str]:
    """verl estimator name -> library estimator name, for the names this module registers."""
    builtin = {e.value for e in core_algos.AdvantageEstimator}
    taken = builtin | {
        key
        for key, fn in core_algos.ADV_ESTIMATOR_REGISTRY.items()
        if getattr(fn, "maxrl_estimator", None) is None
    }
    names = {PREFIX + name: name for name in adv_lib.names()}
    names.update({name: name for name in adv_lib.names() if name not in taken})
    return names


_FUNCTIONS: dict[str, Callable] = {}


def register() -> list[str]:
    """Register the library's estimators with verl (idempotent); return the verl names."""
    names = registered_names()
    for verl_name, name in names.items():
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(verl_name)
        if getattr(existing, "maxrl_estimator", None) == name:
            continue  # registered already (e.g. by this module imported under another name)
        fn = _FUNCTIONS.setdefault(name, estimator_fn(name))
        core_algos.register_adv_est(verl_name)(fn)
    return sorted(names)


register()


def main(argv: list[str] | None = None) -> None:
    """Run verl's PPO entry point with the estimators registered in every Ray worker."""
    from verl.trainer import main_ppo

    args = list(sys.argv[1:] if argv is None else argv)
    if not any("worker_process_setup_hook" in a for a in args):
        args.insert(0, HOOK_OVERRIDE)  # before any Hydra flag such as --cfg job
    sys.argv = [sys.argv[0], *args]
    main_ppo.main()


if __name__ == "__main__":
    main()
