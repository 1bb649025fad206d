#!/bin/bash
# Strata at scale on one real host (docs/gpu.md, issue 16): run as root from the folder that
# `cargo xtask gpu-check --prepare` wrote:
#
#   ./scale-check.sh [OUT_DIR]
#
# It starts the release allocator and agent as a user would from a shell, launches TASKS
# (1,000) `sleep` tasks with the skeleton_bench framework, and reports:
#   - the time from the framework's start until the agent reports every task running;
#   - the agent's own CPU time (its process, from /proc) over SAMPLE_SECONDS with every task
#     running, as a share of one core, against BUDGET_PERCENT, and its resident memory;
#   - the time from `strata framework teardown` until the agent reports no task, and that no
#     task cgroup is left below the agent's cgroup root;
#   - with LAUNCH_BENCH=1 (default), launch_bench: strata against crun (carried in crun/ with
#     the libraries it needs) for LAUNCHES launches of an isolated /bin/true each.
# Logs go to OUT_DIR (default /tmp/strata-scale-check); the exit status is the number of failed
# checks. AGENT_FLAGS adds flags to the agent (e.g. --cgroup-placement below-own on a shared
# development machine).
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/strata-scale-check}
TASKS=${TASKS:-1000}
TASK_MEM=${TASK_MEM:-16}
RUNNING_LIMIT=${RUNNING_LIMIT:-120}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-30}
BUDGET_PERCENT=${BUDGET_PERCENT:-1}
LAUNCH_BENCH=${LAUNCH_BENCH:-1}
LAUNCHES=${LAUNCHES:-200}
ALLOCATOR_PORT=${ALLOCATOR_PORT:-16050}
AGENT_HTTP_PORT=${AGENT_HTTP_PORT:-16051}
read -r -a EXTRA_AGENT_FLAGS <<<"${AGENT_FLAGS:-}"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/strata-scale-check.XXXXXX)
chmod 0755 "$WORK"
export STRATA_ALLOCATOR="http://127.0.0.1:$ALLOCATOR_PORT"
STRATA="$HERE/strata"
PIDS=()
# shellcheck source=common.sh
. "$HERE/common.sh"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    "$HERE/strata-agent" --work-dir "$WORK/agent" "${EXTRA_AGENT_FLAGS[@]}" --remove-cgroups \
        >>"$OUT/cleanup.log" 2>&1
    say "logs in $OUT; work dir $WORK"
}
trap cleanup EXIT

# How many tasks the agent reports usage for (each record names its task once).
tasks_reported() { agent_get /usage | grep -o '"task_id"' | wc -l; }

# The agent process's user + system CPU time, in clock ticks.
agent_ticks() { awk '{ print $14 + $15 }' "/proc/$AGENT_PID/stat"; }

say "host"
uname -r
nproc
stat -fc 'cgroup fs: %T' /sys/fs/cgroup

say "starting the allocator and the agent (release builds, as from a shell)"
"$HERE/strata-allocator" --listen "127.0.0.1:$ALLOCATOR_PORT" --work-dir "$WORK/allocator" \
    >"$OUT/allocator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 40); do "$STRATA" agents >/dev/null 2>&1 && break; sleep 0.5; done
"$HERE/strata-agent" --allocator "$STRATA_ALLOCATOR" --work-dir "$WORK/agent" \
    --http-listen "127.0.0.1:$AGENT_HTTP_PORT" "${EXTRA_AGENT_FLAGS[@]}" >"$OUT/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
for _ in $(seq 1 60); do grep -q "registered with the allocator" "$OUT/agent.log" && break; sleep 0.5; done
grep -q "registered with the allocator" "$OUT/agent.log" || fail "the agent did not register (agent.log)"
ROOT=$(sed -e 's/\x1b\[[0-9;]*m//g' "$OUT/agent.log" | grep -o 'cgroup=/sys/fs/cgroup[^ ]*' | head -1 | cut -d= -f2)
say "task cgroup root: ${ROOT:-unknown}"
"$STRATA" agents

say "$TASKS sleep tasks (0.01 cpus, $TASK_MEM MiB each)"
START=$(now)
"$HERE/skeleton_bench" --allocator "$STRATA_ALLOCATOR" --tasks "$TASKS" --cmd "sleep 3600" \
    --cpus 0.01 --mem "$TASK_MEM" >"$OUT/skeleton_bench.log" 2>&1 &
