/// ESX's min-funding revocation with an idle memory tax, solved in one pass instead of page by page.
///
/// ESX reclaims memory one page at a time from the VM with the lowest adjusted shares-per-page ratio
/// ρ = S / (P·(f + k·(1 − f))), k = 1/(1−τ), until what it needs is free. Done to the end, that leaves every
/// VM that is not held at its min or its ceiling at the same ρ. With A = f·P the VM's active bytes,
/// P·(f + k(1 − f)) = A + k·(P − A) for P ≥ A (and P when P < A: all of it is active), so ρ is the same for
/// all when each VM gets P(λ) = C⁻¹(S·λ), where C(P) = A + k(P − A) is the allocation's cost in shares and λ
/// is one number for all VMs. Each P(λ) is clamped to [min, ceiling] and grows with λ; the λ at which the
/// clamped P(λ) add up to the memory there is gives the allocation. It is found by bisection: about a
/// hundred passes over the VMs whatever their number (10,000 VMs in a few milliseconds, `make bench-policy`).
public enum ShareAllocation {
    /// One VM's claim, in 4 KiB pages (as Doubles: exact up to 2^53 pages).
    public struct Claim: Equatable, Sendable {
        public var shares: Double
        /// The least it may get (its min).
        public var floor: Double
        /// The most it should get (its max, or what trimming says it needs).
        public var ceiling: Double
        /// Its active pages (the working-set estimate); pages above this are idle and taxed.
        public var active: Double

        public init(shares: Double, floor: Double, ceiling: Double, active: Double) {
            self.shares = shares
            self.floor = floor
            self.ceiling = max(floor, ceiling)
            self.active = active
        }

        /// P(λ): the allocation at which this VM's ρ is 1/λ, clamped.
        func pages(at lambda: Double, idleCost k: Double) -> Double {
            let cost = shares * lambda
            let raw = cost <= active ? cost : active + (cost - active) / k
            return min(max(raw, floor), ceiling)
        }

        /// The λ at which P(λ) reaches `pages` unclamped (C(pages)/S).
        func lambda(reaching pages: Double, idleCost k: Double) -> Double {
            let cost = pages <= active ? pages : active + (pages - active) * k
            return shares > 0 ? cost / shares : .infinity
        }
    }

    /// Pages for each claim, summing to at most `capacity` when the floors fit in it (admission control
    /// sees to that; when they do not, each gets its floor, and the sum is the floors'). Whole pages,
    /// rounded down: what rounding loses (under a page per VM) stays with the host.
    public static func allocate(_ claims: [Claim], capacity: Double, idleCost k: Double) -> [Double] {
        let ceilings = claims.reduce(0.0) { $0 + $1.ceiling }
        if ceilings <= capacity { return claims.map { $0.ceiling.rounded(.down) } }
        let floors = claims.reduce(0.0) { $0 + $1.floor }
        if floors >= capacity { return claims.map { $0.floor.rounded(.down) } }
        func total(_ lambda: Double) -> Double {
            var sum = 0.0
            for claim in claims { sum += claim.pages(at: lambda, idleCost: k) }
            return sum
        }
        // total(0) = floors < capacity; at the largest λ any claim needs to reach its ceiling, total =
        // ceilings > capacity. Halve until the two ends are neighbouring doubles (or 200 rounds).
        var below = 0.0
        var above = claims.reduce(0.0) { max($0, $1.lambda(reaching: $1.ceiling, idleCost: k)) }
        if !above.isFinite { above = .greatestFiniteMagnitude }
        var rounds = 0
        while rounds < 200 {
            let middle = below + (above - below) / 2
            if middle <= below || middle >= above { break }
            if total(middle) <= capacity { below = middle } else { above = middle }
            rounds += 1
        }
        return claims.map { $0.pages(at: below, idleCost: k).rounded(.down) }
    }

    /// ρ of a VM holding `pages`, in shares per page: what the explanation shows.
    public static func sharesPerPage(shares: Double, pages: Double, active: Double, idleCost k: Double) -> Double {
        // An empty allocation: ρ of its first page (finite, so explanations encode as JSON).
        guard pages > 0 else { return shares }
        let activePages = min(active, pages)
        return shares / (activePages + k * (pages - activePages))
    }
}
