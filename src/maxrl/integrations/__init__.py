"""Adapters that put the library's group advantages into other trainers.

- :mod:`maxrl.integrations.trl`: ``MaxRLConfig`` / ``MaxRLTrainer`` for TRL's GRPO trainer.
- :mod:`maxrl.integrations.verl`: importing it registers the estimators in verl's registry.

Each imports its framework, so neither is imported here: ``import maxrl.integrations`` works
without TRL or verl installed.
"""
