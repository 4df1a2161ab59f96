#!/usr/bin/env bash
# MaxRL in verl 0.9.1 on GSM8K-style data (one node of GPUs; pip install 'maxrl[math,verl]' plus
# verl's vLLM or SGLang rollout stack). Extra arguments are passed on to verl as Hydra overrides,
# e.g. `bash examples/verl_maxrl.sh algorithm.adv_estimator=maxrl_t +algorithm.estimator_params.T=8`;
# `bash examples/verl_maxrl.sh --cfg job` prints the resolved config without training.
#
# The advantage is maxrl.advantages' estimator (Algorithm 1 of the paper for `maxrl`), the loss is
# the paper's token mean, with no KL term and one optimiser step per rollout batch
# (ppo_mini_batch_size = train_batch_size, ppo_epochs = 1), so the PPO ratio is 1.
set -euo pipefail

DATA=${DATA:-$HOME/data/maxrl_math}
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-360M-Instruct}
GPUS=${GPUS:-8}
TRAIN=${TRAIN:-gsm8k/train.jsonl}
TEST=${TEST:-gsm8k/test.jsonl}

if [[ ! -f "$DATA/train.parquet" ]]; then
    python examples/verl_prepare_math.py train="$TRAIN" test="$TEST" out="$DATA"
fi

# python -m maxrl.integrations.verl = verl.trainer.main_ppo with the estimators registered in
# every Ray worker (it adds the worker_process_setup_hook override).
python -m maxrl.integrations.verl \
    algorithm.adv_estimator=maxrl \
    algorithm.use_kl_in_reward=False \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/test.parquet" \
    data.train_batch_size=64 \
    data.max_prompt_length=512 \
    data.max_response_length=2048 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-5 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.ppo_epochs=1 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=16 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    trainer.logger='["console"]' \
    trainer.project_name=maxrl \
    trainer.experiment_name=gsm8k_maxrl \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes=1 \
    trainer.total_epochs=10 \
    "$@"
