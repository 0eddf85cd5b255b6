#!/usr/bin/env bash
# The checks and figures of one GPU machine, in one run: the CUDA tests, the fault-injection tests, RL /
# policy throughput with the policy on CUDA (fp32, bf16; env on CPU or CUDA), world-model throughput (training
# step, imagined env steps/s) and renderer throughput (triton / torch on CUDA, numba on CPU), next to the same
# machine's CPU.
#
# Usage, from the repository root on a machine whose python3 has torch (CUDA) and reinforge's dependencies:
#   bash bench/gpu_check.sh [OUT_DIR]        # logs and one JSON line per benchmark in OUT_DIR (default gpu_out)
#   ONLY="test_gpu rl_grpo_token_cuda" bash bench/gpu_check.sh   # just those steps
# Each step has its own time limit so that one slow step cannot eat the rest.
set -uo pipefail
OUT=${1:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
PY=${PYTHON:-python3}
R="$PY -m reinforge.cli"
step() {  # step NAME SECONDS CMD...: run CMD with a limit, its output into OUT/NAME.log, and say how it ended
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 0 ]; then tail -n 2 "$OUT/$name.log"
  else grep -E "^(E  |FAILED|[A-Za-z]*Error)" "$OUT/$name.log" | head -n 25; fi
  cat "$OUT/$name.log" >> "$OUT/all.log"
  rm -f "$OUT/$name.log"
}

nvidia-smi -L 2>&1 | head -2
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'cpus', torch.get_num_threads())"

step test_gpu 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
step test_faults 120 $PY -m pytest -q -p no:cacheprovider tests/test_faults.py

# RL throughput through the trainer's own iteration (fresh weights: every episode runs to the time limit)
step rl_ppo_flow_cuda_fp32 80 $R bench rl --policy flow --algo ppo --freeze-vision on --iterations 1 --device cuda --json
step rl_ppo_flow_cuda_bf16 80 $R bench rl --policy flow --algo ppo --freeze-vision on --iterations 1 --device cuda \
  --precision bf16 --json
step rl_ppo_flow_cuda_envcuda 80 $R bench rl --policy flow --algo ppo --freeze-vision on --iterations 1 \
  --device cuda --env-device cuda --json
step rl_grpo_token_cuda 80 $R bench rl --policy token --algo grpo --freeze-vision on --iterations 1 --device cuda --json
step rl_ppo_flow_cpu 80 $R bench rl --policy flow --algo ppo --freeze-vision on --iterations 1 --device cpu --json
step wm_cuda 150 $PY bench/wm_throughput.py --device cuda --envs 256,1024,4096 --batch 16,64
step wm_cpu 120 $PY bench/wm_throughput.py --device cpu --envs 64,256 --batch 16
step policy_cuda 45 $R bench policy --device cuda --json
step policy_cpu 45 $R bench policy --device cpu --json
# Renderer (spatial suite, 2 views, 64x64): the triton backend's CUDA test (pixels vs numba at 1,024 envs), then
# rendered env steps/s of triton and torch on CUDA and numba on this machine's CPU at 2,048 / 8,192 / 16,384 envs,
# and the renderer alone (frames/s, no physics). About 2.5 minutes in all.
ENVS="2048 8192 16384"
TB="$PY bench/env_throughput.py --image-size 64"
step test_render_gpu 75 $PY -m pytest -q -s -p no:cacheprovider -m gpu tests/test_render_triton.py
step env_triton_cuda_8192 45 $R bench env --env-device cuda --render-backend triton --num-envs 8192 --image-size 64 \
  --steps 20 --json
step env_triton_cuda 45 $TB --env-device cuda --render-backend triton --num-envs 2048 16384 --steps 20
step env_torch_cuda 60 $TB --env-device cuda --render-backend torch --num-envs $ENVS --steps 3
step env_numba_cpu 45 $TB --env-device cpu --render-backend numba --num-envs $ENVS --steps 5
step render_only_cuda 40 $TB --render-only --env-device cuda --render-backend triton torch --num-envs 8192 --steps 10

grep -h '^{' "$OUT/all.log" > "$OUT/figures.jsonl"
echo "figures:"; cat "$OUT/figures.jsonl"
