#!/usr/bin/env bash
# `make check-packaging`: installs, upgrades and purges the ballonet-host and ballonet-guest packages on this
# machine (as root), and checks that each step leaves what it should and nothing else: the commands run,
# the configuration is in place as conffiles, the man pages are there; after purge no file of the
# packages and no ballonet process is left.
#
# Between install and upgrade, PackagedGuestInSystemdTCGTests boots a Debian guest with systemd as init and
# the ballonet-guest package installed, which the installed ballonet-host inflates and deflates, and
# upgrades ballonet-guest inside it (the balloon is handed over). On this machine systemd is not PID 1, so
# the host's units are enabled but not started here; the guest's run under systemd in that test.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.build-deb
fail() { echo "check-packaging: FAIL: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "needs root (it installs packages)"
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
host_deb=$out/ballonet-host_${version}_amd64.deb
guest_deb=$out/ballonet-guest_${version}_amd64.deb
[[ -f $host_deb && -f $guest_deb ]] || fail "no packages in $out: run make deb"
if dpkg-query -W ballonet-host ballonet-guest >/dev/null 2>&1; then
    fail "ballonet packages are installed on this machine already; this check installs and purges them itself"
fi
export DEBIAN_FRONTEND=noninteractive

# The upgrade: the same build repacked as a later version, which runs every maintainer script an upgrade runs.
for package in ballonet-host ballonet-guest; do
    rm -rf "$out/repack"
    dpkg-deb -R "$out/${package}_${version}_amd64.deb" "$out/repack"
    sed -i "s/^Version: .*/Version: $version+upgradetest/" "$out/repack/DEBIAN/control"
    dpkg-deb -b --root-owner-group "$out/repack" "$out/${package}_${version}+upgradetest_amd64.deb" >/dev/null
done
rm -rf "$out/repack"

echo "== install"
# Whatever happens from here, the machine is left without the packages.
trap 'apt-get purge -y -qq ballonet-host ballonet-guest > /dev/null 2>&1 || true' EXIT
apt-get install -y -qq "./$host_deb" "./$guest_deb" > "$out/install.log" 2>&1 || { cat "$out/install.log"; fail "install"; }
[[ $(ballonet-host --version) == "$version" ]] || fail "ballonet-host --version is not $version"
[[ $(ballonetctl --version) == "$version" ]] || fail "ballonetctl --version"
[[ $(ballonet-guest --version) == *"$version"* ]] || fail "ballonet-guest --version"
for conffile in /etc/ballonet/host.toml /etc/ballonet/guest.toml; do
    dpkg-query --showformat='${Conffiles}\n' -W ballonet-host ballonet-guest | grep -q " $conffile " || fail "$conffile is not a conffile"
done
for page in /usr/share/man/man8/ballonet-host.8.gz /usr/share/man/man1/ballonetctl.1.gz /usr/share/man/man8/ballonet-guest.8.gz; do
    [[ -f $page ]] || fail "missing man page $page"
done
if command -v man >/dev/null; then
    man -l /usr/share/man/man8/ballonet-host.8.gz 2>/dev/null | grep -q "admit" || fail "ballonet-host(8) does not describe admit"
fi
[[ -x /usr/share/ballonet/libvirt-qemu-hook ]] || fail "the libvirt hook is not installed"
[[ ! -e /etc/libvirt/hooks/qemu || $(readlink -f /etc/libvirt/hooks/qemu) != /usr/share/ballonet/libvirt-qemu-hook ]] \
    || fail "the libvirt hook must stay inactive until the operator enables it"
getent group ballonet >/dev/null || fail "no group ballonet"
for unit in ballonet-host.service ballonet-guest.service run-ballonet-balloon.mount; do
    [[ -f /lib/systemd/system/$unit ]] || fail "missing unit $unit"
done
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/ballonet-host.service /lib/systemd/system/ballonet-guest.service \
        /lib/systemd/system/run-ballonet-balloon.mount > "$out/verify.log" 2>&1 || { cat "$out/verify.log"; fail "systemd-analyze verify"; }
fi
echo "== a Debian guest with systemd and the ballonet-guest package, ballooned by the installed ballonet-host"
export PATH=$PATH:/opt/swift/usr/bin
BALLONET_PACKAGE_DIR=$PWD/$out swift test --filter PackagedGuestInSystemdTCGTests > "$out/guest-test.log" 2>&1 \
    || { grep -v '^\[' "$out/guest-test.log" | tail -n 80; fail "the packaged guest test"; }
grep -E 'systemd guest up|inflated:|deflated;|passed after|skipped' "$out/guest-test.log" | grep -v '^\[' || true
grep -q 'PackagedGuestInSystemdTCGTests.*passed\|thePackagedAgentsBalloonAGuestWithSystemd() passed' "$out/guest-test.log" \
    || fail "the packaged guest test did not run (see $out/guest-test.log)"

# An edited conffile survives the upgrade.
echo "# edited by check-packaging" >> /etc/ballonet/host.toml
files=$( { dpkg -L ballonet-host; dpkg -L ballonet-guest; } | sort -u)

echo "== upgrade (the same build repacked as $version+upgradetest)"
apt-get install -y -qq -o Dpkg::Options::=--force-confold "./$out/ballonet-host_${version}+upgradetest_amd64.deb" \
    "./$out/ballonet-guest_${version}+upgradetest_amd64.deb" > "$out/upgrade.log" 2>&1 || { cat "$out/upgrade.log"; fail "upgrade"; }
[[ $(dpkg-query -W -f='${Version}' ballonet-host) == "$version+upgradetest" ]] || fail "not upgraded"
grep -q "edited by check-packaging" /etc/ballonet/host.toml || fail "the upgrade lost an edited conffile"
[[ ! -e /run/ballonet/balloon.handover ]] || fail "the upgrade left the handover marker behind"

echo "== purge"
apt-get purge -y -qq ballonet-host ballonet-guest > "$out/purge.log" 2>&1 || { cat "$out/purge.log"; fail "purge"; }
left=()
while read -r path; do
    [[ -z $path || -d $path ]] && continue
    [[ -e $path ]] && left+=("$path")
done <<< "$files"
for path in /etc/ballonet /var/lib/ballonet /run/ballonet/balloon.handover /run/ballonet/control.sock; do
    [[ -e $path ]] && left+=("$path")
done
((${#left[@]} == 0)) || fail "purge left: ${left[*]}"
if pgrep -x ballonet-host >/dev/null || pgrep -x ballonet-guest >/dev/null; then fail "a ballonet process is still running"; fi
echo "check-packaging: install, upgrade and purge passed"
