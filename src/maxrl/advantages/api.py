"""The public call: validate an estimator's parameters, then compute advantages for dense groups
(``(groups, N)`` rewards) or ragged ones (flat rewards with group ids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maxrl.advantages.estimators import _BASELINES, Estimator, _Groups, get


def validate_params(name: str, rollouts_per_prompt: int | None = None, **params) -> dict:
    """Check an estimator's name and parameters; return them with defaults filled in.

    ``rollouts_per_prompt`` (the smallest group size, when known) bounds T and k.
    """
    est = get(name)
    extra = {"reward_threshold"}
    unknown = set(params) - set(est.params) - extra
    if unknown:
        accepted = ", ".join(sorted(set(est.params) | extra))
        raise ValueError(
            f"estimator {name!r} takes no parameter {sorted(unknown)[0]!r}; it accepts: {accepted}"
        )
    full = {**est.params, **{k: v for k, v in params.items() if k in est.params}}
    for key, value in full.items():
        if value is None:
            raise ValueError(f"estimator {name!r} needs the parameter {key!r} (e.g. {key}=4)")
    n = rollouts_per_prompt
    if n is not None and n < est.min_group:
        raise ValueError(
            f"estimator {name!r} needs groups of at least {est.min_group} rollouts; got a group "
            f"of {n}. Raise rollouts_per_prompt, or use 'reinforce', which needs no group"
        )
    for key in ("T", "k"):
        if key in full:
            v = full[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"estimator {name!r}: {key} must be an integer >= 1; got {v!r}")
            if n is not None and v > n:
                raise ValueError(
                    f"estimator {name!r}: {key}={v} exceeds the group size N={n}; an unbiased "
                    f"estimate needs 1 <= {key} <= N (raise rollouts_per_prompt or lower {key})"
                )
    if "baseline" in full and full["baseline"] not in _BASELINES[name]:
        raise ValueError(
            f"estimator {name!r}: baseline must be one of {_BASELINES[name]}; got "
            f"{full['baseline']!r}"
        )
    if "eps" in full and not full["eps"] >= 0:
        raise ValueError(f"estimator {name!r}: eps must be >= 0; got {full['eps']!r}")
    threshold = params.get("reward_threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise ValueError(f"reward_threshold must be a number; got {threshold!r}")
    return full


def compute(
    name: str,
    rewards: torch.Tensor | Sequence,
    *,
    group_ids: torch.Tensor | Sequence[int] | None = None,
    reward_threshold: float | None = None,
    mean_logprob: torch.Tensor | Sequence | None = None,
    **params,
) -> torch.Tensor:
    """Advantages of estimator ``name`` for groups of rewards.

    Args:
        name: one of :func:`names`.
        rewards: float tensor of shape (groups, rollouts_per_prompt), or flat (B,) with
            ``group_ids``.
        group_ids: for flat rewards, an integer group label per rollout (ragged groups: any
            sizes, any order).
        reward_threshold: binarise rewards as ``r >= reward_threshold`` before estimating.
        mean_logprob: each rollout's mean sampling log-probability over its response tokens,
            the shape of ``rewards``; needed by ``differential_smoothing`` alone.
        **params: the estimator's parameters (``T`` for maxrl_t, ``k`` for pass_at_k, ...).

    Returns:
        Advantages with the shape and dtype of ``rewards`` (float32 for integer input). The
        arithmetic runs in float64.
    """
    if group_ids is None:
        r = torch.as_tensor(rewards)
        if r.ndim != 2:
            raise ValueError(
                f"rewards must have shape (groups, rollouts_per_prompt); got shape "
                f"{tuple(r.shape)}. For flat or ragged batches pass group_ids"
            )
        prepared = prepare(name, r.shape[1], reward_threshold=reward_threshold, **params)
        return prepared(r, mean_logprob=mean_logprob)
    est = get(name)
    r = torch.as_tensor(rewards)
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    flat = r.detach().to(torch.float64)
    gid = torch.as_tensor(group_ids)
    if flat.ndim != 1 or gid.shape != flat.shape:
        raise ValueError(
            f"with group_ids, rewards must be flat (B,) and group_ids the same shape; got "
            f"rewards {tuple(flat.shape)} and group_ids {tuple(gid.shape)}"
        )
    if gid.dtype.is_floating_point or gid.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers; got dtype {gid.dtype}")
    if flat.numel() == 0:
        return torch.zeros_like(r, dtype=out_dtype)
    _, gid = torch.unique(gid, return_inverse=True)
    flat = _checked(est, flat, gid, reward_threshold)
    n_groups = int(gid.max()) + 1
    zeros = torch.zeros(n_groups, dtype=torch.float64)
    sizes = zeros.index_add(0, gid, torch.ones_like(flat))
    full = validate_params(name, int(sizes.min()), **params)
    sums = zeros.index_add(0, gid, flat)
    sq = zeros.index_add(0, gid, flat * flat)
    m = _mean_logprob(est, mean_logprob, flat.shape)
    groups = _Groups(r=flat, n=sizes[gid], s=sums[gid], q=sq[gid], m=m)
    sizes = sizes.long().unique().tolist()
    return _estimate(est, groups, full, sizes).reshape(r.shape).to(out_dtype)


@dataclass(frozen=True)
class PreparedEstimator:
    """An estimator bound to its parameters and group size, validated once (:func:`prepare`).

    Calling it on (groups, N) rewards gives exactly what :func:`compute` gives for the same
    arguments, without validating the parameters again; the rewards are still checked (finite,
    and 0/1 for a binary estimator).
    """

    estimator: Estimator
    group_size: int
    params: dict[str, Any]
    reward_threshold: float | None = None

    def __call__(
        self, rewards: torch.Tensor | Sequence, mean_logprob: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Advantages of (groups, N) rewards; ``mean_logprob`` (same shape) for an estimator
        that reads the log-probabilities (``differential_smoothing``), ignored by the others."""
        r = torch.as_tensor(rewards)
        n = self.group_size
        if r.ndim != 2 or r.shape[1] != n:
            raise ValueError(
                f"rewards must have shape (groups, {n}) for {self.estimator.name!r} prepared "
                f"with N={n}; got shape {tuple(r.shape)}"
            )
        out_dtype = r.dtype if r.is_floating_point() else torch.float32
        if r.numel() == 0:
            return torch.zeros_like(r, dtype=out_dtype)
        flat = _checked(self.estimator, r.detach().to(torch.float64), None, self.reward_threshold)
        groups = _Groups(
            r=flat,
            n=torch.ones_like(flat) * n,
            s=flat.sum(1, keepdim=True).expand_as(flat),
            q=(flat * flat).sum(1, keepdim=True).expand_as(flat),
            m=_mean_logprob(self.estimator, mean_logprob, flat.shape),
        )
        adv = _estimate(self.estimator, groups, self.params, [n])
        return adv.reshape(r.shape).to(out_dtype)


