#!/bin/sh
# Installs the Strata agent on this host: the binary, a config file and a systemd unit.
#
#   scripts/install-agent.sh --binary target/release/strata-agent --allocator http://alloc:5050
#
# Options (or the environment variables in brackets):
#   --binary PATH      the strata-agent binary to install [STRATA_AGENT_BINARY]
#   --allocator URL    the allocator the agent dials (written to the config the first time)
#   --work-dir DIR     the agent's work dir (default /var/lib/strata/agent)
#   --destdir DIR      install under DIR instead of / (packaging, tests) [DESTDIR]
#   --start            enable and (re)start the service (only without --destdir)
#
# Idempotent: running it again replaces the binary and the unit and keeps the config file
# (/etc/strata/agent.env) as the operator left it. It refuses, saying why, on a host the agent
# cannot serve: no cgroup2 hierarchy mounted, or a kernel older than 5.10.
set -eu

MIN_KERNEL_MAJOR=5
MIN_KERNEL_MINOR=10

die() {
    echo "install-agent: error: $*" >&2
    exit 1
}

binary="${STRATA_AGENT_BINARY:-}"
allocator="http://127.0.0.1:5050"
work_dir="/var/lib/strata/agent"
destdir="${DESTDIR:-}"
start=0
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --allocator) allocator="${2:?--allocator needs a URL}"; shift 2 ;;
    --work-dir) work_dir="${2:?--work-dir needs a directory}"; shift 2 ;;
    --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
    --start) start=1; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done

# --- can this host run the agent? (STRATA_PROC_MOUNTS and STRATA_KERNEL_RELEASE: for tests)
mounts="${STRATA_PROC_MOUNTS:-/proc/mounts}"
if ! awk '$3 == "cgroup2" { found = 1 } END { exit !found }' "$mounts" 2>/dev/null; then
    die "no cgroup2 hierarchy is mounted (see $mounts): the agent isolates tasks with cgroup v2 or a hybrid layout; boot with systemd.unified_cgroup_hierarchy=1 or mount cgroup2"
fi
release="${STRATA_KERNEL_RELEASE:-$(uname -r)}"
major="${release%%.*}"
rest="${release#*.}"
minor="${rest%%[!0-9]*}"
case "$major$minor" in
*[!0-9]* | "") die "cannot read the kernel version from $release" ;;
esac
if [ "$major" -lt "$MIN_KERNEL_MAJOR" ] ||
    { [ "$major" -eq "$MIN_KERNEL_MAJOR" ] && [ "$minor" -lt "$MIN_KERNEL_MINOR" ]; }; then
    die "kernel $release is too old: the agent needs Linux $MIN_KERNEL_MAJOR.$MIN_KERNEL_MINOR or later (pidfds, cgroup eBPF links, cgroup v2 features)"
fi

[ -n "$binary" ] || die "say which binary to install: --binary target/release/strata-agent"
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable file: build it with cargo build --release -p strata-agent"
here="$(cd "$(dirname "$0")" && pwd)"
unit_src="$here/strata-agent.service"
[ -f "$unit_src" ] || die "$unit_src is missing: run the script from a Strata checkout"

bin_dir="$destdir/usr/local/bin"
conf_dir="$destdir/etc/strata"
unit_dir="$destdir/etc/systemd/system"
mkdir -p "$bin_dir" "$conf_dir" "$unit_dir" "$destdir$work_dir"
chmod 0711 "$destdir$work_dir"

# The binary: replaced atomically (a running agent keeps its old inode).
install -m 0755 "$binary" "$bin_dir/.strata-agent.new"
mv -f "$bin_dir/.strata-agent.new" "$bin_dir/strata-agent"

# The config: written once; later runs keep the operator's edits.
conf="$conf_dir/agent.env"
if [ ! -e "$conf" ]; then
    umask 022
    cat >"$conf" <<CONF
# Strata agent configuration (read by strata-agent.service). Flags: strata-agent --help.
STRATA_ALLOCATOR=$allocator
STRATA_AGENT_WORK_DIR=$work_dir
# More flags, e.g. --cpus 8 --attribute rack=r1 --task-user nobody
STRATA_AGENT_ARGS=
CONF
    echo "install-agent: wrote $conf"
else
    echo "install-agent: kept $conf"
fi

install -m 0644 "$unit_src" "$unit_dir/.strata-agent.service.new"
mv -f "$unit_dir/.strata-agent.service.new" "$unit_dir/strata-agent.service"
echo "install-agent: installed $bin_dir/strata-agent and $unit_dir/strata-agent.service"

if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$start" -eq 1 ]; then
        systemctl enable strata-agent.service
        # A restart replaces only the agent (KillMode=process): running tasks are kept.
        systemctl restart strata-agent.service
        echo "install-agent: strata-agent.service enabled and (re)started"
    else
        echo "install-agent: start it with: systemctl enable --now strata-agent.service"
    fi
fi
