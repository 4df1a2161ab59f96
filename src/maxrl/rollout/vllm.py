"""The "vllm" backend: a vLLM engine behind the common interface (needs a CUDA GPU).

vLLM is imported only when this sampler is built. The engine is created with
``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2), under which the log-probability it
reports for a sampled token (``SamplingParams(logprobs=0)``) is ``log_softmax(logits /
temperature)`` when no top-k/top-p is set, and the temperature-1 value for greedy requests:
the definition in :mod:`.base`. With top-k or top-p, vLLM reports the truncated, renormalised
value instead, which is not what the trainer needs; then ``Rollouts.logprobs`` is NaN (such
runs are for evaluation, which needs only tokens).
"""

from __future__ import annotations

import torch

from .base import Rollouts, SamplingParams, check_prompts, finish_rollouts


class VLLMSampler:
    """Sampling with ``vllm.LLM.generate`` on token-id prompts.

    Args:
        model: the model path or hub name the engine loads.
        **llm_kwargs: passed to ``vllm.LLM`` (``dtype``, ``gpu_memory_utilization``, ...).

    The engine holds its own copy of the weights. When :meth:`generate` is given the policy
    being trained (any object with ``named_parameters``), it first pushes that policy's current
    weights into the engine (:meth:`sync_weights`), so on-policy RL samples from the policy it
    updates; pass ``model=None`` to sample from the engine's weights as they are.
    """

    def __init__(self, model: str, **llm_kwargs):
        try:
            import vllm
            from vllm.inputs import TokensPrompt
        except ImportError as error:
            raise ImportError(
                "the 'vllm' sampler needs vLLM and a CUDA GPU: pip install vllm "
                "(or use make_sampler('kv') / make_sampler('hf'))"
            ) from error
        self._vllm_params = vllm.SamplingParams
        self._tokens_prompt = TokensPrompt
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = vllm.LLM(model=model, **llm_kwargs)

    def sync_weights(self, model) -> None:
        """Load ``model``'s parameters into the engine (in-process engine, single GPU).

        Uses the model runner's ``load_weights``, the path vLLM's colocated RL integrations
        use; it needs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
        """
        engine = self.llm.llm_engine
        try:
            runner_model = engine.model_executor.driver_worker.worker.model_runner.model
        except AttributeError as error:
            raise RuntimeError(
                "cannot reach the vLLM engine's model to update its weights; run with "
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine lives in this process"
            ) from error
        base = getattr(model, "get_base_model", lambda: model)()
        if hasattr(model, "merge_adapter"):  # LoRA: push merged weights, then unmerge
            model.merge_adapter()
        try:
            runner_model.load_weights(
                (name.replace("base_layer.", ""), p.detach())
                for name, p in base.named_parameters()
                if "lora_" not in name
            )
        finally:
            if hasattr(model, "unmerge_adapter"):
                model.unmerge_adapter()

    def generate(
        self,
        model,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        pad_token_id: int,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """``n`` rollouts of each prompt (one vLLM request with ``n`` samples per prompt, so
        the engine prefills the prompt once); row ``g * n + j`` is rollout ``j`` of prompt
        ``g``."""
        check_prompts(prompt_ids, n)
        if model is not None and hasattr(model, "named_parameters"):
            self.sync_weights(model)
        exact_logprobs = params.top_k == 0 and params.top_p == 1.0
        seeds = torch.randint(2**31, (len(prompt_ids),), generator=generator).tolist()
        requests = [
            self._vllm_params(
                n=n,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or -1,  # -1 disables top-k in every vLLM version
                stop_token_ids=list(params.stop_token_ids),
                ignore_eos=True,  # only the caller's stop ids end a rollout
                logprobs=0 if exact_logprobs else None,
                seed=seed,
                detokenize=False,
            )
            for seed in seeds
        ]
        prompts = [self._tokens_prompt(prompt_token_ids=list(p)) for p in prompt_ids]
        results = self.llm.generate(prompts, sampling_params=requests, use_tqdm=False)

        width = params.max_new_tokens
        tokens = torch.full((len(prompt_ids) * n, width), pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(prompt_ids) * n, width), dtype=torch.float32)
        completions = [
            c
            for result in results
            for c in sorted(result.outputs, key=lambda c: getattr(c, "index", 0))
        ]
        if len(completions) != len(tokens):
            raise RuntimeError(
                f"vLLM returned {len(completions)} completions for {len(prompt_ids)} prompts x "
                f"{n} samples"
            )
        for row, completion in enumerate(completions):
            ids = list(completion.token_ids)
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if exact_logprobs:
                values = [completion.logprobs[i][t].logprob for i, t in enumerate(ids)]
                logprobs[row, : len(ids)] = torch.tensor(values, dtype=torch.float32)
        out = finish_rollouts(tokens, logprobs, params, pad_token_id)
        if not exact_logprobs:
            out.logprobs[torch.arange(width)[None, :] < out.lengths[:, None]] = float("nan")
        return out
