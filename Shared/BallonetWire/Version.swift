/// The one place the software version is written; every binary's `--version` and every hello carry it.
public enum BallonetVersion {
    public static let software = "0.1.0"
}
