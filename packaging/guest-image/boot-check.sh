#!/usr/bin/env bash
# Smoke check of the guest test image: builds it for an agent binary (cached), boots a 512 MiB TCG
# guest the way Tests/BallonetTestSupport/TCGGuest.swift does, waits for BALLONET-GUEST-READY, runs
# `ballonet-guest --version`, `ls -l /dev/virtio-ports/` and `ballonet-workload pattern 64 3` in it,
# prints them and the boot time, and stops the guest. Exits 0 only if all of that worked.
#
#   boot-check.sh --agent PATH/TO/ballonet-guest [--out DIR] [--memory MIB] [--timeout SECONDS]
#
# Build the agent with scripts/build-guest-agent.sh (one static executable; the image copies in whatever
# shared libraries a dynamically linked agent needs, but never the Swift runtime). The console is a pair of FIFOs here (QEMU's `pipe` chardev), which bash can talk to
# without socat; TCGGuest uses a UNIX socket instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
agent=""
out=""
memory_mib=512
timeout_seconds=180

usage() { sed -n 's/^#   \(boot-check.sh .*\)/usage: \1/p' "${BASH_SOURCE[0]}" >&2; exit 2; }
while (($#)); do
    case "$1" in
        --agent) agent="${2:?}"; shift 2 ;;
        --out) out="${2:?}"; shift 2 ;;
        --memory) memory_mib="${2:?}"; shift 2 ;;
        --timeout) timeout_seconds="${2:?}"; shift 2 ;;
        *) usage ;;
    esac
done
[[ -n "$agent" ]] || usage
command -v qemu-system-x86_64 >/dev/null || { echo "boot-check: no qemu-system-x86_64: run scripts/install-deps.sh" >&2; exit 1; }

build_arguments=(--agent "$agent")
[[ -n "$out" ]] && build_arguments+=(--out "$out")
build_output=$(bash "$here/build-initramfs.sh" "${build_arguments[@]}") || { echo "$build_output"; exit 1; }
echo "$build_output"
image=$(sed -n 's/^build-initramfs: \(up to date\|built\): \([^ :]*\).*/\2/p' <<< "$build_output" | head -1)
[[ -f "$image/vmlinuz" && -f "$image/initramfs.cpio.gz" ]] || { echo "boot-check: cannot find the image the build made" >&2; exit 1; }

work=$(mktemp -d /tmp/ballonet-boot-check.XXXXXX)
qemu_pid=""
reader_pid=""
status=1
cleanup() {
    if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    [[ -n "$qemu_pid" ]] && { wait "$qemu_pid" 2>/dev/null || true; }
    [[ -n "$reader_pid" ]] && { kill "$reader_pid" 2>/dev/null || true; wait "$reader_pid" 2>/dev/null || true; }
    if ((status == 0)); then
        rm -rf "$work"
    else
        echo "boot-check: logs kept in $work (console.log, qemu.log)" >&2
    fi
}
trap cleanup EXIT

# Our ends of the console FIFOs are opened read-write first, so that neither we nor QEMU block opening them.
mkfifo "$work/console.in" "$work/console.out"
exec 3<>"$work/console.out" 4<>"$work/console.in"
cat <&3 > "$work/console.log" &
reader_pid=$!

started=$(date +%s.%N)
qemu-system-x86_64 -name boot-check -accel tcg \
    -machine pc,memory-backend=ram0 \
    -object "memory-backend-memfd,id=ram0,size=${memory_mib}M,share=on" -m "${memory_mib}M" -smp 1 \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$image/vmlinuz" -initrd "$image/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 ballonet.hostname=boot-check" \
    -chardev "pipe,id=console0,path=$work/console" -serial chardev:console0 \
    -chardev "socket,id=qmp0,path=$work/qmp.sock,server=on,wait=off" -mon chardev=qmp0,mode=control \
    -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=ballonet0,path=$work/ballonet.sock,server=on,wait=off" \
    -device virtserialport,bus=vser0.0,chardev=ballonet0,name=org.ballonet.0 \
    -device virtio-rng-pci \
    </dev/null >"$work/qemu.log" 2>&1 &
