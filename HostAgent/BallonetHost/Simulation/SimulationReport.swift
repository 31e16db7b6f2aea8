import BallonetPolicy

/// What `ballonet-host simulate` makes of a run: a CSV of every step, an SVG plot, and a short summary.
/// Pure: strings out, no files written here.
public struct SimulationReport: Sendable {
    public let scenario: PolicySimulation.Scenario
    public let rows: [PolicySimulation.Row]

    public init(scenario: PolicySimulation.Scenario, rows: [PolicySimulation.Row]) {
        self.scenario = scenario
        self.rows = rows
    }

    static let mib = 1_048_576.0

    /// M: memory for VMs, host memory less what the host uses.
    public var memoryForVMsBytes: UInt64 {
        scenario.hostMemoryBytes > scenario.hostUseBytes ? scenario.hostMemoryBytes - scenario.hostUseBytes : 0
    }

    /// What targets may add up to: M less the free memory the policy keeps, whole pages.
    public var capacityBytes: UInt64 {
        MemoryPolicy.capacityBytes(memoryForVMsBytes: memoryForVMsBytes, totalBytes: scenario.hostMemoryBytes,
                                   thresholds: scenario.parameters.thresholds)
    }

    // MARK: CSV

    /// One header line, then one line per step: seconds, state, free MiB, τ, then per VM its working set,
    /// estimate, allocation, target and resident memory in MiB (one decimal), empty while it is not running.
    public func csv() -> String {
        var header = ["seconds", "state", "free_mib", "idle_tax"]
        for vm in scenario.vms {
            for column in ["working_set_mib", "estimate_mib", "allocation_mib", "target_mib", "resident_mib"] {
                header.append("\(vm.name)_\(column)")
            }
        }
        var lines = [header.joined(separator: ",")]
        lines.reserveCapacity(rows.count + 1)
        for row in rows {
            var cells = [Self.seconds(row.millis), row.state.rawValue, Self.decimal(Double(row.freeBytes) / Self.mib, 1),
                         Self.decimal(row.idleTaxRate, 2)]
            for vm in row.vms {
                guard vm.running else {
                    cells.append(contentsOf: ["", "", "", "", ""])
                    continue
                }
                cells.append(Self.mib(vm.workingSetBytes))
                cells.append(vm.estimateBytes.map(Self.mib) ?? "")
                cells.append(Self.mib(vm.allocationBytes))
                cells.append(Self.mib(vm.targetBytes))
                cells.append(Self.mib(vm.residentBytes))
            }
            lines.append(cells.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: Summary

    /// Each VM's mean target over a time window, nil for a VM that did not run in it.
    public func meanTargets(fromMillis start: UInt64, toMillis end: UInt64) -> [Double?] {
        var sums = [Double](repeating: 0, count: scenario.vms.count)
        var counts = [Int](repeating: 0, count: scenario.vms.count)
        for row in rows where row.millis >= start && row.millis <= end {
            for (index, vm) in row.vms.enumerated() where vm.running {
                sums[index] += Double(vm.targetBytes)
                counts[index] += 1
            }
        }
        return zip(sums, counts).map { $1 > 0 ? $0 / Double($1) : nil }
    }

    /// Time spent in each state: each row counts until the next one.
    public func timeInStates() -> [(state: FreeMemoryState, millis: UInt64)] {
        var totals: [FreeMemoryState: UInt64] = [:]
        for (row, next) in zip(rows, rows.dropFirst()) { totals[row.state, default: 0] += next.millis - row.millis }
        return FreeMemoryState.allCases.map { ($0, totals[$0] ?? 0) }
    }

    /// The index of the first row at or after `millis` (where an event takes effect).
    func firstRow(atOrAfter millis: UInt64) -> Int {
        rows.firstIndex { $0.millis >= millis } ?? rows.count
    }

    /// Rows from `start` (a row index) on at which every VM's target stays within 1 MiB of its target in the
    /// row before `end`: the time it took to settle after an event, nil if it did not.
    func settledMillis(from start: Int, before end: Int) -> UInt64? {
        guard start < end, end <= rows.count else { return nil }
        let final = rows[end - 1]
        var settled = end - 1
        var index = end - 1
        while index >= start {
            let row = rows[index]
            let within = zip(row.vms, final.vms).allSatisfy { vm, last in
                guard vm.running == last.running else { return false }
                guard vm.running else { return true }
                let difference = vm.targetBytes > last.targetBytes ? vm.targetBytes - last.targetBytes : last.targetBytes - vm.targetBytes
                return difference <= 1 << 20
            }
            guard within else { break }
            settled = index
            index -= 1
        }
        return rows[settled].millis - rows[start].millis
    }

    func describe(_ change: PolicySimulation.Event.Change, before: Double) -> String {
        switch change {
        case .idleTaxRate(let rate): "τ change \(Self.decimal(before, 2)) → \(Self.decimal(rate, 2))"
        case .shares(let vm, let shares): "shares change (\(vm) to \(shares))"
        case .trimming(let on): "trimming \(on ? "on" : "off")"
        }
    }

    func targets(_ row: PolicySimulation.Row) -> String {
        zip(scenario.vms, row.vms).map { vm, state in
            "\(vm.name) " + (state.running ? "\(Self.whole(Double(state.targetBytes) / Self.mib)) MiB" : "-")
        }.joined(separator: ", ")
    }

    /// Targets before and after each event and at the end, and time in each state.
    public func summary() -> String {
        guard let first = rows.first, let last = rows.last else { return "\(scenario.name): no steps\n" }
        var lines: [String] = []
        let duration = Double(scenario.durationMillis) / 1000
        lines.append("\(scenario.name): \(Self.seconds(scenario.durationMillis)) s in \(Self.seconds(scenario.stepMillis)) s steps, "
            + "\(scenario.vms.count) VM\(scenario.vms.count == 1 ? "" : "s"); host \(Self.whole(Double(scenario.hostMemoryBytes) / Self.mib)) MiB, "
            + "\(Self.whole(Double(memoryForVMsBytes) / Self.mib)) MiB for VMs, targets up to \(String(capacityBytes >> 20)) MiB; "
            + "τ \(Self.decimal(first.idleTaxRate, 2)), trimming \(scenario.parameters.trimming.enabled ? "on" : "off"), "
            + "samples every \(Self.seconds(scenario.sampleMillis)) s")
        let applied = scenario.events.map { firstRow(atOrAfter: $0.atMillis) }
        var tax = scenario.parameters.idleTaxRate
        for (number, event) in scenario.events.enumerated() {
            let index = applied[number]
            let label = describe(event.change, before: tax)
            if case .idleTaxRate(let rate) = event.change { tax = rate }
            guard index < rows.count else { continue }
            let before = index > 0 ? "before \(label) at \(Self.seconds(event.atMillis)) s: \(targets(rows[index - 1]))" : "\(label) at the start"
            let next = applied.dropFirst(number + 1).first { $0 > index } ?? rows.count
            let settled = settledMillis(from: index, before: next).map { "settled within 1 MiB after \(Self.seconds($0)) s" }
                ?? "not settled before the next change"
            lines.append("\(before); just after: \(targets(rows[index])); \(settled)")
        }
        let windowStart = scenario.durationMillis - scenario.durationMillis / 10
        let means = meanTargets(fromMillis: windowStart, toMillis: last.millis)
        lines.append("at end (mean target over the last \(Self.seconds(scenario.durationMillis - windowStart)) s): "
            + zip(scenario.vms, means).map { vm, mean in "\(vm.name) " + (mean.map { "\(Self.whole($0 / Self.mib)) MiB" } ?? "-") }
                .joined(separator: ", "))
        lines.append("time in each state: " + timeInStates().map { state, millis in
            "\(state.rawValue) \(Self.seconds(millis)) s (\(Self.decimal(duration > 0 ? Double(millis) / 10 / duration : 0, 1)) %)"
        }.joined(separator: ", ") + "; ends in \(last.state.rawValue)")
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: SVG

    static let width = 900.0
    static let height = 500.0
    static let plotLeft = 64.0
    static let plotTop = 56.0
    static let plotRight = 726.0
    static let plotBottom = 446.0
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
    static let stateColours: [FreeMemoryState: String] = [.soft: "#fff3b0", .hard: "#ffd8a8", .low: "#ffc2c2"]
    /// VMs named in the legend; the rest are counted.
    static let legendVMs = 12

    /// A hand-written SVG: per VM one colour, its target solid, its estimate dashed, its working set
    /// dotted and its resident memory thin (one `<path>` each); bands for the free-memory states; a vertical
    /// line at each event.
    public func svg() -> String {
        let minutes = scenario.durationMillis > 600_000
        let unit = minutes ? 60_000.0 : 1000.0
        let xMax = max(Double(scenario.durationMillis) / unit, 1e-3)
        var yMaxBytes: UInt64 = 1 << 20
        for vm in scenario.vms { yMaxBytes = max(yMaxBytes, vm.maxBytes) }
        for row in rows { for vm in row.vms { yMaxBytes = max(yMaxBytes, vm.residentBytes, vm.targetBytes, vm.workingSetBytes) } }
        let yStep = Self.niceStep(Double(yMaxBytes) / Self.mib / 6)
        let yMax = (Double(yMaxBytes) / Self.mib / yStep).rounded(.up) * yStep
        let xStep = Self.niceStep(xMax / 8)
        let plotWidth = Self.plotRight - Self.plotLeft
        let plotHeight = Self.plotBottom - Self.plotTop
        func x(_ millis: UInt64) -> Double { Self.plotLeft + Double(millis) / unit / xMax * plotWidth }
        func y(_ bytes: UInt64) -> Double { Self.plotBottom - Double(bytes) / Self.mib / yMax * plotHeight }
        func f(_ value: Double) -> String { Self.decimal(value, 1) }

        var out: [String] = []
        out.append("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(Self.width))\" height=\"\(Int(Self.height))\" viewBox=\"0 0 \(Int(Self.width)) \(Int(Self.height))\" font-family=\"sans-serif\" font-size=\"11\">")
        out.append("<title>\(Self.escape(scenario.name)): Ballonet policy simulation</title>")
        out.append("<rect x=\"0\" y=\"0\" width=\"\(Int(Self.width))\" height=\"\(Int(Self.height))\" fill=\"white\"/>")
        let tax = scenario.parameters.idleTaxRate
        out.append("<text x=\"\(f(Self.plotLeft))\" y=\"22\" font-size=\"16\" font-weight=\"bold\">\(Self.escape(scenario.name))</text>")
        out.append("<text x=\"\(f(Self.plotLeft))\" y=\"40\" font-size=\"11\" fill=\"#444\">τ = \(Self.decimal(tax, 2)), trimming \(scenario.parameters.trimming.enabled ? "on" : "off"), host \(Self.whole(Double(scenario.hostMemoryBytes) / Self.mib)) MiB, \(Self.whole(Double(memoryForVMsBytes) / Self.mib)) MiB for VMs, targets up to \(String(capacityBytes >> 20)) MiB, samples every \(Self.seconds(scenario.sampleMillis)) s</text>")

        // State bands.
        var bandStart = 0
        for index in rows.indices {
            let isEnd = index + 1 == rows.count || rows[index + 1].state != rows[bandStart].state
            guard isEnd else { continue }
            if let colour = Self.stateColours[rows[bandStart].state] {
                let left = x(rows[bandStart].millis)
                let right = index + 1 < rows.count ? x(rows[index + 1].millis) : x(scenario.durationMillis)
                out.append("<rect x=\"\(f(left))\" y=\"\(f(Self.plotTop))\" width=\"\(f(max(right - left, 0.5)))\" height=\"\(f(plotHeight))\" fill=\"\(colour)\"/>")
            }
            bandStart = index + 1
        }

        // Grid, axes, ticks and labels.
        var tick = 0.0
        while tick <= yMax + yStep / 1000 {
            let yy = Self.plotBottom - tick / yMax * plotHeight
            out.append("<line x1=\"\(f(Self.plotLeft))\" y1=\"\(f(yy))\" x2=\"\(f(Self.plotRight))\" y2=\"\(f(yy))\" stroke=\"#000\" stroke-opacity=\"0.08\"/>")
            out.append("<line x1=\"\(f(Self.plotLeft - 4))\" y1=\"\(f(yy))\" x2=\"\(f(Self.plotLeft))\" y2=\"\(f(yy))\" stroke=\"#333\"/>")
            out.append("<text x=\"\(f(Self.plotLeft - 7))\" y=\"\(f(yy + 4))\" text-anchor=\"end\">\(Self.tickLabel(tick, yStep))</text>")
            tick += yStep
        }
        tick = 0
        while tick <= xMax + xStep / 1000 {
            let xx = Self.plotLeft + tick / xMax * plotWidth
            out.append("<line x1=\"\(f(xx))\" y1=\"\(f(Self.plotBottom))\" x2=\"\(f(xx))\" y2=\"\(f(Self.plotBottom + 4))\" stroke=\"#333\"/>")
            out.append("<text x=\"\(f(xx))\" y=\"\(f(Self.plotBottom + 16))\" text-anchor=\"middle\">\(Self.tickLabel(tick, xStep))</text>")
            tick += xStep
        }
        out.append("<line x1=\"\(f(Self.plotLeft))\" y1=\"\(f(Self.plotBottom))\" x2=\"\(f(Self.plotRight))\" y2=\"\(f(Self.plotBottom))\" stroke=\"#333\"/>")
        out.append("<line x1=\"\(f(Self.plotLeft))\" y1=\"\(f(Self.plotTop))\" x2=\"\(f(Self.plotLeft))\" y2=\"\(f(Self.plotBottom))\" stroke=\"#333\"/>")
        out.append("<text x=\"\(f((Self.plotLeft + Self.plotRight) / 2))\" y=\"\(f(Self.plotBottom + 34))\" text-anchor=\"middle\">time (\(minutes ? "minutes" : "seconds"))</text>")
        out.append("<text transform=\"translate(16 \(f((Self.plotTop + Self.plotBottom) / 2))) rotate(-90)\" text-anchor=\"middle\">MiB</text>")

        // Events: a vertical line each, labelled where there is room.
        var lastLabel = -Double.infinity
        for event in scenario.events {
            let xx = x(event.atMillis)
            let label: String
            switch event.change {
            case .idleTaxRate(let rate): label = "τ = \(Self.decimal(rate, 2))"
            case .shares(let vm, let shares): label = "\(vm) shares \(shares)"
            case .trimming(let on): label = "trimming \(on ? "on" : "off")"
            }
            out.append("<line x1=\"\(f(xx))\" y1=\"\(f(Self.plotTop))\" x2=\"\(f(xx))\" y2=\"\(f(Self.plotBottom))\" stroke=\"#333\" stroke-width=\"1\" stroke-dasharray=\"4 3\"/>")
            if xx - lastLabel >= 70 {
                out.append("<text x=\"\(f(xx + 3))\" y=\"\(f(Self.plotTop + 12))\" fill=\"#222\">\(Self.escape(label))</text>")
                lastLabel = xx
            }
        }

        // The lines: one <path> per VM and series.
        let series: [(name: String, style: String, value: (PolicySimulation.VMRow) -> UInt64?)] = [
            ("resident", "stroke-width=\"0.8\" stroke-opacity=\"0.7\"", { $0.residentBytes }),
            ("working set", "stroke-width=\"1.6\" stroke-dasharray=\"1.5 3\" stroke-linecap=\"round\"", { $0.workingSetBytes }),
            ("estimate", "stroke-width=\"1.4\" stroke-dasharray=\"7 4\"", { $0.estimateBytes }),
            ("target", "stroke-width=\"2.2\"", { $0.targetBytes }),
        ]
        for (index, vm) in scenario.vms.enumerated() {
            let colour = Self.palette[index % Self.palette.count]
            for line in series {
                let d = pathData(vm: index, value: line.value, x: x, y: y)
                out.append("<path d=\"\(d)\" fill=\"none\" stroke=\"\(colour)\" \(line.style)><title>\(Self.escape(vm.name)) \(line.name)</title></path>")
            }
        }

        // Legend.
        var ly = Self.plotTop + 4
        let lx = Self.plotRight + 16
        out.append("<text x=\"\(f(lx))\" y=\"\(f(ly))\" font-weight=\"bold\">VMs</text>")
        for (index, vm) in scenario.vms.prefix(Self.legendVMs).enumerated() {
            ly += 16
            out.append("<line x1=\"\(f(lx))\" y1=\"\(f(ly - 4))\" x2=\"\(f(lx + 22))\" y2=\"\(f(ly - 4))\" stroke=\"\(Self.palette[index % Self.palette.count])\" stroke-width=\"3\"/>")
            out.append("<text x=\"\(f(lx + 28))\" y=\"\(f(ly))\">\(Self.escape(vm.name))</text>")
        }
        if scenario.vms.count > Self.legendVMs {
            ly += 16
            out.append("<text x=\"\(f(lx))\" y=\"\(f(ly))\">… and \(scenario.vms.count - Self.legendVMs) more</text>")
        }
        ly += 26
        out.append("<text x=\"\(f(lx))\" y=\"\(f(ly))\" font-weight=\"bold\">Lines</text>")
        for line in series.reversed() {
            ly += 16
            out.append("<line x1=\"\(f(lx))\" y1=\"\(f(ly - 4))\" x2=\"\(f(lx + 22))\" y2=\"\(f(ly - 4))\" stroke=\"#333\" \(line.style)/>")
            out.append("<text x=\"\(f(lx + 28))\" y=\"\(f(ly))\">\(line.name)</text>")
        }
        ly += 26
        out.append("<text x=\"\(f(lx))\" y=\"\(f(ly))\" font-weight=\"bold\">Free memory</text>")
        for state in [FreeMemoryState.high, .soft, .hard, .low] {
            ly += 16
            out.append("<rect x=\"\(f(lx))\" y=\"\(f(ly - 10))\" width=\"22\" height=\"12\" fill=\"\(Self.stateColours[state] ?? "white")\" stroke=\"#999\" stroke-width=\"0.5\"/>")
            out.append("<text x=\"\(f(lx + 28))\" y=\"\(f(ly))\">\(state.rawValue)</text>")
        }
        if !scenario.events.isEmpty {
            ly += 26
            out.append("<line x1=\"\(f(lx + 11))\" y1=\"\(f(ly - 12))\" x2=\"\(f(lx + 11))\" y2=\"\(f(ly + 2))\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>")
            out.append("<text x=\"\(f(lx + 28))\" y=\"\(f(ly))\">event</text>")
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    /// Path data for one VM's series: a subpath per stretch it runs (and has a value), at most four points
    /// (first, lowest, highest, last) per horizontal pixel and none inside a flat stretch, so a week-long
    /// run stays a small file.
    func pathData(vm index: Int, value: (PolicySimulation.VMRow) -> UInt64?, x: (UInt64) -> Double, y: (UInt64) -> Double) -> String {
        var subpaths: [[(x: Double, y: Double)]] = []
        var current: [(x: Double, y: Double)] = []
        var bucket: [(order: Int, x: Double, y: Double)] = []
        var bucketColumn = Int.min
        var order = 0
        func add(_ point: (x: Double, y: Double)) {
            // Tenths of a pixel are what the file holds: a point on the level of the two before it only
            // stretches the flat line.
            let level = (point.y * 10).rounded()
            if current.count >= 2, (current[current.count - 1].y * 10).rounded() == level,
               (current[current.count - 2].y * 10).rounded() == level {
                current[current.count - 1] = point
            } else {
                current.append(point)
            }
        }
        func flush() {
            guard !bucket.isEmpty else { return }
            let first = bucket.first!, last = bucket.last!
            let low = bucket.max { $0.y < $1.y }!, high = bucket.min { $0.y < $1.y }!
            var previous = -1
            for point in [first, low, high, last].sorted(by: { $0.order < $1.order }) where point.order != previous {
                add((point.x, point.y))
                previous = point.order
            }
            bucket.removeAll(keepingCapacity: true)
        }
        func endSubpath() {
            flush()
            if !current.isEmpty { subpaths.append(current) }
            current = []
            bucketColumn = Int.min
        }
        for row in rows {
            let vm = row.vms[index]
            guard vm.running, let bytes = value(vm) else {
                endSubpath()
                continue
            }
            let px = x(row.millis)
            let column = Int(px.rounded(.down))
            if column != bucketColumn { flush(); bucketColumn = column }
            bucket.append((order, px, y(bytes)))
            order += 1
        }
        endSubpath()
        return subpaths.map { points in
            points.enumerated().map { offset, point in
                (offset == 0 ? "M" : "L") + Self.decimal(point.x, 1) + " " + Self.decimal(point.y, 1)
            }.joined(separator: " ")
        }.joined(separator: " ")
    }

    // MARK: Formatting

    /// 1, 2 or 5 times a power of ten, at least `rough`.
    static func niceStep(_ rough: Double) -> Double {
        guard rough > 0, rough.isFinite else { return 1 }
        var power = 1.0
        while power * 10 <= rough { power *= 10 }
        while power > rough { power /= 10 }
        for factor in [1.0, 2.0, 5.0, 10.0] where power * factor >= rough { return power * factor }
        return power * 10
    }

    static func tickLabel(_ value: Double, _ step: Double) -> String {
        step >= 1 ? whole(value) : decimal(value, step >= 0.1 ? 1 : step >= 0.01 ? 2 : 3)
    }

    static func mib(_ bytes: UInt64) -> String { decimal(Double(bytes) / mib, 1) }

    static func whole(_ value: Double) -> String { decimal(value, 0) }

    /// `value` with `places` decimals, rounded half away from zero; no locale, no exponent.
    static func decimal(_ value: Double, _ places: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : value > 0 ? "inf" : "-inf" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let units = UInt64(scaled)
        let divisor = UInt64(scale)
        var fraction = String(units % divisor)
        while fraction.count < places { fraction = "0" + fraction }
        return (value < 0 && units > 0 ? "-" : "") + String(units / divisor) + (places > 0 ? "." + fraction : "")
    }

    /// Milliseconds as seconds: "1800", or "0.5" for a step that is not whole.
    static func seconds(_ millis: UInt64) -> String {
        let whole = millis / 1000
        let rest = millis % 1000
        guard rest > 0 else { return String(whole) }
        var fraction = String(rest)
        while fraction.count < 3 { fraction = "0" + fraction }
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(whole).\(fraction)"
    }

    static func escape(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            default: result.append(character)
            }
        }
        return result
    }
}
