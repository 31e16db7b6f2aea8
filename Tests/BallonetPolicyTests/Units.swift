/// Sizes the policy tests write their cases in.
let mib: UInt64 = 1 << 20
let gib: UInt64 = 1 << 30
