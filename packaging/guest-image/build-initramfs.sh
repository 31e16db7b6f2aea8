#!/usr/bin/env bash
# Builds the Ballonet guest test image: Debian 12's kernel and an initramfs with busybox, ballonet-guest
# (with the shared libraries it needs) and ballonet-workload. See README.md beside this file.
#
#   build-initramfs.sh --agent PATH/TO/ballonet-guest [--out DIR] [--cache DIR] [--force]
#                      [--no-strip] [--check-reproducible]
#
#   --out DIR        where vmlinuz, initramfs.cpio.gz and manifest.txt go (default: .build/guest-image
#                    in the package root)
#   --cache DIR      where the downloaded .deb files are kept (default: ~/.cache/ballonet/guest-image)
#   --force          build even if the manifest says the outputs are up to date
#   --no-strip       put the agent in the image as given (default: a stripped copy, 40 % smaller)
#   --check-reproducible
#                    build a second time from the same inputs and fail unless the bytes are identical
#
# Cached: the manifest records a hash of every input (this script, init, the workload's source, the
# agent and the libraries it loads, the kernel and busybox package versions, the compiler); when it
# matches and the outputs are intact, nothing is done. Reproducible: fixed mtimes (SOURCE_DATE_EPOCH),
# a sorted file list, `cpio --reproducible -H newc` with root ownership, `gzip -n`.
set -euo pipefail

original_arguments=("$@")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
package_root=$(cd "$here/../.." && pwd)
script="$here/$(basename "${BASH_SOURCE[0]}")"
init_source="$here/init"
workload_source="$here/workload/ballonet-workload.c"

agent=""
out="$package_root/.build/guest-image"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ballonet/guest-image"
force=0
strip_agent=1
check_reproducible=0
# Every file in the image gets this mtime; the value is an input like any other.
epoch="${SOURCE_DATE_EPOCH:-1704067200}"

say() { echo "build-initramfs: $*"; }
fail() { echo "build-initramfs: $*" >&2; exit 1; }
usage() { sed -n '/^#   build-initramfs.sh/,/^#                    build a second/p' "$script" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
    case "$1" in
        --agent) agent="${2:?--agent needs a path}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
        --force) force=1; shift ;;
        --no-strip) strip_agent=0; shift ;;
        --check-reproducible) check_reproducible=1; shift ;;
        -h|--help) usage ;;
        *) echo "build-initramfs: unknown argument: $1" >&2; usage ;;
    esac
done
[[ -n "$agent" ]] || usage
[[ -f "$agent" && -x "$agent" ]] || fail "agent binary not found or not executable: $agent"
agent=$(realpath "$agent")

for tool in apt-get apt-cache dpkg-deb dpkg-query depmod cpio gzip gcc ldd sha256sum strip flock xz zstd realpath; do
    command -v "$tool" >/dev/null 2>&1 || fail "missing tool '$tool': run scripts/install-deps.sh (as root)"
done
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || fail "missing static libc (libc6-dev): run scripts/install-deps.sh"

mkdir -p "$out" "$cache"
out=$(realpath "$out")
cache=$(realpath "$cache")
# One build at a time per output directory: a second caller waits, then finds the outputs up to date.
exec 9>"$out/.lock"
flock 9

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# --- What goes in: resolve versions without downloading anything -----------------------------------

# The package the metapackage depends on today (its ABI number rotates: 6.1.0-47, -50, -56, ...).
# (awk reads to the end rather than exit early: under pipefail, apt-cache's SIGPIPE would fail the pipe.)
resolve_kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !found { print $2; found = 1 }'; }
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && !found { print $2; found = 1 }'; }

kernel_package=$(resolve_kernel_package || true)
if [[ -z "$kernel_package" && $(id -u) -eq 0 ]]; then
    say "apt has no package lists yet: apt-get update"
    apt-get update -qq
    kernel_package=$(resolve_kernel_package || true)
