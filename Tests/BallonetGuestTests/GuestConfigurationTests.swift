import BallonetLinux
import Testing
@testable import BallonetConfig
import BallonetGuest

@Suite struct GuestConfigurationTests {
    /// The file name errors carry in these tests, as the agent would print a relative path.
    static let path = "guest.toml"

    /// Parses `text`, expecting a `ConfigurationError`; nil, with a recorded issue, if it parsed.
    func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigurationError? {
        do throws(ConfigurationError) {
            let configuration = try GuestConfiguration.parse(text, path: Self.path)
            Issue.record("expected an error, parsed \(configuration)", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    /// packaging/guest.toml, found from this file's place in the repository.
    static func packagedConfiguration() throws -> String {
        let thisFile = #filePath
        let repository = thisFile.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        let bytes = try FileSystem.readFile(repository + "/packaging/guest.toml", maxBytes: GuestConfigurationLimits.maximumFileBytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Defaults

    @Test func defaultsAreDocumentedValues() {
        let configuration = GuestConfiguration()
        #expect(configuration.port.path == "/dev/virtio-ports/org.ballonet.0")
        #expect(configuration.port.socket == "")
        #expect(configuration.port.reconnectMinMillis == 200)
        #expect(configuration.port.reconnectMaxMillis == 10_000)
        #expect(configuration.balloon.directory == "/run/ballonet/balloon")
        #expect(configuration.balloon.mountTmpfs)
        #expect(configuration.balloon.hugePages)
        #expect(configuration.balloon.batchMiB == 4)
        #expect(configuration.balloon.maxUnansweredBatches == 4)
        #expect(configuration.balloon.floorPercent == 5)
        #expect(configuration.balloon.floorMinMiB == 64)
        #expect(configuration.pressure.psiSomeAvg10Percent == 10.0)
        #expect(configuration.pressure.backoffSeconds == 30)
        #expect(configuration.sampling.periodSeconds == 10)
        #expect(configuration.sampling.enableMGLRU)
        #expect(configuration.log.level == .info)
        #expect(throws: Never.self) { try configuration.validate() }
    }

    @Test func derivedFiguresAreInPages() {
        let configuration = GuestConfiguration()
        #expect(configuration.batchPages == 1024)
        #expect(configuration.psiSomeAvg10Hundredths == 1000)
        #expect(configuration.samplingPeriodMillis == 10_000)
        #expect(configuration.backoffMillis == 30_000)
        // 1 GiB: 5 % is 51 MiB, under the 64 MiB minimum.
        #expect(configuration.floorPages(memTotalBytes: 1 << 30) == 64 * 256)
        // 8 GiB: 5 % of 2,097,152 pages.
        #expect(configuration.floorPages(memTotalBytes: 8 << 30) == 104_857)
        let limits = configuration.balloonLimits(memTotalBytes: 8 << 30)
        #expect(limits == BalloonLimits(batchPages: 1024, floorPages: 104_857, maxUnansweredBatches: 4))
    }

    @Test func anEmptyFileOrNoFileAtTheDefaultPathGivesTheDefaults() throws {
        #expect(try GuestConfiguration.parse("", path: Self.path) == GuestConfiguration())
        #expect(try GuestConfiguration.parse("# nothing but a comment\n\n[balloon]\n", path: Self.path) == GuestConfiguration())
        #expect(try GuestConfiguration.load(path: nil, fileContents: nil) == GuestConfiguration())
    }

    // MARK: A full file

    @Test func aFullFileSetsEveryKey() throws {
        let text = """
            # a guest for tests
            [port]
            path = "/dev/virtio-ports/other"   # another channel
            socket = "/tmp/ballonet test.sock"
            reconnect_min_ms = 50
            reconnect_max_ms = 60_000

            [balloon]
            directory = "/run/ballonet/b#1"
            mount_tmpfs = false
            huge_pages = false
            batch_mib = 16
            max_unanswered_batches = +8
            floor_percent = 0
            floor_min_mib = 128

            [pressure]
            psi_some_avg10_percent = 2.5
            backoff_seconds = 0

            [sampling]
            period_seconds = 30
            enable_mglru = false

            [log]
            level = "debug"
            """
        let configuration = try GuestConfiguration.parse(text, path: Self.path)
        var expected = GuestConfiguration()
        expected.port.path = "/dev/virtio-ports/other"
        expected.port.socket = "/tmp/ballonet test.sock"
        expected.port.reconnectMinMillis = 50
        expected.port.reconnectMaxMillis = 60_000
        expected.balloon.directory = "/run/ballonet/b#1"
        expected.balloon.mountTmpfs = false
        expected.balloon.hugePages = false
        expected.balloon.batchMiB = 16
        expected.balloon.maxUnansweredBatches = 8
        expected.balloon.floorPercent = 0
        expected.balloon.floorMinMiB = 128
        expected.pressure.psiSomeAvg10Percent = 2.5
        expected.pressure.backoffSeconds = 0
        expected.sampling.periodSeconds = 30
        expected.sampling.enableMGLRU = false
        expected.log.level = .debug
        #expect(configuration == expected)
        #expect(configuration.psiSomeAvg10Hundredths == 250)
        #expect(configuration.floorPages(memTotalBytes: 8 << 30) == 128 * 256)
    }

    @Test func keysLeftOutKeepTheirDefaults() throws {
        let configuration = try GuestConfiguration.parse("[balloon]\nbatch_mib = 2\n", path: Self.path)
        var expected = GuestConfiguration()
        expected.balloon.batchMiB = 2
        #expect(configuration == expected)
    }

    @Test func stringEscapesAndWindowsLineEndingsAreRead() throws {
        let text = "[port]\r\nsocket = \"/tmp/a\\\"b\\\\c\\td\"\r\n[log]\r\nlevel = \"warning\" # loud\r\n"
        let configuration = try GuestConfiguration.parse(text, path: Self.path)
        #expect(configuration.port.socket == "/tmp/a\"b\\c\td")
        #expect(configuration.log.level == .warning)
    }

    @Test func anIntegerIsTakenWhereAFloatIsExpected() throws {
        let configuration = try GuestConfiguration.parse("[pressure]\npsi_some_avg10_percent = 20\n", path: Self.path)
        #expect(configuration.pressure.psiSomeAvg10Percent == 20)
        #expect(configuration.psiSomeAvg10Hundredths == 2000)
    }

    // MARK: Errors, each with its line

    @Test func anUnknownKeyNamesTheKnownOnes() {
        let text = "[port]\npath = \"/dev/x\"\n\n# the floor\n\n[balloon]\nflor_mib = 64\n"
        let error = parseError(text)
        #expect(error?.kind == .unknownKey)
        #expect(error?.line == 7)
        #expect(error?.description == """
            guest.toml line 7: unknown key "flor_mib" in [balloon]; known keys: directory, mount_tmpfs, \
            huge_pages, batch_mib, max_unanswered_batches, floor_percent, floor_min_mib
            """)
    }

    @Test func anUnknownTableIsAnError() {
        let error = parseError("[balloon]\nbatch_mib = 4\n[baloon]\n")
        #expect(error?.kind == .unknownTable)
        #expect(error?.line == 3)
        #expect(error?.message.contains("[balloon], [pressure]") == true)
    }

    @Test func aKeyBeforeAnyTableIsAnError() {
        let error = parseError("# top\nbatch_mib = 4\n")
        #expect(error?.kind == .keyOutsideTable)
        #expect(error?.line == 2)
    }

    @Test func aWrongTypeSaysWhatWasExpected() {
        let cases: [(String, Int, String)] = [
            ("[balloon]\nbatch_mib = \"4\"\n", 2, "batch_mib in [balloon] must be an integer, found a string"),
            ("[balloon]\n\nmount_tmpfs = 1\n", 3, "mount_tmpfs in [balloon] must be true or false, found an integer"),
            ("[port]\npath = true\n", 2, "path in [port] must be a string in double quotes, found a boolean"),
            ("[balloon]\nbatch_mib = 4.0\n", 2, "batch_mib in [balloon] must be an integer, found a float"),
            ("[pressure]\npsi_some_avg10_percent = \"10\"\n", 2, "psi_some_avg10_percent in [pressure] must be a number, found a string"),
        ]
        for (text, line, message) in cases {
            let error = parseError(text)
            #expect(error?.kind == .wrongType, "\(text)")
            #expect(error?.line == line, "\(text)")
            #expect(error?.message == message)
        }
    }

    @Test func valuesOutOfRangeNameTheirRange() {
        let cases: [(String, Int, String)] = [
            ("[balloon]\nbatch_mib = 0\n", 2, "batch_mib in [balloon] must be between 1 and 64 MiB, found 0"),
            ("[balloon]\nbatch_mib = 65\n", 2, "batch_mib in [balloon] must be between 1 and 64 MiB, found 65"),
            ("[balloon]\nfloor_percent = -1\n", 2, "floor_percent in [balloon] must be between 0 and 90 %, found -1"),
            ("[balloon]\nfloor_percent = 91\n", 2, "floor_percent in [balloon] must be between 0 and 90 %, found 91"),
            ("[sampling]\nperiod_seconds = 0\n", 2, "period_seconds in [sampling] must be between 1 and 3600 s, found 0"),
            ("[sampling]\nperiod_seconds = 3601\n", 2, "period_seconds in [sampling] must be between 1 and 3600 s, found 3601"),
            ("[balloon]\nmax_unanswered_batches = 0\n", 2, "max_unanswered_batches in [balloon] must be between 1 and 64, found 0"),
            ("[port]\nreconnect_min_ms = 5\n", 2, "reconnect_min_ms in [port] must be between 10 and 600000 ms, found 5"),
            ("[pressure]\n# off?\npsi_some_avg10_percent = 0.0\n", 3,
             "psi_some_avg10_percent in [pressure] must be between 0.01 and 100.0 %, found 0.0"),
            ("[pressure]\nbackoff_seconds = 3601\n", 2, "backoff_seconds in [pressure] must be between 0 and 3600 s, found 3601"),
            ("[log]\nlevel = \"verbose\"\n", 2,
             "level in [log] must be one of trace, debug, info, notice, warning, error, critical, found \"verbose\""),
            ("[balloon]\ndirectory = \"run/ballonet\"\n", 2, "directory in [balloon] must be an absolute path, found \"run/ballonet\""),
            ("[port]\nreconnect_min_ms = 5000\nreconnect_max_ms = 1000\n", 3,
             "reconnect_max_ms in [port] must keep reconnect_min_ms (5000) ≤ reconnect_max_ms (1000)"),
        ]
        for (text, line, message) in cases {
            let error = parseError(text)
            #expect(error?.kind == .outOfRange, "\(text)")
            #expect(error?.line == line, "\(text)")
            #expect(error?.message == message)
        }
    }

    @Test func aSocketPathLongerThanSunPathIsRefused() {
        let long = "/tmp/" + String(repeating: "s", count: 103)
        let error = parseError("[port]\nsocket = \"\(long)\"\n")
        #expect(error?.kind == .outOfRange)
        #expect(error?.message == "socket in [port] is 108 bytes long; at most 107 are allowed")
    }

    @Test func syntaxErrorsSayWhatIsWrongOnTheirLine() {
        let cases: [(String, Int, String)] = [
            ("[port]\npath = \"/dev/x\n", 2, "unterminated string"),
            ("[port]\npath = \"/dev/\\x\"\n", 2, "unsupported escape \\x"),
            ("[log]\nlevel = info\n", 2, "strings need double quotes"),
            ("[balloon]\nbatch_mib 4\n", 2, "expected = after the key \"batch_mib\""),
            ("[balloon]\nbatch_mib =\n", 2, "\"batch_mib\" has no value"),
            ("[balloon]\nbatch_mib = 4 4\n", 2, "only a # comment may follow"),
            ("[balloon]\nbatch_mib = 04\n", 2, "leading zero"),
            ("[balloon]\nbatch_mib = 1__0\n", 2, "each _ in a number must stand between two digits"),
            ("[balloon]\nbatch_mib = 10_\n", 2, "each _ in a number must stand between two digits"),
            ("[balloon]\nbatch_mib = 99999999999999999999\n", 2, "does not fit a 64-bit number"),
            ("[pressure]\npsi_some_avg10_percent = 1.\n", 2, "needs digits after the decimal point"),
            ("[pressure]\npsi_some_avg10_percent = 1e3\n", 2, "is not a number"),
            ("[balloon\n", 1, "expected ] to close the table header"),
            ("[[balloon]\n", 1, "expected ]] to close the array-of-tables header"),
            ("[balloon.x]\n", 1, "dotted table names"),
            ("[balloon]\nfloor.min = 1\n", 2, "dotted keys"),
            ("[balloon]\n\"batch_mib\" = 1\n", 2, "quoted keys"),
            ("[port]\npath = '/dev/x'\n", 2, "literal strings"),
            ("[port]\npath = [\"/dev/x\"]\n", 2, "arrays and inline tables"),
            ("[port]\npath = \"\"\"x\"\"\"\n", 2, "multi-line strings"),
            ("[port]\npath = \"a\u{01}b\"\n", 2, "control character"),
            ("[balloon] x\n", 1, "only a # comment may follow"),
        ]
        for (text, line, fragment) in cases {
            let error = parseError(text)
            #expect(error?.kind == .syntax, "\(text.debugDescription)")
            #expect(error?.line == line, "\(text.debugDescription)")
            #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "no error") lacks \(fragment)")
            #expect(error?.description.hasPrefix("guest.toml line \(line): ") == true)
        }
    }

    @Test func anArrayOfTablesIsRefusedWhereOneTableIsMeant() {
        let error = parseError("[[balloon]]\nbatch_mib = 4\n")
        #expect(error?.kind == .unknownTable)
        #expect(error?.message == "[[balloon]] is an array of tables; write [balloon] once")
    }

    @Test func aKeyOrTableSetTwiceIsAnError() {
        let key = parseError("[balloon]\nbatch_mib = 4\n# again\nbatch_mib = 8\n")
        #expect(key?.kind == .duplicateKey)
        #expect(key?.line == 4)
        #expect(key?.message == "key \"batch_mib\" in [balloon] is set twice (first on line 2)")
        let table = parseError("[balloon]\n[log]\n[balloon]\n")
        #expect(table?.kind == .duplicateTable)
        #expect(table?.line == 3)
    }

    @Test func aMissingFileIsAnErrorOnlyWhenNamedExplicitly() {
        #expect(throws: ConfigurationError(path: "/etc/other.toml", line: 0, kind: .missingFile,
                                           message: "no such file (the default, /etc/ballonet/guest.toml, may be missing; a file named explicitly may not)")) {
            try GuestConfiguration.load(path: "/etc/other.toml", fileContents: nil)
        }
        let missing = "/tmp/ballonet-no-such-config-\(ProcessControl.currentID).toml"
        do throws(ConfigurationError) {
            _ = try GuestConfiguration.load(path: missing)
            Issue.record("a missing explicit file loaded")
        } catch {
            #expect(error.kind == .missingFile)
            #expect(error.path == missing)
        }
    }

    @Test func aFileOverTheLimitOrNotUTF8IsRefused() {
        let large = [UInt8](repeating: UInt8(ascii: "#"), count: GuestConfigurationLimits.maximumFileBytes + 1)
        do throws(ConfigurationError) {
            _ = try GuestConfiguration.load(path: "big.toml", fileContents: large)
            Issue.record("a file over the limit loaded")
        } catch {
            #expect(error.kind == .tooLarge)
            #expect(error.description == "big.toml: larger than 64 KiB; a configuration is a few lines")
        }
        do throws(ConfigurationError) {
            _ = try GuestConfiguration.load(path: "bad.toml", fileContents: Array("[log]\n# ".utf8) + [0xC3, 0x28])
            Issue.record("a file that is not UTF-8 loaded")
        } catch {
            #expect(error.kind == .notUTF8)
        }
    }

    @Test func aFileOnDiskIsReadAndALargeOneRefused() throws {
        let path = "/tmp/ballonet-guest-config-\(ProcessControl.currentID)-\(MonotonicInstant.now().nanoseconds).toml"
        defer { try? FileSystem.removeFile(path) }
        try FileSystem.writeFile(path, "[balloon]\nbatch_mib = 8\n", creatingWithPermissions: 0o600)
        #expect(try GuestConfiguration.load(path: path).balloon.batchMiB == 8)
        try FileSystem.writeFile(path, String(repeating: "#\n", count: 40_000), creatingWithPermissions: 0o600)
        do throws(ConfigurationError) {
            _ = try GuestConfiguration.load(path: path)
            Issue.record("an 80 KB file loaded")
        } catch {
            #expect(error.kind == .tooLarge)
        }
    }

    // MARK: Precedence

    @Test func overridesBeatTheFile() throws {
        var configuration = try GuestConfiguration.parse("[balloon]\nbatch_mib = 8\nfloor_min_mib = 100\n[log]\nlevel = \"error\"\n",
                                                         path: Self.path)
        var overrides = GuestConfigurationOverrides()
        overrides.batchMiB = 2
        overrides.portSocket = "/tmp/test.sock"
        overrides.enableMGLRU = false
        configuration.apply(overrides)
        #expect(configuration.balloon.batchMiB == 2, "the flag wins over the file")
        #expect(configuration.balloon.floorMinMiB == 100, "the file wins over the default")
        #expect(configuration.log.level == .error)
        #expect(configuration.port.socket == "/tmp/test.sock")
        #expect(configuration.sampling.enableMGLRU == false)
        #expect(configuration.port.path == GuestConfiguration().port.path, "the default stays where nothing set it")
        #expect(throws: Never.self) { try configuration.validate() }
    }

    @Test func everyOverrideReachesItsField() {
        var overrides = GuestConfigurationOverrides()
        overrides.portPath = "/dev/p"
        overrides.portSocket = "/s"
        overrides.reconnectMinMillis = 11
        overrides.reconnectMaxMillis = 12
        overrides.balloonDirectory = "/d"
        overrides.mountTmpfs = false
        overrides.hugePages = false
        overrides.batchMiB = 3
        overrides.maxUnansweredBatches = 5
        overrides.floorPercent = 6
        overrides.floorMinMiB = 7
        overrides.psiSomeAvg10Percent = 8.5
        overrides.backoffSeconds = 9
        overrides.periodSeconds = 13
        overrides.enableMGLRU = false
        overrides.logLevel = .trace
        var configuration = GuestConfiguration()
        configuration.apply(overrides)
        var expected = GuestConfiguration()
        expected.port.path = "/dev/p"
        expected.port.socket = "/s"
        expected.port.reconnectMinMillis = 11
        expected.port.reconnectMaxMillis = 12
        expected.balloon.directory = "/d"
        expected.balloon.mountTmpfs = false
        expected.balloon.hugePages = false
        expected.balloon.batchMiB = 3
        expected.balloon.maxUnansweredBatches = 5
        expected.balloon.floorPercent = 6
        expected.balloon.floorMinMiB = 7
        expected.pressure.psiSomeAvg10Percent = 8.5
        expected.pressure.backoffSeconds = 9
        expected.sampling.periodSeconds = 13
        expected.sampling.enableMGLRU = false
        expected.log.level = .trace
        #expect(configuration == expected)
        // An empty override set changes nothing.
        var unchanged = expected
        unchanged.apply(GuestConfigurationOverrides())
        #expect(unchanged == expected)
    }

    @Test func anOverrideOutOfRangeFailsValidationOnTheCommandLine() {
        var configuration = GuestConfiguration()
        var overrides = GuestConfigurationOverrides()
        overrides.batchMiB = 2048
        configuration.apply(overrides)
        #expect(throws: ConfigurationError(path: "command line", line: 0, kind: .outOfRange,
                                           message: "batch_mib in [balloon] must be between 1 and 64 MiB, found 2048")) {
            try configuration.validate()
        }
    }

    // MARK: The packaged file

    @Test func thePackagedFileParsesToTheDefaultsAsShipped() throws {
        #expect(try GuestConfiguration.parse(Self.packagedConfiguration(), path: "packaging/guest.toml") == GuestConfiguration())
    }

    @Test func thePackagedFileUncommentedIsExactlyTheDefaults() throws {
        let text = try Self.packagedConfiguration()
        var uncommentedKeys: [String: [String]] = [:]
        var currentTable = ""
        var lines: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("[") {
                currentTable = String(line.dropFirst().prefix(while: { $0 != "]" }))
            }
            // A key line is "# name = value"; explanations never have that shape.
            let candidate = line.dropFirst(2)
            let name = candidate.prefix(while: { $0.isLetter || $0.isNumber || $0 == "_" })
            if line.hasPrefix("# "), !name.isEmpty, candidate.dropFirst(name.count).hasPrefix(" = ") {
                lines.append(String(candidate))
                uncommentedKeys[currentTable, default: []].append(String(name))
            } else {
                lines.append(String(line))
            }
        }
        let configuration = try GuestConfiguration.parse(lines.joined(separator: "\n"), path: "packaging/guest.toml")
        #expect(configuration == GuestConfiguration())
        // Every key is there, once, in the order the agent lists them.
        for (table, keys) in GuestConfiguration.knownKeys {
            #expect(uncommentedKeys[table] == keys, "[\(table)]")
        }
        #expect(uncommentedKeys.count == GuestConfiguration.knownKeys.count)
    }

    // MARK: The TOML subset itself

    @Test func theSubsetKeepsOrderLinesAndTypes() throws {
        let document = try TOMLSubset.parse("""
            top = -42
            [a]
            s = "x # not a comment" # a comment
            f = -0.5
            b = false
            i = 1_000_000
            [b-2]
            """, path: "t.toml")
        #expect(document.rootEntries == [TOMLEntry(key: "top", value: .integer(-42), line: 1)])
        #expect(document.tables.map(\.name) == ["a", "b-2"])
        #expect(document.tables[0].entries == [
            TOMLEntry(key: "s", value: .string("x # not a comment"), line: 3),
            TOMLEntry(key: "f", value: .float(-0.5), line: 4),
            TOMLEntry(key: "b", value: .boolean(false), line: 5),
            TOMLEntry(key: "i", value: .integer(1_000_000), line: 6),
        ])
        #expect(document.tables[1].line == 7)
        #expect(try TOMLSubset.parse("[x]\nmin = -9223372036854775808\n", path: "t").tables[0].entries[0].value == .integer(.min))
    }
}
