"""maxrl: Maximum Likelihood Reinforcement Learning (arXiv 2602.02710).

The method lives in three pure modules that import nothing from the trainers:

- :mod:`maxrl.objectives` -- population quantities of a pass rate p (pass@k, J_T, weights).
- :mod:`maxrl.advantages` -- group advantage estimators behind ``compute(name, rewards)``.
- :mod:`maxrl.passk` -- unbiased pass@k evaluation and sample-efficiency factors.
"""

__version__ = "0.1.0"