fi
[[ -n "$kernel_package" ]] || fail "cannot resolve linux-image-amd64's kernel package (run apt-get update as root)"
kernel_version=$(candidate_version "$kernel_package" || true)
busybox_version=$(candidate_version busybox-static || true)
[[ -n "$kernel_version" && "$kernel_version" != "(none)" ]] || fail "no installable version of $kernel_package"
[[ -n "$busybox_version" && "$busybox_version" != "(none)" ]] || fail "no installable version of busybox-static"
kernel_release=${kernel_package#linux-image-}

# The agent's run-time libraries as the loader resolves them here: "path-it-asks-for real-file" lines.
runtime_libraries() {
    local line
    # ldd exits non-zero for a static binary; the case below tells that apart from a real failure.
    { ldd "$agent" 2>&1 || true; } | while read -r line; do
        case "$line" in
            *"not a dynamic executable"*|*"statically linked"*) ;;
            *"not found"*) fail "the agent needs a library that is not installed: $line" ;;
            linux-vdso.so*) ;;
            *" => "/*) line=${line#* => }; echo "${line%% (*} $(realpath "${line%% (*}")" ;;
            /*) echo "${line%% (*} $(realpath "${line%% (*}")" ;;
            *) fail "unexpected ldd output for the agent: $line" ;;
        esac
    done
}
libraries=$(runtime_libraries)

inputs=$(
    echo "script $(sha256 "$script")"
    echo "init $(sha256 "$init_source")"
    echo "workload-source $(sha256 "$workload_source")"
    echo "agent $(sha256 "$agent") strip=$strip_agent"
    while read -r wanted real; do
        [[ -n "$wanted" ]] && echo "runtime-library $wanted $(sha256 "$real")"
    done <<< "$libraries"
    echo "kernel-package $kernel_package $kernel_version"
    echo "busybox-static $busybox_version"
    echo "compiler gcc $(gcc -dumpfullversion) libc6-dev $(dpkg-query -W -f='${Version}' libc6-dev) binutils $(dpkg-query -W -f='${Version}' binutils)"
    echo "source-date-epoch $epoch"
)
inputs_hash=$(sha256sum <<< "$inputs" | cut -d' ' -f1)

manifest="$out/manifest.txt"
up_to_date() {
    [[ -f "$manifest" ]] && grep -qx "inputs-sha256: $inputs_hash" "$manifest" || return 1
    local name
    for name in vmlinuz initramfs.cpio.gz; do
        [[ -f "$out/$name" ]] && grep -qx "output: $name $(sha256 "$out/$name") .*" "$manifest" || return 1
    done
}
if ((force == 0 && check_reproducible == 0)) && up_to_date; then
    say "up to date: $out (inputs ${inputs_hash:0:12}, kernel $kernel_package $kernel_version)"
    exit 0
fi

# --- Fetch: apt-get download into the cache (apt checks the files against its signed lists) ---------

# Sets fetched_deb to the cached .deb of PACKAGE at VERSION, downloading it if it is not there. (Not
# run in $(...): it may re-execute the script.)
fetch_deb() {
    local package=$1 version=$2 file
    for file in "$cache/${package}"_*.deb; do
        [[ -f "$file" ]] || continue
        if [[ $(dpkg-deb -f "$file" Package) == "$package" && $(dpkg-deb -f "$file" Version) == "$version" ]]; then
            fetched_deb=$file
            return
        fi
        rm -f "$file" # another version: the cache keeps only what the image uses
    done
    local options=()
    # As root apt drops to the _apt user to download, which cannot write an arbitrary cache directory.
    [[ $(id -u) -eq 0 ]] && options=(-o APT::Sandbox::User=root)
    if ! (cd "$cache" && apt-get download -qq "${options[@]}" "$package=$version"); then
        # Stale package lists: the mirror keeps only current versions. Refresh them once and start over,
        # since the kernel the metapackage names may have changed too.
        if [[ $(id -u) -eq 0 && -z "${BALLONET_IMAGE_LISTS_REFRESHED:-}" ]]; then
            say "apt-get download $package=$version failed: apt-get update, then again"
            apt-get update -qq
            BALLONET_IMAGE_LISTS_REFRESHED=1 exec bash "$script" "${original_arguments[@]}"
        fi
        fail "apt-get download $package=$version failed (stale package lists? run apt-get update)"
    fi
    for file in "$cache/${package}"_*.deb; do
        [[ $(dpkg-deb -f "$file" Version) == "$version" ]] && { fetched_deb=$file; return; }
    done
    fail "apt-get download left no .deb for $package=$version in $cache"
}

say "kernel $kernel_package $kernel_version, busybox-static $busybox_version"
fetch_deb "$kernel_package" "$kernel_version"
kernel_deb=$fetched_deb
fetch_deb busybox-static "$busybox_version"
busybox_deb=$fetched_deb

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- Unpack the kernel and resolve the modules the guest needs ---------------------------------------

dpkg-deb -x "$kernel_deb" "$work/kernel"
kernel_config="$work/kernel/boot/config-$kernel_release"
[[ -f "$work/kernel/boot/vmlinuz-$kernel_release" && -f "$kernel_config" ]] || fail "$kernel_package has no vmlinuz/config for $kernel_release"
modules_base="$work/kernel"
[[ -d "$modules_base/lib/modules/$kernel_release" ]] || modules_base="$work/kernel/usr"
modules_dir="$modules_base/lib/modules/$kernel_release"
[[ -d "$modules_dir" ]] || fail "$kernel_package has no lib/modules/$kernel_release"
# Debian's package does not ship modules.dep (its postinst runs depmod); make it for the unpacked tree.
depmod -b "$modules_base" "$kernel_release"

# Built in (=y) needs nothing; a module (=m) goes in the image. virtio and virtio_ring come in through
# modules.dep if they are modules; the PCI transport is nobody's dependency, so it is asked for itself.
# virtio-rng: without it a TCG guest's getrandom() blocks for seconds after boot (no RDRAND in TCG's
# default CPU), and so does any Swift program that seeds a hash table then, ballonet-guest included.
config_value() { sed -n "s/^$1=\(.*\)/\1/p" "$kernel_config"; }
wanted_modules=()
config_report=()
for option_and_module in CONFIG_VIRTIO:virtio CONFIG_VIRTIO_PCI:virtio_pci CONFIG_VIRTIO_CONSOLE:virtio_console \
    CONFIG_VIRTIO_BALLOON:virtio_balloon CONFIG_HW_RANDOM:rng-core CONFIG_HW_RANDOM_VIRTIO:virtio-rng; do
    option=${option_and_module%%:*} module=${option_and_module#*:}
    value=$(config_value "$option")
    case "$value" in
        y) config_report+=("$option=y (built in)") ;;
        m) config_report+=("$option=m (module)"); wanted_modules+=("$module") ;;
        *) fail "$kernel_package lacks $option (='$value'): the guest image needs it" ;;
    esac
done

# Load order: each module after its dependencies. A modules.dep line lists all of a module's
# dependencies, transitively, in an order that is loaded from the last to the first.
load_order=()
add_to_load_order() {
    local entry=$1 present
    for present in "${load_order[@]}"; do [[ "$present" == "$entry" ]] && return; done
    load_order+=("$entry")
}
for module in "${wanted_modules[@]}"; do
    line=$(grep -m1 -E "(^|/)${module}\.ko(\.xz|\.zst|\.gz)?:" "$modules_dir/modules.dep") || fail "$module is not in $kernel_package's modules.dep"
    read -r -a dependencies <<< "${line#*:}"
    for ((i = ${#dependencies[@]} - 1; i >= 0; i--)); do add_to_load_order "${dependencies[i]}"; done
    add_to_load_order "${line%%:*}"
done

dpkg-deb -x "$busybox_deb" "$work/busybox"
busybox="$work/busybox/bin/busybox"
[[ -x "$busybox" ]] || fail "busybox-static has no bin/busybox"

# --- Stage and pack the image into DEST (called twice with --check-reproducible) ---------------------

build_image() {
    local dest=$1 root="$1/root" entry name wanted real applet
    mkdir -p "$dest"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,root,mnt,var,lib/modules}
    ln -s ../run "$root/var/run"

    # Modules, decompressed where the package compresses them: busybox insmod loads plain .ko files.
    : > "$root/lib/modules/load-order"
    for entry in "${load_order[@]}"; do
        name=${entry%.xz} name=${name%.zst} name=${name%.gz}
        mkdir -p "$(dirname "$root/lib/modules/$kernel_release/$name")"
        case "$entry" in
            *.xz) xz -dc "$modules_dir/$entry" ;;
            *.zst) zstd -qdc "$modules_dir/$entry" ;;
            *.gz) gzip -dc "$modules_dir/$entry" ;;
            *) cat "$modules_dir/$entry" ;;
        esac > "$root/lib/modules/$kernel_release/$name"
        echo "/lib/modules/$kernel_release/$name" >> "$root/lib/modules/load-order"
    done

    # busybox and a link for every applet (the shell in the image is for people and tests alike).
    cp "$busybox" "$root/bin/busybox"
    "$busybox" --list-full | while read -r applet; do
        [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done

    # The agent and what the loader needs to run it.
    cp "$agent" "$root/usr/bin/ballonet-guest"
    ((strip_agent)) && strip --strip-unneeded "$root/usr/bin/ballonet-guest"
    while read -r wanted real; do
        [[ -n "$wanted" ]] || continue
        mkdir -p "$root$(dirname "$wanted")"
        cp "$real" "$root$wanted"
    done <<< "$libraries"

    # The workload, compiled from a relative path so that no build directory ends up in the binary.
    (cd "$(dirname "$workload_source")" && gcc -O2 -static -s -Wall -Wextra \
        -o "$root/usr/bin/ballonet-workload" "$(basename "$workload_source")")

    cp "$init_source" "$root/init"
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    printf 'export PS1='"'"'\\h:\\w# '"'"'\n' > "$root/etc/profile"
    printf 'inputs-sha256: %s\nkernel: %s %s\n' "$inputs_hash" "$kernel_package" "$kernel_version" > "$root/etc/ballonet-image"

    # Normalise everything the cpio archive records: modes, mtimes, owners (cpio -R), order, inodes.
    find "$root" -type d -exec chmod 0755 {} +
    find "$root" -type f -perm /0111 -exec chmod 0755 {} +
    find "$root" -type f ! -perm /0111 -exec chmod 0644 {} +
    chmod 1777 "$root/tmp"
    find "$root" -exec touch -h -d "@$epoch" {} +
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --quiet --null --create --format=newc --reproducible --owner=0:0) \
        | gzip -9 -n > "$dest/initramfs.cpio.gz"
    cp "$work/kernel/boot/vmlinuz-$kernel_release" "$dest/vmlinuz"
}

say "building into $out"
build_image "$work/first"
if ((check_reproducible)); then
    build_image "$work/second"
    for name in vmlinuz initramfs.cpio.gz; do
        cmp -s "$work/first/$name" "$work/second/$name" || fail "not reproducible: two builds gave different $name"
    done
    say "reproducible: two builds gave identical bytes ($(sha256 "$work/first/initramfs.cpio.gz"))"
fi

# --- Publish: outputs first, the manifest last, each by rename -----------------------------------------

{
    echo "# Ballonet guest test image, written by packaging/guest-image/build-initramfs.sh"
    echo "inputs-sha256: $inputs_hash"
    echo "kernel-package: $kernel_package $kernel_version (through linux-image-amd64)"
    echo "kernel-release: $kernel_release"
    echo "busybox-static: $busybox_version"
    echo "source-date-epoch: $epoch"
    sed 's/^/input: /' <<< "$inputs"
    echo "deb: $(basename "$kernel_deb") $(sha256 "$kernel_deb")"
    echo "deb: $(basename "$busybox_deb") $(sha256 "$busybox_deb")"
    for entry in "${config_report[@]}"; do echo "config: $entry"; done
    for entry in "${load_order[@]}"; do echo "module: $entry"; done
    for name in vmlinuz initramfs.cpio.gz; do
        echo "output: $name $(sha256 "$work/first/$name") $(stat -c %s "$work/first/$name")"
    done
    echo "initramfs-unpacked-bytes: $(du -sb "$work/first/root" | cut -f1)"
} > "$work/manifest.txt"

rm -f "$manifest"
mv -f "$work/first/vmlinuz" "$out/vmlinuz"
mv -f "$work/first/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
mv -f "$work/manifest.txt" "$manifest"
say "built $out: vmlinuz $(stat -c %s "$out/vmlinuz") bytes, initramfs.cpio.gz $(stat -c %s "$out/initramfs.cpio.gz") bytes"
