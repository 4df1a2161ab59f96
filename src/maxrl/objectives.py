r"""Exact population quantities of a pass rate p (docs/method.md, section 2).

Every function takes scalars, NumPy arrays or torch tensors (torch results stay differentiable,
so the exact gradient of an objective is one ``backward`` away).

With q = 1 - p:

- pass@k = 1 - q^k,  fail@k = q^k
- log p = -sum_{k>=1} q^k / k                       (the maximum-likelihood objective)
- J_T(p) = -sum_{k=1..T} q^k / k                     (truncated objective of order T)
- dJ_T/dp = sum_{k=1..T} q^(k-1) = (1 - q^T) / p     (T = 1: RL, T -> inf: ML)

Every method's population gradient is E_x[w(p) grad p]; :func:`weight` returns w(p).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

Array = Any  # float, np.ndarray or torch.Tensor

WEIGHTS = ("rl", "grpo", "maxrl", "ml", "pass_at_k")


def _xp(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def _as_array(p: Array) -> Array:
    if isinstance(p, torch.Tensor):
        return p
    return np.asarray(p, dtype=np.float64)


def _check_p(p: Array) -> None:
    xp = _xp(p)
    bad = (p < 0) | (p > 1) | xp.isnan(p)
    if bool(bad.any()):
        raise ValueError(f"pass rate must lie in [0, 1]; got {p[bad].flatten()[0].item()!r}")


def _check_order(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def _quiet(fn):
    """p = 1 makes log1p(-p) = -inf on purpose; the limits that follow are exact."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _out(x: Array, like: Array) -> Array:
    if isinstance(x, np.ndarray) and x.ndim == 0 and not isinstance(like, np.ndarray):
        return float(x)
    return x


@_quiet
def fail_at_k(p: Array, k: int) -> Array:
    """fail@k = (1 - p)^k, computed as exp(k log1p(-p)) so that p near 0 keeps its digits."""
    _check_order("k", k)
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    return _out(xp.exp(k * xp.log1p(-x)), p)


@_quiet
def pass_at_k(p: Array, k: int) -> Array:
    """pass@k = 1 - (1 - p)^k = -expm1(k log1p(-p)), exact for a known pass rate."""
    _check_order("k", k)
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    return _out(-xp.expm1(k * xp.log1p(-x)), p)


@_quiet
def log_pass_at_k(log_p: Array, k: int) -> Array:
    """log pass@k = log(1 - (1 - p)^k) from log p, finite even where p underflows to 0 (there
    it is log k + log p, to every printed digit)."""
    _check_order("k", k)
    x = _as_array(log_p)
    xp = _xp(x)
    if bool((x > 0).any()):
        raise ValueError(f"log p must be <= 0; got {x[x > 0].flatten()[0].item()!r}")
    p = xp.exp(x)
    direct = xp.log(-xp.expm1(k * xp.log1p(-p)))
    return _out(xp.where(p > 0, direct, x + math.log(k)), log_p)


@_quiet
def log_likelihood(p: Array) -> Array:
    """J_ML = log p (-inf at p = 0)."""
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    return _out(xp.log(x), p)


def truncated_objective(p: Array, T: int) -> Array:
    """J_T(p) = -sum_{k=1..T} (1 - p)^k / k.

    Summed over k in float64 (or the tensor's dtype) in one vectorised call: T in the
    thousands costs T multiply-adds per element. J_T(0) = -H_T (the T-th harmonic number), and
    J_T -> log p as T -> infinity.
    """
    _check_order("T", T)
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    if xp is torch:
        k = torch.arange(1, T + 1, dtype=x.dtype, device=x.device)
        q = (1 - x).unsqueeze(-1)
        return -(q**k / k).sum(-1)
    k = np.arange(1, T + 1, dtype=np.float64)
    q = (1 - x)[..., None]
    return _out(-(q**k / k).sum(-1), p)


@_quiet
def truncated_objective_grad(p: Array, T: int) -> Array:
    """dJ_T/dp = (1 - (1 - p)^T) / p, with its limit T at p = 0."""
    _check_order("T", T)
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    num = -xp.expm1(T * xp.log1p(-x))
    safe = xp.where(x > 0, x, xp.ones_like(x))
    return _out(xp.where(x > 0, num / safe, xp.full_like(x, float(T))), p)


@_quiet
def pass_at_k_grad(p: Array, k: int) -> Array:
    """d pass@k / dp = k (1 - p)^(k - 1)."""
    _check_order("k", k)
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    return _out(k * xp.exp((k - 1) * xp.log1p(-x)), p)


@_quiet
def weight(method: str, p: Array, T: int | None = None, k: int | None = None) -> Array:
    """The population gradient weight w(p) with grad J = E_x[w(p) grad p].

    - ``rl``: w = 1
    - ``grpo`` (std-normalised): w = 1 / sqrt(p (1 - p)); rises again as p -> 1
    - ``maxrl`` (order ``T``): w = (1 - (1 - p)^T) / p; monotone decreasing in p
    - ``ml``: w = 1 / p
    - ``pass_at_k`` (``k``): w = k (1 - p)^(k - 1)
    """
    x = _as_array(p)
    _check_p(x)
    xp = _xp(x)
    if method == "rl":
        return _out(xp.ones_like(x), p)
    if method == "grpo":
        return _out(1 / xp.sqrt(x * (1 - x)), p)
    if method == "maxrl":
        if T is None:
            raise ValueError("weight('maxrl', ...) needs the truncation order T (T >= 1)")
        return truncated_objective_grad(p, T)
    if method == "ml":
        return _out(1 / x, p)
    if method == "pass_at_k":
        if k is None:
            raise ValueError("weight('pass_at_k', ...) needs k (k >= 1)")
        return pass_at_k_grad(p, k)
    raise ValueError(f"unknown weight method {method!r}; choose one of {', '.join(WEIGHTS)}")


def harmonic(T: int) -> float:
    """H_T = sum_{k=1..T} 1/k = -J_T(0)."""
    _check_order("T", T)
    return math.fsum(1.0 / k for k in range(1, T + 1))
