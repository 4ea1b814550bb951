//! Operator input: the limits and parsers of what the CLI sends and the agent's socket accepts.
//!
//! Both sides use these same functions: the CLI refuses bad input before it connects, and the
//! agent refuses it again, because a tool speaking the socket protocol directly must not get
//! past the limits. An error names the field and the bad value, with control characters
//! escaped and long values cut short, so that the message itself is safe to print.
//!
//! The limits:
//! - prefixes: `ADDRESS/LENGTH`, no host bits, IPv4 lengths 0-32, IPv6 0-128;
//! - reason and note: 1-[`MAX_REASON_BYTES`] bytes, ticket 1-[`MAX_TICKET_BYTES`] bytes,
//!   printable UTF-8 (no control characters, no invisible direction overrides); a reason must
//!   hold more than white space;
//! - expiry: after now and at most [`MAX_EXPIRY`] ahead (leave it out for no expiry).

use std::{
    ffi::OsStr,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    str::FromStr as _,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

/// Longest reason (and relay note) in bytes: a sentence or two, one line in a table.
pub const MAX_REASON_BYTES: usize = 512;
/// Longest ticket in bytes: a case number or a URL to it.
pub const MAX_TICKET_BYTES: usize = 128;
/// Furthest ahead an exemption may expire; a longer one is meant to be permanent, which is
/// said by leaving `--expires` out.
pub const MAX_EXPIRY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How much of a bad value an error message shows.
const SHOWN_CHARS: usize = 64;

/// Bad operator input. Every variant names the field and shows the value safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{field} {value} is not valid UTF-8; expected text")]
    NotUtf8 { field: &'static str, value: String },
    #[error(
        "{field} {value} is not a prefix; expected ADDRESS/LENGTH such as 100.64.10.0/24 or \
         2001:db8:1000:10::/64"
    )]
    NotAPrefix { field: &'static str, value: String },
    #[error("{field} {prefix} has host bits set; expected the network address {network}")]
    HostBits {
        field: &'static str,
        prefix: IpNet,
        network: IpNet,
    },
    #[error("{field} {value} is not an IP address; expected one such as 100.64.0.2 or 2001:db8::2")]
    NotAnAddress { field: &'static str, value: String },
    #[error("{field} is {len} bytes long; expected at most {max} bytes")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is empty; expected {expected}")]
    Empty {
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "{field} {value} contains the unprintable character U+{code:04X} at byte {offset}; \
         expected printable text (no control characters or direction overrides)"
    )]
    Unprintable {
        field: &'static str,
        value: String,
        code: u32,
        offset: usize,
    },
    #[error("{field} {value} is {problem}; expected {expected}")]
    BadTime {
        field: &'static str,
        value: String,
        problem: &'static str,
        expected: &'static str,
    },
}

/// `value` as a message shows it: quoted, control characters escaped, at most
/// [`SHOWN_CHARS`] characters and then the full length.
pub fn shown(value: &str) -> String {
    let count = value.chars().count();
    if count <= SHOWN_CHARS {
        return format!("{:?}", value);
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}... ({} bytes)", value.len())
}

/// Command-line text as UTF-8; bytes that are not are shown escaped (`\xff`).
pub fn utf8<'a>(field: &'static str, value: &'a OsStr) -> Result<&'a str, InputError> {
    value.to_str().ok_or_else(|| {
        let bytes = value.as_bytes();
        let head = &bytes[..bytes.len().min(SHOWN_CHARS)];
        InputError::NotUtf8 {
            field,
            value: format!("\"{}\" ({} bytes)", head.escape_ascii(), bytes.len()),
        }
    })
}

/// A prefix without host bits.
pub fn parse_prefix(field: &'static str, text: &str) -> Result<IpNet, InputError> {
    let prefix = IpNet::from_str(text).map_err(|_| InputError::NotAPrefix {
        field,
        value: shown(text),
    })?;
    if prefix.trunc() != prefix {
        return Err(InputError::HostBits {
            field,
            prefix,
            network: prefix.trunc(),
        });
    }
    Ok(prefix)
}

pub fn parse_address(field: &'static str, text: &str) -> Result<IpAddr, InputError> {
    text.parse().map_err(|_| InputError::NotAnAddress {
        field,
        value: shown(text),
    })
}

/// Whether a terminal or a log would not show `c` as itself: control characters (C0, DEL,
/// C1) and the invisible marks that reorder or hide the text around them.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// The byte offset and the first unprintable character of `value`, if any.
pub fn first_unprintable(value: &str) -> Option<(usize, char)> {
    value.char_indices().find(|&(_, c)| is_unprintable(c))
}

