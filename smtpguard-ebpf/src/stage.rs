//! Where the judged path stops in a build for the bench's stage profile (`cargo xtask bench`
//! builds the program with `--cfg smtpguard_stage="parse"`, `"policy"` or `"lookup"`, and
//! times each build's drop path against the whole program's): what each part of the path
//! costs, measured on the code itself. A product build sets none of them, and the checks
//! are constants the compiler removes.

use smtpguard_common::{Reason, host::address_words};

use crate::parse::{Addresses, Packet};

/// A TCP segment is dropped straight after the parser (and the reason counters).
pub const ENDS_AT_PARSE: bool = cfg!(smtpguard_stage = "parse");
/// A judged segment is dropped after the enforced-port check and the relay check.
pub const ENDS_AT_POLICY: bool = cfg!(smtpguard_stage = "policy");
/// A host found in the host table gets its class's verdict, with no statistics recorded.
pub const ENDS_AT_LOOKUP: bool = cfg!(smtpguard_stage = "lookup");
/// Not a stage of the path but its floor: a judged segment, once its port is found enforced,
/// only finds its host's home slot and adds one to its attempts (no relay check, class,
/// other counters or destinations). What a drop that keeps any per-host statistics costs at
/// the least, against the whole program and xdp-filter in the same rounds.
pub const COUNT_ONLY: bool = cfg!(smtpguard_stage = "counted");

/// `Dropped`, from a word that depends on the addresses, which only the later stages read:
/// a stage that ended without reading them would let the compiler drop the parser's work
/// for them, and count it in the next stage. (`black_box` would keep the packet whole, but
/// LLVM then stores a packet pointer's bytes with shifts, and reading the port as well
/// made it read an unset register on the paths without one: the verifier refuses both.)
#[inline(always)]
pub fn dropped(packet: &Packet) -> Reason {
    let addresses = match packet.addresses {
        Addresses::V4 { src, dst } => u64::from(u32::from_ne_bytes(src) ^ u32::from_ne_bytes(dst)),
        Addresses::V6 { src, dst } => {
            let ([a, b], [c, d]) = (address_words(src), address_words(dst));
            a ^ b ^ c ^ d
        }
    };
    // One word in 2^64 reads as `Other`; the bench checks that the drop case is not it.
    match addresses {
        u64::MAX => Reason::Other,
        _ => Reason::Dropped,
    }
}
