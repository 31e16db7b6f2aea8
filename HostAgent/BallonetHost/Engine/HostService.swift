import BallonetLinux
import Foundation
import Logging
import ServiceLifecycle

/// The host agent as a swift-service-lifecycle `Service`: the engine's loop runs on a thread of its own;
/// SIGTERM (through the `ServiceGroup`) asks it to finish, and it says goodbye to every guest first.
public struct HostService: Service {
    let engine: HostEngine
    let logger: Logger

    public init(engine: HostEngine, logger: Logger) {
        self.engine = engine
        self.logger = logger
    }

    public func run() async throws {
        let engine = self.engine
        let logger = self.logger
        try await withGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                let thread = Thread {
                    do {
                        try engine.run(onReady: {
                            // systemd Type=notify: ready once the VMs are attached and the control socket listens.
                            if (try? Systemd.notify("READY=1\nSTATUS=managing VMs")) == true { logger.debug("told systemd we are ready") }
                        })
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
                thread.name = "ballonet-host engine"
                thread.start()
            }
        } onGracefulShutdown: {
            logger.notice("shutting down: saying goodbye to the guests")
            _ = try? Systemd.notify("STOPPING=1")
            engine.requestStop()
        }
    }
}
