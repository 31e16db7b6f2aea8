#!/usr/bin/env bash
# `make deb`: builds the ballonet-host and ballonet-guest packages with dpkg-buildpackage from a copy of the
# tracked source tree (packaging/debian becomes debian/), then runs lintian over them.
# Output: .build-deb/*.deb, and the lintian report in .build-deb/lintian.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
out=$root/.build-deb
tree=$out/ballonet-$version
rm -rf "$tree"
mkdir -p "$tree"
# The tracked files as they are in the working tree (uncommitted edits included, build products not).
git ls-files -z | xargs -0 cp --parents -t "$tree"
cp -r packaging/debian "$tree/debian"
# Swift's package cache and module caches under a home of its own: debhelper points HOME elsewhere anyway.
export SWIFT=${SWIFT:-$(command -v swift || echo /opt/swift/usr/bin/swift)}
echo "build-deb: dpkg-buildpackage in $tree (log: $out/build.log)"
if ! (cd "$tree" && dpkg-buildpackage -us -uc -b > "$out/build.log" 2>&1); then
    tail -n 60 "$out/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed; see $out/build.log" >&2
    exit 1
fi
changes=$out/ballonet_${version}_amd64.changes
ls -l "$out"/*.deb
echo "build-deb: lintian"
lintian --info --display-info "$changes" > "$out/lintian.txt" 2>&1 || true
cat "$out/lintian.txt"
if grep -q '^E: ' "$out/lintian.txt"; then
    echo "build-deb: lintian reports errors" >&2
    exit 1
fi
echo "build-deb: $(grep -c '^W: ' "$out/lintian.txt" || true) lintian warnings, no errors"
