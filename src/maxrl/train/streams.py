"""Training forward and backward in parallel streams on a CPU model.

A micro-batch's groups are split into ``workers`` shards of whole groups. Each shard runs its
forward and backward in its own Python thread, the caller's intra-op threads shared among them
(one each under the default ``run.threads=1``; torch's kernels release the GIL, so the shards
use as many cores), and its gradient comes back from
``torch.autograd.grad`` rather than being accumulated into ``.grad`` by the threads
concurrently: the calling thread sums the shards' gradients into ``.grad`` in shard order, so a
run is a deterministic function of ``workers`` and not of thread timing, and resumes exactly. The
shards' losses share the micro-batch's denominator, so their gradients sum to the micro-batch's
(up to float summation order). With one worker the loss is backpropagated by ``backward()`` on
the calling thread, as without streams. ``benchmarks/train_step.py`` measures the effect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from maxrl.rollout.kv.sampler import rewrites_rope_frequencies
from maxrl.train.logprobs import recomputes_activations


def update_workers(workers: int, model) -> int:
    """The streams to use for ``model``: ``workers`` on a CPU model whose forward may run in
    several threads at once; 1 on other devices, under gradient checkpointing, and with rotary
    embeddings that rewrite their frequencies during the forward."""
    if workers <= 1 or next(model.parameters()).device.type != "cpu":
        return 1
    if recomputes_activations(model) or rewrites_rope_frequencies(model):
        return 1
    return workers


def shards(index: torch.Tensor, workers: int) -> list[torch.Tensor]:
    """``index`` (group ids) cut into at most ``workers`` consecutive shards of whole groups, as
    even as they divide."""
    return [part for part in torch.tensor_split(index, min(workers, len(index))) if len(part)]


def backward_in_streams(
    losses: Sequence[Callable[[], tuple[torch.Tensor, Any]]],
    params: list[torch.nn.Parameter],
) -> list[Any]:
    """Run each closure (returning ``(loss, info)``) and backpropagate its loss into ``params``'
    ``.grad``; return the infos in order. One closure runs on this thread with
    ``loss.backward()``; several run in one thread each, with this thread's intra-op threads
    shared among them (at least one each), their gradients summed into ``.grad`` in closure
    order, each shard's as soon as the shards before it are in."""
    if len(losses) == 1:
        loss, info = losses[0]()
        loss.backward()
        return [info]
    caller_threads = torch.get_num_threads()
    threads = max(1, caller_threads // len(losses))

    def run(closure):
        # torch's thread count is also a process-wide value: set here to what this thread was
        # given, and put back below for the caller
        torch.set_num_threads(threads)
        loss, info = closure()
        return torch.autograd.grad(loss, params, allow_unused=True), info

    infos = []
    try:
        with ThreadPoolExecutor(len(losses)) as pool:
            for future in [pool.submit(run, closure) for closure in losses]:
                grads, info = future.result()
                infos.append(info)
                for param, grad in zip(params, grads):
                    if grad is None:
                        continue
                    if param.grad is None:
                        param.grad = grad.clone(memory_format=torch.contiguous_format)
                    else:
                        param.grad.add_(grad)
                del grads
    finally:
        torch.set_num_threads(caller_threads)
    return infos