/// `text` with every unprintable character escaped as `\u{..}`.
pub fn escape_unprintable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if is_unprintable(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Free text of at most `max` bytes, printable, not only white space.
pub fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), InputError> {
    if value.len() > max {
        return Err(InputError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.trim().is_empty() {
        return Err(InputError::Empty {
            field,
            expected: "a short note, such as \"customer's own MX\" or T-4711",
        });
    }
    match first_unprintable(value) {
        Some((offset, character)) => Err(InputError::Unprintable {
            field,
            value: shown(value),
            code: u32::from(character),
            offset,
        }),
        None => Ok(()),
    }
}

/// An RFC 3339 time.
pub fn parse_time(field: &'static str, text: &str) -> Result<SystemTime, InputError> {
    humantime::parse_rfc3339_weak(text).map_err(|_| InputError::BadTime {
        field,
        value: shown(text),
        problem: "not a time",
        expected: "RFC 3339 such as 2026-12-31T23:59:59Z",
    })
}

/// An expiry time: after `now`, at most [`MAX_EXPIRY`] later.
pub fn check_expiry(
    field: &'static str,
    at: SystemTime,
    now: SystemTime,
) -> Result<(), InputError> {
    let problem = if at <= now {
        "not in the future"
    } else if at.duration_since(now).unwrap_or_default() > MAX_EXPIRY {
        "more than 10 years ahead"
    } else {
        return Ok(());
    };
    Err(InputError::BadTime {
        field,
        value: shown(&humantime::format_rfc3339_seconds(at).to_string()),
        problem,
        expected: "a time within the next 10 years (leave it out for no expiry)",
    })
}

/// `--expires`: a duration from `now` (30d, 12h) or an RFC 3339 time, within the limits.
pub fn parse_expiry(
    field: &'static str,
    text: &str,
    now: SystemTime,
) -> Result<SystemTime, InputError> {
    let at = match humantime::parse_duration(text) {
        Ok(duration) if duration > MAX_EXPIRY => {
            return Err(InputError::BadTime {
                field,
                value: shown(text),
                problem: "more than 10 years ahead",
                expected: "a duration such as 30d or 12h (leave it out for no expiry)",
            });
        }
        Ok(duration) if duration.is_zero() => {
            return Err(InputError::BadTime {
                field,
                value: shown(text),
                problem: "no time from now",
                expected: "a duration such as 30d or 12h",
            });
        }
        // Within MAX_EXPIRY of now: no overflow.
        Ok(duration) => now + duration,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| InputError::BadTime {
            field,
            value: shown(text),
            problem: "neither a duration nor a time",
            expected: "30d, 12h or 2026-12-31T23:59:59Z",
        })?,
    };
    check_expiry(field, at, now)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    use proptest::prelude::*;

    use super::*;

    /// An error message must be safe to print: no character that a terminal would act on.
    fn assert_printable(message: &str) {
        assert_eq!(
            first_unprintable(message),
            None,
            "the message holds an unprintable character: {message:?}"
        );
    }

    #[test]
    fn nasty_prefixes_are_refused_with_their_value_shown() {
        for (text, needle) in [
            ("banana", "\"banana\" is not a prefix"),
            ("100.64.0.1/10", "100.64.0.1/10 has host bits set"),
            ("100.64.0.0/33", "\"100.64.0.0/33\" is not a prefix"),
            ("::/129", "\"::/129\" is not a prefix"),
            ("100.64.0.0/24\n", "\"100.64.0.0/24\\n\" is not a prefix"),
            ("100.64.0.0\0/24", "\"100.64.0.0\\0/24\" is not a prefix"),
            ("\u{1b}[2J", "\"\\u{1b}[2J\" is not a prefix"),
            ("", "\"\" is not a prefix"),
            ("100.64.0.0", "\"100.64.0.0\" is not a prefix"),
            ("-1.0.0.0/8", "is not a prefix"),
        ] {
            let message = parse_prefix("prefix", text).unwrap_err().to_string();
            assert!(
                message.contains(needle),
                "{text:?}: expected {needle:?} in {message:?}"
            );
            assert_printable(&message);
        }
        let huge = "1".repeat(1 << 20);
        let message = parse_prefix("prefix", &huge).unwrap_err().to_string();
        assert!(message.contains("(1048576 bytes)"), "{message}");
        assert!(
            message.len() < 300,
            "a huge value is cut short: {} bytes",
            message.len()
        );
        assert_eq!(
            parse_prefix("prefix", "2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn non_utf8_arguments_are_shown_escaped() {
        let value = OsString::from_vec(b"100.64.\xff\x00/24".to_vec());
        let message = utf8("prefix", &value).unwrap_err().to_string();
        assert_eq!(
            message,
            "prefix \"100.64.\\xff\\x00/24\" (12 bytes) is not valid UTF-8; expected text"
        );
    }

    #[test]
    fn text_limits() {
        assert!(check_text("reason", "customer's own MX", MAX_REASON_BYTES).is_ok());
        assert!(check_text("reason", "Müller GmbH – Kundenserver", MAX_REASON_BYTES).is_ok());
        for (text, needle) in [
            ("a\nb", "U+000A at byte 1"),
            ("a\rb", "U+000D"),
            ("\u{1b}[31mred", "U+001B at byte 0"),
            ("nul\0", "U+0000 at byte 3"),
            ("del\u{7f}", "U+007F"),
            ("c1\u{9b}", "U+009B"),
            ("evil\u{202E}gpj.exe", "U+202E"),
            ("zero\u{200B}width", "U+200B"),
        ] {
            let message = check_text("reason", text, MAX_REASON_BYTES)
                .unwrap_err()
                .to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
            assert_printable(&message);
        }
        assert_eq!(
            check_text("reason", " \t ", MAX_REASON_BYTES).unwrap_err(),
            InputError::Empty {
                field: "reason",
                expected: "a short note, such as \"customer's own MX\" or T-4711"
            }
        );
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        assert_eq!(
            check_text("reason", &long, MAX_REASON_BYTES)
                .unwrap_err()
                .to_string(),
            "reason is 513 bytes long; expected at most 512 bytes"
        );
        assert!(check_text("reason", &long[1..], MAX_REASON_BYTES).is_ok());
    }

    #[test]
    fn expiry_limits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_expiry("--expires", "30d", now).unwrap(),
            now + Duration::from_secs(30 * 86400)
        );
        for (text, needle) in [
            ("-5d", "neither a duration nor a time"),
            ("", "\"\" is neither a duration nor a time"),
            ("99999999999y", "more than 10 years ahead"),
            ("99999999999999999999999y", "neither a duration nor a time"),
            ("11y", "more than 10 years ahead"),
            ("0s", "no time from now"),
            ("5 parsecs", "neither a duration nor a time"),
            ("2020-01-01T00:00:00Z", "not in the future"),
            ("9999-12-31T23:59:59Z", "more than 10 years ahead"),
        ] {
            let message = parse_expiry("--expires", text, now)
                .unwrap_err()
                .to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(message.starts_with("--expires "), "{message}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: a prefix without host bits that prints as it was given, or an error that
        /// is safe to print. Never a panic.
        #[test]
        fn any_text_as_a_prefix(text in prop_oneof![
            any::<String>(),
            "[0-9a-f:./]{0,50}",
            (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, l)| format!("{}/{l}", IpAddr::from(a))),
            (any::<[u8; 16]>(), 0u8..140).prop_map(|(a, l)| format!("{}/{l}", IpAddr::from(a))),
        ]) {
            match parse_prefix("prefix", &text) {
                Ok(prefix) => {
                    prop_assert_eq!(prefix.trunc(), prefix);
                    prop_assert!(prefix.prefix_len() <= prefix.max_prefix_len());
                    prop_assert_eq!(parse_prefix("prefix", &prefix.to_string()), Ok(prefix));
                }
                Err(error) => assert_printable(&error.to_string()),
            }
        }

        /// Any bytes as a command-line argument: UTF-8 passes through, anything else is shown
        /// escaped.
        #[test]
        fn any_bytes_as_an_argument(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let value = OsString::from_vec(bytes.clone());
            match utf8("reason", &value) {
                Ok(text) => prop_assert_eq!(text.as_bytes(), &bytes[..]),
                Err(error) => {
                    prop_assert!(std::str::from_utf8(&bytes).is_err());
                    assert_printable(&error.to_string());
                }
            }
        }

        /// Any text as a reason: accepted exactly when it is short, printable and not blank.
        #[test]
        fn any_text_as_a_reason(text in prop_oneof![
            any::<String>(),
            "[ -~]{0,600}",
            "\\PC{500,530}",
        ]) {
            let accepted = check_text("reason", &text, MAX_REASON_BYTES);
            let expected = text.len() <= MAX_REASON_BYTES
                && !text.trim().is_empty()
                && first_unprintable(&text).is_none();
            prop_assert_eq!(accepted.is_ok(), expected, "{:?}: {:?}", text, accepted);
            if let Err(error) = accepted {
                let message = error.to_string();
                assert_printable(&message);
                prop_assert!(message.len() < 400, "message of {} bytes", message.len());
            }
        }

        /// Any text as `--expires`: a time within the limits, or an error. Never a panic,
        /// never an overflow.
        #[test]
        fn any_text_as_an_expiry(text in prop_oneof![
            any::<String>(),
            "-?[0-9]{1,25} ?(ns|us|ms|s|m|h|d|w|M|y|years|parsecs)?",
            "[0-9]{4,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        ]) {
            let now = SystemTime::now();
            match parse_expiry("--expires", &text, now) {
                Ok(at) => {
                    prop_assert!(at > now);
                    prop_assert!(at.duration_since(now).unwrap() <= MAX_EXPIRY);
                }
                Err(error) => assert_printable(&error.to_string()),
            }
        }
    }
}
