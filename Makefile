# Ballonet. `make demo` (arrives with the host agent) and `make check` are the two commands that do
# everything on a fresh Debian machine as root; the other targets are their parts.

SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT ?= swift

FUZZ_BIN := .build/fuzz/decoder-fuzz
FUZZ_CORPUS := Fuzz/corpus/decoder
# Seconds of fuzzing inside `make check`: enough to replay the corpus and explore a little, short
# enough that CI stays well inside its time. `make fuzz` runs as long as FUZZ_SECONDS says (10 minutes).
CHECK_FUZZ_SECONDS ?= 30
FUZZ_SECONDS ?= 600

.PHONY: deb check-packaging check deps build test fuzz fuzz-build fuzz-smoke fuzz-seeds bench-wire bench-guest bench-inflate bench-sharing bench-policy bench-sampling sampling-trace simulate demo clean

## check: install what is missing, build everything, fuzz the decoder briefly, run all tests.
## The test runner's summary is the last thing it prints.
check: deps build fuzz-smoke test

deps:
	@bash scripts/install-deps.sh

build:
	$(SWIFT) build --build-tests

test:
	$(SWIFT) test

## fuzz: libFuzzer over the wire decoder (with AddressSanitizer), FUZZ_SECONDS long.
fuzz: fuzz-build
	@mkdir -p Fuzz/work Fuzz/findings
	$(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=Fuzz/findings/ \
	  Fuzz/work $(FUZZ_CORPUS)

fuzz-smoke: fuzz-build
	@mkdir -p Fuzz/work Fuzz/findings
	@echo "fuzz-smoke: fuzzing the wire decoder for $(CHECK_FUZZ_SECONDS) s (log: Fuzz/work/fuzz-smoke.log)"
	@if $(FUZZ_BIN) -max_total_time=$(CHECK_FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=Fuzz/findings/ \
	    Fuzz/work $(FUZZ_CORPUS) > Fuzz/work/fuzz-smoke.log 2>&1; then \
	  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' Fuzz/work/fuzz-smoke.log; \
	else \
	  tail -n 60 Fuzz/work/fuzz-smoke.log; echo "fuzz-smoke: the fuzzer found a failing input: see Fuzz/findings/" >&2; exit 1; \
	fi

# The target and the wire sources compile as one module (libFuzzer supplies main).
fuzz-build: $(FUZZ_BIN)
$(FUZZ_BIN): Fuzz/DecoderFuzz.swift $(wildcard Shared/BallonetWire/*.swift)
	@mkdir -p $(dir $@)
	swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name BallonetWireFuzz \
	  Fuzz/DecoderFuzz.swift $(wildcard Shared/BallonetWire/*.swift) -o $@ 2>&1 \
	  | { grep -v 'Cannot export local symbol' || true; }; exit $${PIPESTATUS[0]}

## fuzz-seeds: regenerate the committed seed corpus after a format change.
fuzz-seeds:
	BALLONET_WRITE_FUZZ_SEEDS=1 $(SWIFT) test --filter FuzzSeedTests

## deb: the ballonet-host and ballonet-guest Debian packages (dpkg-buildpackage, release builds with the
## static Swift stdlib), checked by lintian; in .build-deb/.
deb: deps
	@bash scripts/build-deb.sh

## check-packaging: install, upgrade and purge both packages on this machine (root); nothing may be left.
check-packaging: deb
	@bash scripts/check-packaging.sh

## bench-wire: encode/decode throughput and bytes on the wire; keeps a copy in docs/benchmarks/wire.md.
bench-wire:
	$(SWIFT) build -c release --product ballonet-bench-wire
	@mkdir -p docs/benchmarks
	.build/release/ballonet-bench-wire | tee docs/benchmarks/wire.md

## bench-guest: the agent's balloon against the kernel's virtio-balloon and the guest kernel's own pinning
## rate (a TCG guest per agent run), and what the agent costs; keeps its report in docs/benchmarks/guest.md,
## about 8 minutes. Needs root (installs QEMU via deps). BENCH_GUEST_AGENTS=2m or 4k runs one agent.
## bench-inflate: Ballonet (ballonet-guest + ballonet-host) against the kernel's virtio-balloon, 768 MiB of a
## 1 GiB TCG guest each, in one boot; report in docs/benchmarks/inflate.md.
bench-inflate: deps
	$(SWIFT) build --product ballonet-host
	$(SWIFT) build --product ballonet-bench-inflate
	@mkdir -p docs/benchmarks
	$$($(SWIFT) build --show-bin-path)/ballonet-bench-inflate | tee docs/benchmarks/inflate.md

## bench-sharing: Ballonet's KSM controller, MoM's fixed rules and the kernel's advisor on the same three TCG
## guests (MiB saved after 1, 2, 5 minutes; ksmd CPU per GiB saved), and balloon reclaim by pageout against KSM's
## zero page; about 20 minutes; report in docs/benchmarks/sharing.md. Needs root.
bench-sharing: deps
	$(SWIFT) build --product ballonet-host
	$(SWIFT) build --product ballonet-bench-sharing
	@mkdir -p docs/benchmarks
	$$($(SWIFT) build --show-bin-path)/ballonet-bench-sharing | tee docs/benchmarks/sharing.md

## bench-sampling: the cost of one host sampling round per GiB of guest RAM and the swap-out rate of the pageout
## and cgroup swappers, on a 1 GiB TCG guest; report in docs/benchmarks/sampling.md. Needs root.
bench-sampling: deps
	$(SWIFT) build -c release --product ballonet-bench-sampling
	@mkdir -p docs/benchmarks
	.build/release/ballonet-bench-sampling | tee docs/benchmarks/sampling.md

## sampling-trace: the host sampler's accuracy test (W = 64, 192, 64 MiB in a TCG guest), its per-period trace
## kept in docs/benchmarks/sampling-trace.md.
sampling-trace: deps
	BALLONET_TRACE_OUT=$(CURDIR)/docs/benchmarks/sampling-trace.md $(SWIFT) test --filter IdlePageSamplingInTCGGuestTests

## simulate: runs the policy simulator over every scenario in scenarios/ and writes its CSV and SVG plot to
## docs/policy/ (the SVGs are what docs/POLICY.md shows).
simulate:
	$(SWIFT) build --product ballonet-host
	@mkdir -p docs/policy
	@for scenario in scenarios/*.toml; do $$($(SWIFT) build --show-bin-path)/ballonet-host simulate $$scenario --output docs/policy || exit 1; echo; done

## bench-policy: the time of one policy round for 10 to 10,000 VMs (goal: under 10 ms for 10,000);
## keeps its report in docs/benchmarks/policy.md.
bench-policy:
	$(SWIFT) build -c release --product ballonet-bench-policy
	@mkdir -p docs/benchmarks
	.build/release/ballonet-bench-policy | tee docs/benchmarks/policy.md

bench-guest: deps
	$(SWIFT) build -c release --product ballonet-bench-guest
	@mkdir -p docs/benchmarks
	.build/release/ballonet-bench-guest | tee docs/benchmarks/guest.md

## demo: the main job: three small TCG guests under ballonet-host with a budget below their sum, a live
## table every second, a summary at the end; everything it starts is stopped (scripts/demo.sh).
demo:
	@bash scripts/demo.sh

clean:
	rm -rf .build Fuzz/work
