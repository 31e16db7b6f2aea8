#!/usr/bin/env bash
# Builds the initramfs of a minimal Debian 12 guest that boots with systemd as init, for the package
# install test (make check-packaging): debootstrap's minbase with systemd and udev, the virtio modules of the
# guest test image's kernel, and the ballonet-guest package installed the Debian way (dpkg -i in a
# chroot, so its maintainer scripts enable the units). The upgrade package goes in /root for the test to
# install inside the running guest.
#
#   build-systemd-guest.sh GUEST_IMAGE_DIR GUEST_DEB UPGRADE_DEB OUT_DIR
#
# GUEST_IMAGE_DIR is packaging/guest-image's output (vmlinuz, initramfs.cpio.gz: the modules come from
# there). The debootstrap tree is cached in OUT_DIR/debootstrap.tar (about 40 s to make, 90 MB).
# Output: OUT_DIR/systemd-guest.cpio.gz, whose /init is systemd.
set -euo pipefail
image=$(realpath "${1:?guest image directory}")
guest_deb=$(realpath "${2:?ballonet-guest .deb}")
upgrade_deb=$(realpath "${3:?upgrade .deb}")
out=$(realpath -m "${4:?output directory}")
say() { echo "build-systemd-guest: $*" >&2; }
mkdir -p "$out"
cache=$out/debootstrap.tar
root=$out/root
rm -rf "$root"
mkdir -p "$root"
if [[ ! -f $cache ]]; then
    say "debootstrap bookworm (minbase, systemd, udev) into $root"
    debootstrap --variant=minbase --include=systemd-sysv,udev,kmod bookworm "$root" http://deb.debian.org/debian > "$out/debootstrap.log" 2>&1 \
        || { tail -n 30 "$out/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
else
    tar -C "$root" -xf "$cache"
fi

# The virtio modules of the test image's kernel; udev loads them by modalias at boot.
modules=$out/modules
rm -rf "$modules" && mkdir -p "$modules"
(cd "$modules" && zcat "$image/initramfs.cpio.gz" | cpio -idm --quiet 'lib/modules/*')
release=$(ls "$modules/lib/modules" | grep -v load-order | head -n1)
[[ -n $release ]] || { say "no kernel modules in $image/initramfs.cpio.gz"; exit 1; }
mkdir -p "$root/usr/lib/modules"
cp -a "$modules/lib/modules/$release" "$root/usr/lib/modules/"
depmod -b "$root" "$release" 2>/dev/null

say "installing $(basename "$guest_deb") with dpkg in the guest root"
cp "$guest_deb" "$root/tmp/"
chroot "$root" dpkg -i "/tmp/$(basename "$guest_deb")" > "$out/dpkg.log" 2>&1 || { cat "$out/dpkg.log" >&2; exit 1; }
rm "$root/tmp/$(basename "$guest_deb")"
cp "$upgrade_deb" "$root/root/"

# Boot straight into systemd from the initramfs; root logs in on the serial console by itself (the test
# types commands there).
ln -sf /lib/systemd/systemd "$root/init"
echo ballonet-pkg > "$root/etc/hostname"
chroot "$root" passwd -d root > /dev/null
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %%I dumb\n' \
    > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
# A quiet console: no colours, no bracketed paste, for a test that reads what it types.
printf 'export TERM=dumb\nbind "set enable-bracketed-paste off" 2>/dev/null\n' >> "$root/root/.bashrc"
(cd "$root" && find . -xdev | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > "$out/systemd-guest.cpio.gz.tmp")
mv "$out/systemd-guest.cpio.gz.tmp" "$out/systemd-guest.cpio.gz"
rm -rf "$root" "$modules"
say "$out/systemd-guest.cpio.gz ($(du -h "$out/systemd-guest.cpio.gz" | cut -f1))"
