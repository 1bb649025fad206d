#!/bin/bash
# Strata's check on a real GPU host (docs/gpu.md): run as root from the folder that
# `cargo xtask gpu-check --prepare` wrote (the release binaries, cuda-burn, this script):
#
#   ./gpu-check.sh [OUT_DIR]
#
# It starts the release allocator and agent as a user would from a shell, shows the GPUs the
# agent discovered, runs a task given a GPU that allocates BURN_MIB MiB of GPU memory and keeps
# the GPU busy, checks that `strata usage` reports that memory and a utilisation above zero,
# that a task without a GPU gets EPERM opening /dev/nvidia0 and CUDA finds no device there, and
# that a second task asking for the agent's only GPU waits for the first to end. Logs go to
# OUT_DIR (default /tmp/strata-gpu-check); the exit status is the number of failed checks.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/strata-gpu-check}
BURN_MIB=${BURN_MIB:-4096}
BURN_SECONDS=${BURN_SECONDS:-40}
ALLOCATOR_PORT=${ALLOCATOR_PORT:-15050}
AGENT_HTTP_PORT=${AGENT_HTTP_PORT:-15051}
# How long the second GPU task may wait for the first one's GPU.
WAIT_FOR_GPU=${WAIT_FOR_GPU:-300s}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/strata-gpu-check.XXXXXX)
chmod 0755 "$WORK"
export STRATA_ALLOCATOR="http://127.0.0.1:$ALLOCATOR_PORT"
STRATA="$HERE/strata"
# Tasks run as nobody with a private /tmp: their program goes where they can reach it.
TOOLS=/opt/strata-gpu-check
mkdir -p "$TOOLS"
chmod 0755 "$TOOLS"
install -m 0755 "$HERE/cuda-burn" "$TOOLS/cuda-burn"
BURN="$TOOLS/cuda-burn"
PIDS=()
# shellcheck source=common.sh
. "$HERE/common.sh"

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    "$HERE/strata-agent" --work-dir "$WORK/agent" --remove-cgroups >>"$OUT/cleanup.log" 2>&1
    rm -rf "$TOOLS"
    say "logs in $OUT; work dir $WORK"
}
trap cleanup EXIT

