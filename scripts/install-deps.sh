#!/usr/bin/env bash
# Installs what building and testing Ballonet needs on a fresh Debian 12 machine, as root.
# Idempotent: installs only what is missing, and runs `apt-get update` only if something is.
set -euo pipefail

# What the Swift toolchain needs to compile and link on Debian (its documented dependencies), plus make.
packages=(
  binutils git make pkg-config
  libc6-dev libgcc-12-dev libstdc++-12-dev libcurl4-openssl-dev libxml2-dev zlib1g-dev libsqlite3-0 libedit2
  tzdata
  # Guest test image and TCG guests (packaging/guest-image): QEMU; cpio, gzip, xz and zstd to pack the
  # initramfs and unpack kernel modules; kmod's depmod for the kernel's modules.dep; gcc for the static
  # workload tool. The kernel and busybox-static are fetched with apt-get download, not installed.
  qemu-system-x86 cpio gzip xz-utils zstd kmod gcc
  # libvirt: the C library and headers ballonet-host links (libvirt-dev), and the daemon with its QEMU
  # driver and virsh, which the libvirt integration tests start themselves (no service is started here).
  libvirt-dev libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  # make deb and make check-packaging: Debian packaging, its checks, and the Debian guest it is installed in.
  dpkg-dev debhelper lintian debootstrap
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages (${missing[*]}); run as root or install them first" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v swift >/dev/null 2>&1 && [[ ! -x /opt/swift/usr/bin/swift ]]; then
  echo "install-deps: no Swift toolchain: expected 'swift' on PATH or at /opt/swift/usr/bin (Swift 6.1 or later)" >&2
  exit 1
fi
echo "install-deps: all present"
