#!/bin/bash
# `make demo`: Ballonet at work on this machine. Installs what it needs, builds, boots three small TCG
# guests under a ballonet-host whose memory budget is smaller than their sum, and shows every second what
# the host decides and gets back: one guest idle, one busy (re-touching 200 MiB), one growing (from
# nothing to 380 MiB at 4 MiB/s after 30 s), and a fourth VM too big for what is left, which admission
# control refuses. idle and busy have anonymous RAM with page sharing on (they trust each other: same
# image, same owner), so KSM merges what they have in common and the host counts it; growing has memfd
# RAM (hole-punch reclaim, no sharing). At the end: a summary. Everything it started is stopped,
# including the swap file it adds when the host has too little swap for admission control (1.3 GiB in
# /var/tmp), and KSM's settings are put back.
#
#   DEMO_SECONDS=150   how long the scenario runs once the guests are up
#   DEMO_BUDGET_MIB=960   the host's budget for the three 512 MiB guests: below what they end up using,
#                         so the host leaves the high state and the shares decide
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
seconds=${DEMO_SECONDS:-150}
budget=${DEMO_BUDGET_MIB:-960}

if [ "$(id -u)" != 0 ]; then
    echo "make demo: run as root: it starts QEMU guests and reclaims their memory" >&2
    exit 1
fi
bash scripts/install-deps.sh
echo "== building ballonet-host, ballonetctl and the static ballonet-guest"
swift build --product ballonet-host >/dev/null
swift build --product ballonetctl >/dev/null
guest_build_log=$(bash scripts/build-guest-agent.sh .build-guest 2>&1) || { echo "$guest_build_log" >&2; exit 1; }
echo "== building the guest image (cached after the first time)"
bash packaging/guest-image/build-initramfs.sh --agent .build-guest/release/ballonet-guest --out .build-guest/guest-image >/dev/null
bin=$(swift build --show-bin-path)
image=$PWD/.build-guest/guest-image

work=$(mktemp -d /tmp/ballonet-demo.XXXXXX)
host_pid=""
swapfile=""
cleanup() {
    if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
        kill -TERM "$host_pid"   # goodbye to the guests; stop_vms_on_exit stops their QEMUs
        wait "$host_pid" || true
    fi
    # Belt and braces: any QEMU of ours still there (its pid file is in our work directory).
    for pidfile in "$work"/state/*/qemu.pid; do
        [ -e "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -n "$swapfile" ]; then swapoff "$swapfile" 2>/dev/null || true; rm -f "$swapfile"; fi
    echo "host agent log kept in $work/host.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Admission control wants host swap to cover each VM's max − min (3 × 416 MiB here): add a swap file for
# the demo's length when the host has less.
swap_kib=$(awk '/^SwapTotal:/ {print $2}' /proc/meminfo)
if [ "${swap_kib:-0}" -lt $((1300 * 1024)) ]; then
    swapfile=/var/tmp/ballonet-demo.swap
    echo "== adding a 1.3 GiB swap file for the demo ($swapfile; removed at the end)"
    rm -f "$swapfile"
    fallocate -l 1300M "$swapfile" && chmod 600 "$swapfile" && mkswap -q "$swapfile" >/dev/null && swapon "$swapfile"
fi

vm() {  # name, workload (shell command run in the guest at boot), memory MiB, min MiB, sharing (true/false)
    local run="" sharing=""
    [ -n "$2" ] && run=" ballonet.run=\\\"$2\\\""
    [ "${5:-false}" = true ] && sharing=$'\nram_backing = "anonymous"\nsharing = true'
    cat <<TOML

[[vm]]
name = "$1"
memory_mib = ${3:-512}
min_mib = ${4:-96}
accelerator = "tcg"   # KVM cannot boot guests on this kind of machine
kernel = "$image/vmlinuz"
initrd = "$image/initramfs.cpio.gz"
append = "console=ttyS0 panic=-1 ballonet.hostname=$1 ballonet.agent=1 ballonet.agent_args=\\"--sample-seconds 2\\"$run"$sharing
TOML
}
{
    cat <<TOML
[host]
state_directory = "$work/state"
settings_file = "$work/vm-settings.json"
budget_mib = $budget
stop_vms_on_exit = true
# The demo's own QEMUs only: never the domains of a libvirtd on this host.
[libvirt]
uri = ""
TOML
    vm idle "" 512 96 true
    vm busy "ballonet-workload churn 200 100000" 512 96 true
    vm growing "sleep 30; ballonet-workload hold 380 4"
    vm toobig "" 2048 1024
} > "$work/host.toml"

echo "== starting ballonet-host with three 512 MiB guests and a budget of $budget MiB (config: $work/host.toml)"
"$bin/ballonet-host" run --config "$work/host.toml" > "$work/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 100); do
    [ -S "$work/state/control.sock" ] && break
    kill -0 "$host_pid" 2>/dev/null || { echo "ballonet-host failed to start:"; cat "$work/host.log"; exit 1; }
    sleep 0.2
done

start=$(date +%s)
while true; do
    elapsed=$(( $(date +%s) - start ))
    [ "$elapsed" -ge "$seconds" ] && break
    kill -0 "$host_pid" 2>/dev/null || { echo "ballonet-host exited:"; tail -n 30 "$work/host.log"; exit 1; }
    table=$("$bin/ballonetctl" top --count 1 --socket "$work/state/control.sock" 2>&1 || true)
    [ -t 1 ] && printf '\033[H\033[2J'
    echo "ballonet demo: ${elapsed}s of ${seconds}s (idle: boots and rests; busy: re-touches 200 MiB; growing: from 30 s grows to 380 MiB)"
    echo "$table"
    echo "latest decisions:"
    grep -E 'target [0-9]+ MiB:|under memory pressure|refused|host memory state|ksmd (stopped|scanning)' "$work/host.log" | tail -n 5 | sed -E 's/^[^ ]+ [a-z]+ ballonet-host: //; s/\[BallonetHost\] //' || true
    [ -t 1 ] || echo
    sleep 1
done

echo
echo "== summary after ${seconds}s"
"$bin/ballonetctl" status --socket "$work/state/control.sock"
echo
for vm in idle busy growing; do "$bin/ballonetctl" explain "$vm" --socket "$work/state/control.sock" | head -n 1; done
echo "decisions logged: $(grep -c 'target [0-9]* MiB:' "$work/host.log" || true) target changes, $(grep -c 'host memory state' "$work/host.log" || true) state changes, $(grep -c 'balloon target' "$work/host.log" || true) balloon requests,"\
     "$(grep -c 'under memory pressure' "$work/host.log" || true) guest pressure releases, $(grep -c 'refused guest message' "$work/host.log" || true) refused guest messages,"\
     "$(grep -c 'hypervisor swapping starts' "$work/host.log" || true) hypervisor swap episodes, $(grep -c '\] paused:' "$work/host.log" || true) pauses,"\
     "$(grep -c 'ksmd \(stopped\|scanning\)' "$work/host.log" || true) changes of course for ksmd"
grep -E 'hypervisor swapping (starts|ends)|\] (paused|resumed):|ksmd (stopped|scanning)' "$work/host.log" | sed 's/^[^ ]* [a-z]* ballonet-host: //' || true