# Waits up to $1 seconds for the command in "$2..." to succeed.
wait_for() {
    local limit=$1
    shift
    for _ in $(seq 1 $((limit * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

say "host"
uname -r
stat -fc 'cgroup fs: %T' /sys/fs/cgroup
grep -E ' nvidia' /proc/devices
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv
"$BURN" probe

say "starting the allocator and the agent (release builds, as from a shell)"
"$HERE/strata-allocator" --listen "127.0.0.1:$ALLOCATOR_PORT" --work-dir "$WORK/allocator" \
    >"$OUT/allocator.log" 2>&1 &
PIDS+=($!)
wait_for 20 "$STRATA" agents || fail "the allocator did not answer"
"$HERE/strata-agent" --allocator "$STRATA_ALLOCATOR" --work-dir "$WORK/agent" \
    --http-listen "127.0.0.1:$AGENT_HTTP_PORT" >"$OUT/agent.log" 2>&1 &
PIDS+=($!)
wait_for 30 grep -q "registered with the allocator" "$OUT/agent.log" || fail "the agent did not register (agent.log)"
sleep 1

say "GPUs discovered"
grep -E "GPU offered|no GPUs offered|NVML" "$OUT/agent.log" | sed -e 's/\x1b\[[0-9;]*m//g'
"$STRATA" agents
agent_get /gpus | tee "$OUT/gpus.json"
echo
if grep -q '"uuid":"GPU-' "$OUT/gpus.json" && grep -q '"memory_total_bytes":[1-9]' "$OUT/gpus.json"; then
    pass "the agent discovered its GPU with UUID and memory"
else
    fail "the agent's /gpus lists no GPU"
fi

say "task gpu-a: --gpus 1, $BURN_MIB MiB of GPU memory, busy for $BURN_SECONDS s"
"$STRATA" run --task-id gpu-a --gpus 1 --cpus 1 --mem 1024 -- \
    "$BURN" burn "$BURN_MIB" "$BURN_SECONDS" 2>&1 | stamp >"$OUT/gpu-a.log" &
RUN_A=$!
usage_ok() {
    "$STRATA" usage gpu-a --json >"$OUT/usage.json" 2>/dev/null || return 1
    local mem sm
    mem=$(grep -o '"memory_used_bytes":[0-9]*' "$OUT/usage.json" | head -1 | cut -d: -f2)
    sm=$(grep -o '"sm_utilization_percent":[0-9.e+-]*' "$OUT/usage.json" | head -1 | cut -d: -f2)
    [ -n "$mem" ] && [ -n "$sm" ] || return 1
    [ "$mem" -ge $((BURN_MIB * 1024 * 1024)) ] || return 1
    awk -v sm="$sm" 'BEGIN { exit !(sm > 0) }'
}
if wait_for 60 usage_ok; then
    pass "strata usage reports gpu-a's GPU memory (>= $BURN_MIB MiB) and SM utilisation > 0"
else
    fail "strata usage did not report gpu-a's GPU memory and utilisation (usage.json)"
fi
"$STRATA" usage gpu-a
cat "$OUT/usage.json"
echo
agent_get /metrics | grep -E '^strata_(task_)?gpu_' | tee "$OUT/gpu-metrics.txt"
"$STRATA" top 2>/dev/null | head -5

say "task nogpu: no GPU asked for"
# --gpu-resources: the framework may be offered this agent (it has GPUs), and asks for none.
"$STRATA" run --task-id nogpu-open --gpu-resources -- "$BURN" open /dev/nvidia0 >"$OUT/nogpu-open.log" 2>&1
cat "$OUT/nogpu-open.log"
if grep -q "open /dev/nvidia0: EPERM" "$OUT/nogpu-open.log"; then
    pass "a task without a GPU gets EPERM opening /dev/nvidia0"
else
    fail "a task without a GPU could open /dev/nvidia0, or failed otherwise"
fi
"$STRATA" run --task-id nogpu-cuda --gpu-resources -- "$BURN" probe >"$OUT/nogpu-cuda.log" 2>&1
cat "$OUT/nogpu-cuda.log"
if grep -q "cuda devices: 0" "$OUT/nogpu-cuda.log"; then
    pass "CUDA finds no device in a task without a GPU"
else
    fail "CUDA found a device in a task without a GPU"
fi

say "task gpu-b: --gpus 1 while gpu-a holds the only GPU"
"$STRATA" run --task-id gpu-b --gpus 1 --offer-timeout "$WAIT_FOR_GPU" -- "$BURN" probe 2>&1 |
    stamp >"$OUT/gpu-b.log" &
RUN_B=$!
wait "$RUN_A"
A_END=$(date +%s.%N)
wait "$RUN_B"
cat "$OUT/gpu-a.log" "$OUT/gpu-b.log"
B_STAGED=$(grep -m1 "STAGING" "$OUT/gpu-b.log" | cut -d' ' -f1)
if [ -n "$B_STAGED" ] && awk -v b="$B_STAGED" -v a="$A_END" 'BEGIN { exit !(b > a - 2) }'; then
    pass "gpu-b was launched only after gpu-a ended (gpu-a ended $A_END, gpu-b staged $B_STAGED)"
else
    fail "gpu-b was not launched after gpu-a ended (gpu-a ended $A_END, gpu-b staged ${B_STAGED:-never})"
fi
if grep -q "cuda devices: 1" "$OUT/gpu-b.log"; then
    pass "CUDA finds exactly the one GPU in a task given it"
else
    fail "gpu-b did not see its GPU"
fi
grep -E "GPUs (assigned|freed)" "$OUT/agent.log" | sed -e 's/\x1b\[[0-9;]*m//g'

say "$FAILED check(s) failed"
exit "$FAILED"
