//! Where the judged path stops in a build for the bench's stage profile (`cargo xtask bench`
//! builds the program with `--cfg smtpguard_stage="parse"`, `"policy"` or `"lookup"`, and
//! times each build's drop path against the whole program's): what each part of the path
//! costs, measured on the code itself. A product build sets none of them, and the checks
//! are constants the compiler removes.

/// A TCP segment is dropped straight after the parser (and the reason counters).
pub const ENDS_AT_PARSE: bool = cfg!(smtpguard_stage = "parse");
/// A judged segment is dropped after the enforced-port check and the relay check.
pub const ENDS_AT_POLICY: bool = cfg!(smtpguard_stage = "policy");
/// A host found in the host table gets its class's verdict, with no statistics recorded.
pub const ENDS_AT_LOOKUP: bool = cfg!(smtpguard_stage = "lookup");