PIDS+=($!)
RUNNING=""
for _ in $(seq 1 $((RUNNING_LIMIT * 5))); do
    if [ "$(tasks_reported)" -ge "$TASKS" ]; then
        RUNNING=$(since "$START")
        break
    fi
    sleep 0.2
done
if [ -n "$RUNNING" ]; then
    pass "all $TASKS tasks running $RUNNING s after the framework started (target < 5 s)"
else
    fail "only $(tasks_reported) of $TASKS tasks running after $RUNNING_LIMIT s"
fi

say "the agent's own CPU over $SAMPLE_SECONDS s with every task running"
sleep 3
T0=$(agent_ticks)
sleep "$SAMPLE_SECONDS"
T1=$(agent_ticks)
HZ=$(getconf CLK_TCK)
PERCENT=$(awk -v d=$((T1 - T0)) -v hz="$HZ" -v s="$SAMPLE_SECONDS" 'BEGIN { printf "%.3f", 100 * d / hz / s }')
RSS=$(awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$AGENT_PID/status")
if awk -v p="$PERCENT" -v b="$BUDGET_PERCENT" 'BEGIN { exit !(p < b) }'; then
    pass "the agent used $PERCENT% of a core at $TASKS tasks (budget $BUDGET_PERCENT%), RSS $RSS"
else
    fail "the agent used $PERCENT% of a core at $TASKS tasks (budget $BUDGET_PERCENT%), RSS $RSS"
fi
# Task cgroups: ROOT/containers/FRAMEWORK/TASK; and every cgroup below ROOT/containers.
task_cgroups() { find "$ROOT/containers" -mindepth 2 -maxdepth 2 -type d 2>/dev/null | wc -l; }
any_cgroups() { find "$ROOT/containers" -mindepth 1 -type d 2>/dev/null | wc -l; }
if [ -n "$ROOT" ]; then
    BEFORE=$(task_cgroups)
    if [ "$BEFORE" -ge "$TASKS" ]; then
        pass "$BEFORE task cgroups below $ROOT/containers"
    else
        fail "only $BEFORE task cgroups below $ROOT/containers for $TASKS tasks"
    fi
fi

say "teardown"
# The only framework on this allocator.
FRAMEWORK=$("$STRATA" frameworks --json | grep -o '"id": *"[^"]*"' | head -1 | cut -d'"' -f4)
START=$(now)
"$STRATA" framework teardown "$FRAMEWORK" || fail "strata framework teardown $FRAMEWORK failed"
GONE=""
for _ in $(seq 1 $((RUNNING_LIMIT * 5))); do
    if [ "$(tasks_reported)" -eq 0 ]; then
        GONE=$(since "$START")
        break
    fi
    sleep 0.2
done
if [ -n "$GONE" ]; then
    pass "all $TASKS tasks gone $GONE s after the teardown (target < 5 s)"
else
    fail "$(tasks_reported) tasks still reported $RUNNING_LIMIT s after the teardown"
fi
if [ -n "$ROOT" ]; then
    sleep 2
    LEFT=$(any_cgroups)
    if [ "$LEFT" -eq 0 ]; then
        pass "no cgroup left below $ROOT/containers (tasks' nor framework's)"
    else
        fail "$LEFT cgroups left below $ROOT/containers"
        find "$ROOT/containers" -mindepth 1 -type d | head -20
    fi
fi

if [ "$LAUNCH_BENCH" = 1 ]; then
    say "launch_bench: strata and crun, $LAUNCHES launches of an isolated /bin/true each"
    export LD_LIBRARY_PATH="$HERE/crun-libs"
    export PATH="$HERE/crun-bin:$PATH"
    crun --version | head -1 || fail "crun does not run here (crun-bin, crun-libs)"
    for runtime in strata crun strata crun; do
        "$HERE/launch_bench" --runtime "$runtime" --tasks $((LAUNCHES / 2)) --warmup 1 \
            --supervisor "$HERE/strata-agent" --work-dir "$WORK/launch-$runtime" 2>>"$OUT/launch_bench.err" |
            tee -a "$OUT/launch_bench.txt" || fail "launch_bench --runtime $runtime failed (launch_bench.err)"
    done
fi

say "$FAILED check(s) failed"
exit "$FAILED"
