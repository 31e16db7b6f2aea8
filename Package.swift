// swift-tools-version: 6.1
//
// Ballonet: memory overcommit for QEMU/KVM hosts after VMware ESX Server (Waldspurger, OSDI 2002).
// The layout follows the architecture (see README.md):
//   Shared/      the wire format both agents speak (BallonetWire) and the one syscall layer (BallonetLinux)
//   GuestAgent/  ballonet-guest, installed in guest images
//   HostAgent/   ballonet-host and ballonetctl, run beside QEMU
//   Tests/       one test target per module, named after it
import PackageDescription

let package = Package(
    name: "Ballonet",
    products: [
        .executable(name: "ballonet-guest", targets: ["ballonet-guest"]),
        .executable(name: "ballonet-host", targets: ["ballonet-host"]),
        .executable(name: "ballonetctl", targets: ["ballonetctl"]),
        .executable(name: "ballonet-bench-wire", targets: ["ballonet-bench-wire"]),
        .executable(name: "ballonet-bench-guest", targets: ["ballonet-bench-guest"]),
        .executable(name: "ballonet-bench-inflate", targets: ["ballonet-bench-inflate"]),
        .executable(name: "ballonet-bench-sharing", targets: ["ballonet-bench-sharing"]),
        .executable(name: "ballonet-bench-policy", targets: ["ballonet-bench-policy"]),
        .executable(name: "ballonet-bench-sampling", targets: ["ballonet-bench-sampling"]),
        .library(name: "BallonetWire", targets: ["BallonetWire"]),
        .library(name: "BallonetLinux", targets: ["BallonetLinux"]),
        .library(name: "BallonetPolicy", targets: ["BallonetPolicy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // The host daemon only: the guest agent stays a plain poll loop to keep its memory small.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // The wire format: value types, encoder, incremental decoder. No I/O, no Foundation.
        .target(name: "BallonetWire", path: "Shared/BallonetWire"),
        // The single choke point for syscalls, and parsers for the /proc files both agents read.
        .target(name: "BallonetLinux", dependencies: ["CBallonetLinux"], path: "Shared/BallonetLinux"),
        // Wrappers for the glibc calls Swift's Glibc module cannot reach (_GNU_SOURCE-only or variadic).
        .target(name: "CBallonetLinux", path: "Shared/CBallonetLinux"),
        // The TOML subset both agents' configuration files are written in, parsed without a dependency.
        .target(name: "BallonetConfig", path: "Shared/BallonetConfig"),

        .target(
            name: "BallonetGuest",
            dependencies: [
                // No swift-argument-parser: it links FoundationEssentials, 3 MiB of the agent's 8 MiB budget
                // (GuestCommand parses its own command line).
                "BallonetWire", "BallonetLinux", "BallonetConfig",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "GuestAgent/BallonetGuest"
        ),
        .executableTarget(name: "ballonet-guest", dependencies: ["BallonetGuest"], path: "GuestAgent/ballonet-guest"),

        // The policy: shares, idle memory tax, working-set estimates, free-memory states, admission. Pure
        // values in, decisions out; no dependencies, no clock, no syscalls (the simulator runs it too).
        // Rounding compiles to libm calls, which a binary linking no Foundation or Glibc would lack.
        .target(name: "BallonetPolicy", path: "HostAgent/BallonetPolicy", linkerSettings: [.linkedLibrary("m")]),

        // libvirt's C API (libvirt and libvirt-qemu), for domains libvirt runs. Only Libvirt/Libvirt.swift calls it.
        .systemLibrary(name: "CLibvirt", path: "HostAgent/CLibvirt", pkgConfig: "libvirt-qemu", providers: [.apt(["libvirt-dev"])]),

        .target(
            name: "BallonetHost",
            dependencies: [
                "BallonetWire", "BallonetLinux", "BallonetConfig", "BallonetPolicy", "CLibvirt",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "HostAgent/BallonetHost"
        ),
        .executableTarget(name: "ballonet-host", dependencies: [
            "BallonetHost", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "HostAgent/ballonet-host"),
        .executableTarget(name: "ballonetctl", dependencies: ["BallonetHost"], path: "HostAgent/ballonetctl"),

        // `make bench-wire`: encode/decode throughput and bytes on the wire (docs/BENCHMARKS.md).
        .executableTarget(name: "ballonet-bench-wire", dependencies: ["BallonetWire"], path: "Benchmarks/WireBench"),
        // `make bench-guest`: the agent's balloon against the kernel's virtio-balloon in one TCG guest.
        .executableTarget(name: "ballonet-bench-guest", dependencies: ["BallonetGuest", "BallonetTestSupport"],
                          path: "Benchmarks/GuestBench"),
        // `make bench-inflate`: Ballonet (guest and host agents) against virtio-balloon, in one TCG guest.
        .executableTarget(name: "ballonet-bench-inflate", dependencies: ["BallonetHost", "BallonetWire", "BallonetTestSupport"],
                          path: "Benchmarks/InflateBench"),
        // `make bench-sharing`: Ballonet's KSM controller against MoM's rules and the kernel's advisor, in TCG guests.
        .executableTarget(name: "ballonet-bench-sharing", dependencies: ["BallonetHost", "BallonetLinux", "BallonetTestSupport"],
                          path: "Benchmarks/SharingBench"),

        // `make bench-policy`: one policy round for 10 to 10,000 VMs.
        .executableTarget(name: "ballonet-bench-policy", dependencies: ["BallonetPolicy", "BallonetTestSupport"], path: "Benchmarks/PolicyBench"),
        // `make bench-sampling`: one host sampling round per GiB, and the swap-out rate of each swap mechanism.
        .executableTarget(name: "ballonet-bench-sampling", dependencies: ["BallonetHost", "BallonetLinux", "BallonetTestSupport"],
                          path: "Benchmarks/SamplingBench"),

        .testTarget(name: "BallonetWireTests", dependencies: ["BallonetWire"], path: "Tests/BallonetWireTests"),
        .testTarget(name: "BallonetLinuxTests", dependencies: ["BallonetLinux"], path: "Tests/BallonetLinuxTests",
                    exclude: ["Captures"]),
        .testTarget(name: "BallonetGuestTests", dependencies: ["BallonetGuest", "BallonetConfig", "BallonetTestSupport"], path: "Tests/BallonetGuestTests",
                    exclude: ["Captures"]),
        .testTarget(name: "BallonetPolicyTests", dependencies: ["BallonetPolicy", "BallonetTestSupport"], path: "Tests/BallonetPolicyTests"),
        .testTarget(name: "BallonetHostTests", dependencies: ["BallonetHost", "BallonetTestSupport", "BallonetWire", "BallonetConfig", "BallonetLinux",
                                                        "BallonetPolicy", .product(name: "Logging", package: "swift-log")], path: "Tests/BallonetHostTests"),
        // What the tests and benchmarks share: the package's built executables run as a user would, TCG guests
        // booted from the guest test image, and a host peer that speaks the wire protocol.
        .target(name: "BallonetTestSupport", dependencies: ["BallonetWire", "BallonetLinux"], path: "Tests/BallonetTestSupport"),
    ],
    swiftLanguageModes: [.v6]
)
