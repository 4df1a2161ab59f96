#!/usr/bin/env bash
# The rollout engine's checks on a CUDA GPU, in one run (about 7 minutes on an H200):
#   1. the rollout tests (the sampler contract, sampling rules, kv planning and kv exactness)
#      with every model on the GPU (MAXRL_TEST_DEVICE=cuda): the kv and hf samplers'
#      log-probabilities against a full forward pass, stop rules, top-k/top-p,
#      determinism, the first-token distribution;
#   2. benchmarks/rollout.py on the GPU: the maze model in fp32 and bf16 at batch 512 and 4,096
#      (distinct prompts, and 16 rollouts per prompt as in training), a model of
#      Qwen2.5-0.5B's shape in bf16, the peak GPU memory a call adds, where each backend's time
#      goes (--profile), and the GPU choices of the kv sampler undone one at a time;
#   3. whether vLLM is importable here.
# Run from the repository root: ``bash benchmarks/gpu_check.sh [log folder]``; each step's
# output goes to the terminal and to the log folder (default gpu_check_logs).
set -uo pipefail
logs=${1:-gpu_check_logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"

step tests 300 env MAXRL_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_sampler_contract.py tests/test_sampling_rules.py tests/test_kv_planning.py tests/test_kv_exactness.py
bench="python3 benchmarks/rollout.py --device cuda"
step maze_fp32_512 120 $bench --repeats 5
step maze_bf16_512 120 $bench --dtype bf16 --repeats 5
step maze_fp32_4096 180 $bench --batch-size 4096 --repeats 3
step maze_fp32_4096_groups 180 $bench --batch-size 4096 --rollouts-per-prompt 16 --repeats 3
step qwen05b_bf16 240 $bench --model qwen2.5-0.5b --dtype bf16 --batch-size 128 --new-tokens 128 --repeats 3
step maze_memory 120 $bench --memory
step maze_profile 120 $bench --profile
step maze_ablations_groups 240 $bench --batch-size 4096 --rollouts-per-prompt 16 --ablations --repeats 1
step vllm 60 python3 -c "
import importlib.util
spec = importlib.util.find_spec('vllm')
print('vllm is not installed: the vLLM backend was not run' if spec is None else
      'vllm is installed at ' + spec.origin + ': run the rollout tests on this machine too')
"
echo "=== summary"
grep -h "a call, the prefill\|x$" "$logs"/maze_profile.log "$logs"/maze_ablations_groups.log
grep -h "passed\|failed\|error" "$logs/tests.log" | tail -1
for f in "$logs"/maze_{fp32,bf16}*.log "$logs"/qwen*.log "$logs"/maze_memory.log; do
  echo "$(basename "$f" .log): $(grep -h "tokens/s median\|speedup_vs\|MiB added" "$f" | sed 's/ (.*//' | tr '\n' ';')"
done
exit $status
