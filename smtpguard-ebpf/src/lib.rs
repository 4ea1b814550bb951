#![no_std]
// A library target lets smtpguard name this crate as a build-dependency, so cargo rebuilds
// smtpguard when the kernel program changes; the program itself is the `smtpguard` binary.
