# What gpu-check.sh and scale-check.sh share; sourced by both (it sets FAILED and reads
# AGENT_HTTP_PORT).

FAILED=0

say() { printf '== %s\n' "$*"; }
pass() { printf 'PASS %s\n' "$*"; }
fail() {
    printf 'FAIL %s\n' "$*"
    FAILED=$((FAILED + 1))
}

# GET a path of the agent's HTTP server (no curl needed).
agent_get() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$AGENT_HTTP_PORT" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
        sed -e '1,/^\r$/d' <&3
    )
}