def prepare(
    name: str, rollouts_per_prompt: int, *, reward_threshold: float | None = None, **params
) -> PreparedEstimator:
    """Estimator ``name`` for groups of ``rollouts_per_prompt``, its parameters checked now.

    A trainer resolves its estimator once with this and calls the result every step.
    """
    full = validate_params(name, rollouts_per_prompt, reward_threshold=reward_threshold, **params)
    return PreparedEstimator(get(name), rollouts_per_prompt, full, reward_threshold)


def _estimate(est: Estimator, g: _Groups, params: dict, sizes: list[int]) -> torch.Tensor:
    if est.binary and not est.uses_logprobs:
        return _tabulated(est, g, params, sizes)
    return est.fn(g, **params)


def _mean_logprob(est: Estimator, mean_logprob, shape) -> torch.Tensor | None:
    if not est.uses_logprobs:
        return None
    if mean_logprob is None:
        raise ValueError(
            f"estimator {est.name!r} reads each rollout's mean sampling log-probability; pass "
            f"mean_logprob= (the shape of the rewards)"
        )
    m = torch.as_tensor(mean_logprob).detach().to(torch.float64)
    if m.shape != shape or not bool(torch.isfinite(m).all()):
        raise ValueError(
            f"mean_logprob must be finite and shaped like the rewards {tuple(shape)}; got shape "
            f"{tuple(m.shape)}"
        )
    return m


def _checked(est: Estimator, flat: torch.Tensor, gid, reward_threshold) -> torch.Tensor:
    """Rewards after the finite check, then binarised or checked binary."""
    _check_finite(est.name, flat, gid)
    if reward_threshold is not None:
        return (flat >= reward_threshold).to(torch.float64)
    if est.binary:
        _check_binary(est.name, flat, gid)
    return flat


def _tabulated(est: Estimator, g: _Groups, params: dict, sizes: list[int]) -> torch.Tensor:
    """A binary-reward estimator depends on a rollout only through (r_i, N, K): evaluate it once
    per group size on the N+1 possible K for a success and a failure, then gather. This costs
    O(N) special functions per distinct group size instead of O(B).
    """
    n_tab = torch.cat([torch.full((n + 1,), float(n), dtype=torch.float64) for n in sizes])
    k_tab = torch.cat([torch.arange(n + 1, dtype=torch.float64) for n in sizes])
    success = est.fn(_Groups(torch.ones_like(k_tab), n_tab, k_tab, k_tab), **params)
    failure = est.fn(_Groups(torch.zeros_like(k_tab), n_tab, k_tab, k_tab), **params)
    if len(sizes) == 1:
        idx = g.s.long()
    else:  # row of (N, K) in the concatenated tables: offset of N's block, plus K
        starts = torch.zeros(max(sizes) + 1, dtype=torch.long)
        starts[torch.tensor(sizes)] = torch.tensor(
            [0, *torch.tensor(sizes[:-1]).add(1).cumsum(0).tolist()]
        )
        idx = starts[g.n.long()] + g.s.long()
    # one gather from a 2-row table (take() beats advanced indexing several times over here)
    table = torch.stack([failure, success])
    return torch.take(table, idx + (g.r > 0).long() * len(k_tab))


def _where(gid: torch.Tensor | None, flat: torch.Tensor, mask: torch.Tensor) -> str:
    if gid is None:  # dense (groups, N)
        g, pos = (int(x) for x in mask.nonzero()[0])
        return f"{flat[g, pos].item():.6g} in group {g} (rollout {pos})"
    i = int(mask.nonzero()[0])
    g = int(gid[i])
    pos = int((gid[:i] == g).sum())
    return f"{flat[i].item():.6g} in group {g} (rollout {pos})"


def _check_finite(name: str, flat: torch.Tensor, gid: torch.Tensor) -> None:
    bad = ~torch.isfinite(flat)
    if bool(bad.any()):
        raise ValueError(
            f"rewards must be finite for {name}; got {_where(gid, flat, bad)}. Fix the reward "
            f"function (a failed verification should score 0, not NaN)"
        )


def _check_binary(name: str, flat: torch.Tensor, gid: torch.Tensor) -> None:
    bad = (flat != 0) & (flat != 1)
    if bool(bad.any()):
        raise ValueError(
            f"rewards must be 0 or 1 for {name}; got {_where(gid, flat, bad)}; pass "
            f"reward_threshold=0.5 to binarise"
        )
