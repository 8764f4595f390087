#!/usr/bin/env bash
# Private network namespace for the interop tests.
#
# libwebrtc ignores loopback interfaces when it gathers ICE candidates, so a
# client and the server on one machine cannot reach each other over plain
# 127.0.0.1. Inside the namespace made here, 127.0.0.2/32 sits on one end of a
# veth pair (a non-loopback interface), which libwebrtc does use, while the
# packets themselves still travel over the namespace's own loopback. Nothing in
# the namespace can reach any address outside 127.0.0.0/8: it has no other
# address and no route out.
#
# Usage:
#   scripts/testnet.sh run [--name NAME] -- CMD [ARGS...]
#       create a namespace, run CMD inside it, delete the namespace (also when
#       CMD fails or the script is interrupted); exits with CMD's status
#   scripts/testnet.sh create NAME
#   scripts/testnet.sh exec NAME -- CMD [ARGS...]
#   scripts/testnet.sh delete NAME
#
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2.
set -euo pipefail

readonly NODE_IP="127.0.0.2"
readonly VETH_A="avr0"
readonly VETH_B="avr1"

die() {
    echo "testnet: $*" >&2
    exit 2
}

usage() {
    sed -n '12,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_name() {
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || die "bad namespace name: '$1'"
}

ns_exists() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"
}

# Write a sysctl inside the namespace; quiet if the key does not exist (for
# instance a kernel without IPv6).
ns_sysctl() {
    local ns="$1" key="$2" value="$3"
    local path="/proc/sys/${key//.//}"
    if command -v sysctl >/dev/null 2>&1; then
        ip netns exec "$ns" sysctl -q -w "$key=$value" >/dev/null 2>&1 || true
    else
        ip netns exec "$ns" sh -c "[ -e '$path' ] && echo '$value' > '$path'" 2>/dev/null || true
    fi
}

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (ip netns add/exec/delete)"
    command -v ip >/dev/null 2>&1 || die "no 'ip' command: install iproute2"
}

cmd_create() {
    local ns="$1"
    check_name "$ns"
    need_root
    ns_exists "$ns" && die "namespace '$ns' already exists"
    ip netns add "$ns"
    # From here on, a failure must not leave the namespace behind.
    if ! setup_ns "$ns"; then
        ip netns delete "$ns" 2>/dev/null || true
        die "could not set up namespace '$ns'"
    fi
}

setup_ns() {
    local ns="$1"
    ip -n "$ns" link set lo up || return 1
    # No IPv6 at all: set 'default' before the veth pair exists so it inherits it.
    ns_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
    ns_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
    ns_sysctl "$ns" net.ipv6.conf.lo.disable_ipv6 1
    # Ephemeral ports end below 50000: the tests give their servers ports from 50000 up
    # (harness.RESERVED_PORTS), which no client socket can then take first.
    ns_sysctl "$ns" net.ipv4.ip_local_port_range "32768 49999"
    ip -n "$ns" link add "$VETH_A" type veth peer name "$VETH_B" || return 1
    ns_sysctl "$ns" "net.ipv6.conf.$VETH_A.disable_ipv6" 1
    ns_sysctl "$ns" "net.ipv6.conf.$VETH_B.disable_ipv6" 1
    ip -n "$ns" addr add "$NODE_IP/32" dev "$VETH_A" || return 1
    ip -n "$ns" link set "$VETH_A" up || return 1
    ip -n "$ns" link set "$VETH_B" up || return 1
}

cmd_delete() {
    local ns="$1"
    check_name "$ns"
    ns_exists "$ns" || return 0
    # Anything still running in the namespace was started by this test run
    # (the namespace is private to it): end those processes by their pid.
    local pids
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids="$(ip netns pids "$ns" 2>/dev/null || true)"
            [[ -z "$pids" ]] && break
            sleep 0.2
        done
        # shellcheck disable=SC2086
        [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
    fi
    ip netns delete "$ns"
}

cmd_exec() {
    local ns="$1"
    shift
    check_name "$ns"
    ns_exists "$ns" || die "no namespace '$ns'"
    [[ $# -gt 0 ]] || die "exec: no command given"
    ip netns exec "$ns" "$@"
}

cmd_run() {
    local ns="aviary-test-$$"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --name)
                [[ $# -ge 2 ]] || die "--name needs a value"
                ns="$2"
                shift 2
                ;;
            --name=*)
                ns="${1#--name=}"
                shift
                ;;
            --)
                shift
                break
                ;;
            *)
                die "run: unexpected argument '$1' (did you forget '--'?)"
                ;;
        esac
    done
    [[ $# -gt 0 ]] || die "run: no command given"
    check_name "$ns"

    cmd_create "$ns"
    # Delete the namespace however this script ends (the trap runs after this
    # function has returned, so it reads a global).
    RUN_NS="$ns"
    trap 'cmd_delete "$RUN_NS" || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local status=0
    ip netns exec "$ns" "$@" || status=$?
    return "$status"
}

[[ $# -ge 1 ]] || usage
sub="$1"
shift
case "$sub" in
    run)
        cmd_run "$@"
        ;;
    create)
        [[ $# -eq 1 ]] || usage
        cmd_create "$1"
        ;;
    exec)
        [[ $# -ge 1 ]] || usage
        ns="$1"
        shift
        [[ "${1:-}" == "--" ]] && shift
        cmd_exec "$ns" "$@"
        ;;
    delete)
        [[ $# -eq 1 ]] || usage
        cmd_delete "$1"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        ;;
esac