qemu_pid=$!

# The console so far without carriage returns (in a file: a pipe into grep -q or awk that stops early
# would fail with SIGPIPE under pipefail).
console_text() { tr -d '\r' < "$work/console.log" > "$work/console.txt"; echo "$work/console.txt"; }
fail() {
    echo "boot-check: FAILED: $*" >&2
    echo "--- console (last 40 lines) ---" >&2
    tail -n 40 "$(console_text)" >&2
    echo "--- qemu.log ---" >&2
    cat "$work/qemu.log" >&2
    exit 1
}

# Waits until the console has a line matching the extended regex $1, for at most $2 seconds.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -qE "$1" "$(console_text)"; do
        kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited while waiting for '$1'"
        ((SECONDS < deadline)) || fail "no '$1' on the console within $2 s"
        sleep 0.2
    done
}

# Types a command into the guest's console shell; prints its output and returns its exit status.
# The quotes split the markers in the typed (and echoed) text so that only the printed lines match.
command_number=0
run_in_guest() {
    command_number=$((command_number + 1))
    local id="$command_number-$RANDOM" text=$1
    printf '%s\n' "echo BALLONET-BEG''IN-$id; $text; echo \"BALLONET-E\"\"ND-$id status=\$?\"" >&4
    wait_for "BALLONET-END-$id status=[0-9]+" "$2"
    awk -v begin="BALLONET-BEGIN-$id" -v end="BALLONET-END-$id status=" '
        $0 == begin { inside = 1; next }
        inside && index($0, end) { before = substr($0, 1, index($0, end) - 1); if (before != "") print before
                                   exit substr($0, index($0, end) + length(end)) + 0 }
        inside { print }' "$(console_text)"
}

wait_for '^BALLONET-GUEST-READY$' "$timeout_seconds"
boot_seconds=$(awk -v now="$(date +%s.%N)" -v start="$started" 'BEGIN { printf "%.1f", now - start }')
echo "boot-check: guest ready after $boot_seconds s (QEMU start to BALLONET-GUEST-READY); $(grep -m1 'ballonet-init: booted in' "$(console_text)")"

problems=()
expected_version=$("$agent" --version 2>&1 || true)

echo "--- ballonet-guest --version"
version_output=$(run_in_guest "ballonet-guest --version" 60) && version_status=0 || version_status=$?
echo "$version_output"
[[ $version_status -eq 0 && "$version_output" == "$expected_version" ]] \
    || problems+=("ballonet-guest --version gave '$version_output' (status $version_status), expected '$expected_version'")

echo "--- ls -l /dev/virtio-ports/"
ports_output=$(run_in_guest "ls -l /dev/virtio-ports/" 30) && ports_status=0 || ports_status=$?
echo "$ports_output"
[[ $ports_status -eq 0 && "$ports_output" == *"org.ballonet.0 -> /dev/vport"* ]] \
    || problems+=("/dev/virtio-ports/org.ballonet.0 missing (status $ports_status)")

echo "--- ballonet-workload pattern 64 3"
pattern_output=$(run_in_guest "ballonet-workload pattern 64 3" 120) && pattern_status=0 || pattern_status=$?
echo "$pattern_output"
[[ $pattern_status -eq 0 && "$pattern_output" == *"pattern ok"* ]] \
    || problems+=("ballonet-workload pattern 64 3 did not print 'pattern ok' (status $pattern_status)")

echo "--- image"
grep -E '^(kernel-package|output|initramfs-unpacked-bytes):' "$image/manifest.txt"

if ((${#problems[@]})); then
    for problem in "${problems[@]}"; do echo "boot-check: FAILED: $problem" >&2; done
    exit 1
fi
status=0
echo "boot-check: passed (boot $boot_seconds s)"
