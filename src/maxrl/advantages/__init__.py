r"""Group advantage estimators, side by side (docs/method.md, section 3; docs/estimators.md).

Convention: a prompt has a group of N rollouts with rewards r_1..r_N and scores
S_i = grad log pi(z_i | x). An estimator returns advantages A_1..A_N, and the group's gradient
estimate is the group MEAN (1/N) sum_i A_i S_i; the matching surrogate loss of one group is
-(1/N) sum_i A_i log pi(z_i | x). With K = sum_i r_i and rbar = K / N:

============  ==============================================  ===================================
name          A_i                                             E[gradient estimate]
============  ==============================================  ===================================
reinforce     r_i                                             grad p            (J_1)
dr_grpo       r_i - rbar                                      (1 - 1/N) grad p
rloo          N/(N-1) (r_i - rbar)                            grad p            (J_1)
grpo          (r_i - rbar) / (std + eps)                      biased; population weight
                                                              1/sqrt(p(1-p))
maxrl         (r_i - rbar) / rbar;  0 for the group if K = 0  grad J_{N-1}
maxrl_t       N c_{T,N}(K) r_i - b_i                          grad J_T, 1 <= T <= N
pass_at_k     k [r_i + (1-r_i)(1 - C(N-K-1,k-1)/C(N-1,k-1))]  grad pass@k, 1 <= k <= N
              - b_i
differential  (r_i - rbar)/(std_pop + eps) - c_s m_i r_i      none (a heuristic)
_smoothing    + c_f m_i (1 - r_i)
============  ==============================================  ===================================

``maxrl`` is the paper's Algorithm 1. It is exactly unbiased for J_{N-1}, not J_N: dropping the
group when K = 0 removes the zero-mean control variate -(1/N) sum_i S_i on all-fail groups, whose
expectation is (1 - p)^(N-1) grad p. Keeping the baseline on all-fail groups (A = -1 for all)
gives ``maxrl_t`` with T = N and ``baseline="constant"``, unbiased for J_N.

``maxrl_t`` averages the paper's Theorem-2 estimator over all T-subsets of the group (a
U-statistic). By Vandermonde's identity its success coefficient has the closed form

    c_{T,N}(K) = (1/C(N,T)) sum_{k=1..min(T,K)} (1/k) C(K-1,k-1) C(N-K,T-k)
               = (1 - C(N-K,T)/C(N,T)) / K,

the chance that a random T-subset holds a success, shared among the K successes. Its baseline
b_i is either the constant 1 (``baseline="constant"``: A = N c - 1 for a success, -1 for a
failure, the default) or, when T < N, the same subset-hit probability computed
from the other N-1 rollouts, b_i = 1 - C(N-1-K_{-i},T)/C(N-1,T) (``baseline="loo"``), or none.
A baseline that depends only on the other rollouts has E[b_i S_i] = E[b_i] E[S_i] = 0, so all
three are exactly unbiased for J_T. The leave-one-out baseline gives all-fail groups zero
advantage; which baseline has the lowest variance depends on p, T and the policy, and none wins
everywhere (``benchmarks/estimator_variance.py`` prints the comparison; docs/estimators.md has
the figures).

``pass_at_k`` is the U-statistic of max(r) sum_{j in subset} S_j over k-subsets (the gradient
of pass@k; Walder and Karkhanis 2025, PKPO) with the leave-one-out unbiased pass@k of the other
rollouts as baseline, b_i = k (1 - C(N-1-K_{-i},k)/C(N-1,k)), when k < N (none when k = N).

``differential_smoothing`` is the paper's Differential Smoothing baseline (Table 3), as its code
computes it: GRPO with the population standard deviation, then, with m_i the mean sampling
log-probability of rollout i's response tokens, A_i -= c_s m_i for a correct rollout and
A_i += c_f m_i for a wrong one (c_s = c_f = 0.05). It is the one estimator that reads more than
the rewards: pass ``mean_logprob`` (groups, N) to :func:`compute` or the prepared estimator.

Every other estimator depends on a group only through (r_i, N, K, sum r^2), so dense groups and
ragged groups (flat rewards plus group ids) share one segment-sum implementation.
"""

from maxrl.advantages.api import PreparedEstimator, compute, prepare, validate_params
from maxrl.advantages.estimators import Estimator, get, names

__all__ = [
    "compute",
    "prepare",
    "names",
    "get",
    "validate_params",
    "Estimator",
    "PreparedEstimator",
]
