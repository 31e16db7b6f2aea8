#!/bin/bash
# Builds ballonet-guest as guest images and the ballonet-guest package carry it, and prints its path:
#
#   scripts/build-guest-agent.sh [SCRATCH_PATH]      (default: .build-guest)
#
# One static executable (-static-executable): the Swift runtime, libstdc++ and glibc are linked in, so
# the agent runs in any x86-64 Linux guest whatever its libraries, an initramfs needs no shared library
# for it, and it maps only the library code it uses. Optimized for size (-Osize): its time goes to the
# guest kernel faulting in and zeroing pages, not to its own code.
#
# Measured idle in a 512 MiB TCG guest booted from the test image (2026-11-24, see docs/BENCHMARKS.md):
# VmRSS 8.1 MB as a PIE linking glibc, libstdc++ and libm dynamically; 5.4 MB like this. The binary is
# not a PIE: Swift's runtime crashed at start as a static PIE here.
#
# Without the implicit import of _StringProcessing: its regex engine is 1.1 MB of code, which one call
# of its collection algorithms (split(separator:) with a String separator, contains(_:) with a String)
# anywhere in the agent's modules links in. Such a call then fails to compile here: write it with the
# standard library (split on a Character, compare the parts).
#
# SWIFT names the toolchain's swift (default: swift on PATH, else /opt/swift/usr/bin/swift). The
# build's own output goes to standard error; standard output is the binary's path alone.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${1:-.build-guest}
swift=${SWIFT:-$(command -v swift || echo /opt/swift/usr/bin/swift)}
"$swift" build -c release --static-swift-stdlib -Xswiftc -static-executable -Xswiftc -Osize \
    -Xswiftc -Xfrontend -Xswiftc -disable-implicit-string-processing-module-import \
    --product ballonet-guest --scratch-path "$scratch" >&2
echo "$scratch/release/ballonet-guest"
