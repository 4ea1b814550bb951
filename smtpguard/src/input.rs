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
//!
//! What the CLI forgives (the agent's socket takes only the canonical forms it sends):
//! - a bare address where a prefix is expected means that host alone (`/32`, `/128`), and a
//!   `/32` or `/128` prefix where a host is expected means its address;
//! - times: a duration from now (`24h`, `7d`), a date (`2026-12-01`: its midnight, local
//!   time), a local time (`2026-12-01T08:00`, `2026-12-01 08:00:30`), an RFC 3339 time
//!   (`2026-12-01T08:00:00Z`) or one of journalctl's words `now`, `today`, `yesterday`,
//!   `tomorrow` (midnights, local time).

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
    #[error(
        "{field} {value} is not a prefix or an address; expected ADDRESS/LENGTH such as \
         100.64.10.0/24 or 2001:db8:1000:10::/64, or one address such as 100.64.0.2 for that \
         host alone"
    )]
    NotAPrefixOrAddress { field: &'static str, value: String },
    #[error("{field} {value} is not an IP address; expected one such as 100.64.0.2 or 2001:db8::2")]
    NotAnAddress { field: &'static str, value: String },
    #[error(
        "{field} {prefix} is a range of addresses, not one host; expected one address such as \
         100.64.0.2 (or ADDRESS/32, ADDRESS/128)"
    )]
    NotAHost { field: &'static str, prefix: IpNet },
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

/// A prefix without host bits, or a bare address meaning that host alone (`/32`, `/128`).
pub fn parse_prefix_or_host(field: &'static str, text: &str) -> Result<IpNet, InputError> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    match parse_prefix(field, text) {
        Err(InputError::NotAPrefix { field, value }) => {
            Err(InputError::NotAPrefixOrAddress { field, value })
        }
        other => other,
    }
}

/// One host: an address, or a `/32` (IPv4) or `/128` (IPv6) prefix of it.
pub fn parse_host(field: &'static str, text: &str) -> Result<IpAddr, InputError> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(address);
    }
    match IpNet::from_str(text) {
        Ok(prefix) if prefix.prefix_len() == prefix.max_prefix_len() => Ok(prefix.addr()),
        Ok(prefix) => Err(InputError::NotAHost { field, prefix }),
        Err(_) => Err(InputError::NotAnAddress {
            field,
            value: shown(text),
        }),
    }
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

/// A subscriber identity (a RADIUS User-Name, say): printable, not only white space, at most
/// a RADIUS attribute's bytes.
pub fn check_subscriber(value: &str) -> Result<(), InputError> {
    if value.trim().is_empty() {
        return Err(InputError::Empty {
            field: "subscriber",
            expected: "the customer's identity, such as their RADIUS User-Name",
        });
    }
    check_text("subscriber", value, crate::store::MAX_SUBSCRIBER_BYTES)
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

/// A moment in the past or present: a duration back from `now` (`24h`, `7d`), or a time as
/// [`parse_point`] takes it. For `--since`, `--from` and `--to`.
pub fn parse_past(
    field: &'static str,
    text: &str,
    now: SystemTime,
) -> Result<SystemTime, InputError> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return now
            .checked_sub(duration)
            .ok_or_else(|| InputError::BadTime {
                field,
                value: shown(text),
                problem: "further back than 1970",
                expected: "a duration such as 24h or 7d",
            });
    }
    parse_point(text, now).map_err(|problem| InputError::BadTime {
        field,
        value: shown(text),
        problem,
        expected: "a duration (24h, 7d), a date (2026-12-01), a local time (2026-12-01T08:00), \
                   an RFC 3339 time (2026-12-01T08:00:00Z), now, today or yesterday",
    })
}

/// `--since`: like [`parse_past`], and not after `now` (a window from then would be empty).
pub fn parse_since(
    field: &'static str,
    text: &str,
    now: SystemTime,
) -> Result<SystemTime, InputError> {
    let at = parse_past(field, text, now)?;
    if at > now {
        return Err(InputError::BadTime {
            field,
            value: shown(text),
            problem: "in the future",
            expected: "a time before now, such as 24h, today or 2026-11-01",
        });
    }
    Ok(at)
}

/// `--expires`: a duration from `now` (30d, 12h) or a time as [`parse_point`] takes it (a date
/// means its midnight: the exemption lapses as that day begins), within the limits.
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
        Err(_) => parse_point(text, now).map_err(|problem| InputError::BadTime {
            field,
            value: shown(text),
            problem: match problem {
                NOT_A_TIME => "neither a duration nor a time",
                other => other,
            },
            expected: "a duration (30d, 12h), a date (2026-12-31), a local time \
                       (2026-12-31T18:00), an RFC 3339 time (2026-12-31T23:59:59Z) or tomorrow",
        })?,
    };
    check_expiry(field, at, now)?;
    Ok(at)
}

/// [`parse_point`]'s problem when the text has no form it knows.
const NOT_A_TIME: &str = "not a time";

/// A time that is not a duration: `now`; `today`, `yesterday`, `tomorrow` (midnights, local
/// time); a date `YYYY-MM-DD` (its midnight, local time); a local time `YYYY-MM-DDTHH:MM[:SS]`
/// (a space for the `T` too); or an RFC 3339 time in UTC (`...Z`). The error is the problem.
pub fn parse_point(text: &str, now: SystemTime) -> Result<SystemTime, &'static str> {
    let midnight = |days| local_midnight(now, days).ok_or("out of the clock's range");
    match text {
        "now" => return Ok(now),
        "today" => return midnight(0),
        "yesterday" => return midnight(-1),
        "tomorrow" => return midnight(1),
        _ => {}
    }
    if text.ends_with(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(text).map_err(|_| NOT_A_TIME);
    }
    let fields = local_fields(text).ok_or(NOT_A_TIME)?;
    local_time(fields)
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS]]` as (year, month, day, hour, minute, second), unchecked.
fn local_fields(text: &str) -> Option<[i64; 6]> {
    let number = |part: &str, digits: usize| {
        (part.len() == digits && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<i64>().ok())
            .flatten()
    };
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut date = date.split('-');
    let (year, month, day) = (
        number(date.next()?, 4)?,
        number(date.next()?, 2)?,
        number(date.next()?, 2)?,
    );
    if date.next().is_some() {
        return None;
    }
    let (mut hour, mut minute, mut second) = (0, 0, 0);
    if let Some(time) = time {
        let mut parts = time.split(':');
        hour = number(parts.next()?, 2)?;
        minute = number(parts.next()?, 2)?;
        if let Some(part) = parts.next() {
            second = number(part, 2)?;
        }
        if parts.next().is_some() {
            return None;
        }
    }
    Some([year, month, day, hour, minute, second])
}

/// Local wall-clock time to a moment, through the C library's time zone (TZ, /etc/localtime).
fn local_time(
    [year, month, day, hour, minute, second]: [i64; 6],
) -> Result<SystemTime, &'static str> {
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err("not a calendar date (the month is 01 to 12)"),
    };
    if !(1970..=9999).contains(&year) {
        return Err("outside the years 1970 to 9999");
    }
    if !(1..=days_in_month).contains(&day) {
        return Err("not a calendar date (no such day in that month)");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("not a time of day (00:00:00 to 23:59:59)");
    }
    // SAFETY: a zeroed `tm` is a valid value; mktime only reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // The ranges above keep every field well within a C int.
    tm.tm_year = (year - 1900) as libc::c_int;
    tm.tm_mon = (month - 1) as libc::c_int;
    tm.tm_mday = day as libc::c_int;
    tm.tm_hour = hour as libc::c_int;
    tm.tm_min = minute as libc::c_int;
    tm.tm_sec = second as libc::c_int;
    tm.tm_isdst = -1;
    from_time_t(mktime(&mut tm)).ok_or("out of the clock's range")
}

/// Midnight (local time) of the day `days` after the one `now` falls on.
fn local_midnight(now: SystemTime, days: libc::c_int) -> Option<SystemTime> {
    let seconds = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let seconds = libc::time_t::try_from(seconds).ok()?;
    // SAFETY: a zeroed `tm` is a valid value for localtime_r to fill in.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant.
    if unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null() {
        return None;
    }
    tm.tm_hour = 0;
    tm.tm_min = 0;
    tm.tm_sec = 0;
    tm.tm_mday += days;
    tm.tm_isdst = -1;
    from_time_t(mktime(&mut tm))
}

fn mktime(tm: &mut libc::tm) -> libc::time_t {
    // SAFETY: `tm` is a valid, initialised value; mktime normalises it in place.
    unsafe { libc::mktime(tm) }
}

fn from_time_t(seconds: libc::time_t) -> Option<SystemTime> {
    let seconds = u64::try_from(seconds).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
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

    #[test]
    fn a_bare_address_is_its_host_and_a_host_prefix_is_its_address() {
        for (text, prefix) in [
            ("100.64.0.2", "100.64.0.2/32"),
            ("2001:db8::2", "2001:db8::2/128"),
            ("100.64.10.0/24", "100.64.10.0/24"),
            ("100.64.0.2/32", "100.64.0.2/32"),
        ] {
            assert_eq!(
                parse_prefix_or_host("prefix", text).map(|p| p.to_string()),
                Ok(prefix.to_owned()),
                "{text}"
            );
        }
        let message = parse_prefix_or_host("prefix", "banana")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("prefix \"banana\" is not a prefix or an address; expected")
                && message.contains("one address such as 100.64.0.2"),
            "{message}"
        );
        assert_eq!(
            parse_prefix_or_host("prefix", "100.64.0.1/10")
                .unwrap_err()
                .to_string(),
            "prefix 100.64.0.1/10 has host bits set; expected the network address 100.64.0.0/10"
        );

        for (text, host) in [
            ("100.64.0.9", "100.64.0.9"),
            ("100.64.0.9/32", "100.64.0.9"),
            ("2001:db8::9/128", "2001:db8::9"),
        ] {
            assert_eq!(
                parse_host("host", text),
                Ok(host.parse().unwrap()),
                "{text}"
            );
        }
        assert_eq!(
            parse_host("host", "100.64.0.0/24").unwrap_err().to_string(),
            "host 100.64.0.0/24 is a range of addresses, not one host; expected one address \
             such as 100.64.0.2 (or ADDRESS/32, ADDRESS/128)"
        );
        let message = parse_host("host", "100.64.0.9/33").unwrap_err().to_string();
        assert!(
            message.starts_with("host \"100.64.0.9/33\" is not an IP address"),
            "{message}"
        );
    }

    /// The local wall-clock fields of `at`, through the C library (as `date` shows them).
    fn local(at: SystemTime) -> [i64; 6] {
        let seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as libc::time_t;
        // SAFETY: a zeroed tm is valid; localtime_r fills it in.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        assert!(!unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null());
        [
            i64::from(tm.tm_year) + 1900,
            i64::from(tm.tm_mon) + 1,
            i64::from(tm.tm_mday),
            i64::from(tm.tm_hour),
            i64::from(tm.tm_min),
            i64::from(tm.tm_sec),
        ]
    }

    #[test]
    fn times_as_operators_write_them() {
        // 2026-11-01T00:00:00Z.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_491_200);
        let past = |text| parse_past("--since", text, now);
        assert_eq!(past("7d"), Ok(now - Duration::from_secs(7 * 86400)));
        assert_eq!(past("now"), Ok(now));
        assert_eq!(
            past("2026-12-01T08:00:00Z"),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000))
        );
        // Dates and times without a zone are local wall-clock time.
        assert_eq!(local(past("2026-12-01").unwrap()), [2026, 12, 1, 0, 0, 0]);
        assert_eq!(
            local(past("2026-12-01T08:00").unwrap()),
            [2026, 12, 1, 8, 0, 0]
        );
        assert_eq!(
            local(past("2026-12-01 08:00:30").unwrap()),
            [2026, 12, 1, 8, 0, 30]
        );
        assert_eq!(local(past("2028-02-29").unwrap()), [2028, 2, 29, 0, 0, 0]);
        // journalctl's words: midnights around the local day `now` falls on.
        let today = past("today").unwrap();
        let yesterday = past("yesterday").unwrap();
        let tomorrow = parse_expiry("--expires", "tomorrow", now).unwrap();
        for day in [today, yesterday, tomorrow] {
            assert_eq!(local(day)[3..], [0, 0, 0], "{day:?} is a midnight");
        }
        assert!(today <= now && now < tomorrow, "now lies in today");
        for (earlier, later) in [(yesterday, today), (today, tomorrow)] {
            let hours = later.duration_since(earlier).unwrap().as_secs() / 3600;
            assert!((23..=25).contains(&hours), "a day apart: {hours} h");
        }
        // --expires takes dates and times too, within its limits.
        assert_eq!(
            local(parse_expiry("--expires", "2026-12-31", now).unwrap()),
            [2026, 12, 31, 0, 0, 0]
        );
        for (text, needle) in [
            (
                "2026-02-30",
                "\"2026-02-30\" is not a calendar date (no such day in that month)",
            ),
            (
                "2026-13-01",
                "is not a calendar date (the month is 01 to 12)",
            ),
            ("2026-12-01T24:00", "is not a time of day"),
            ("1969-12-31", "is outside the years 1970 to 9999"),
            (
                "12/01/2026",
                "\"12/01/2026\" is not a time; expected a duration (24h, 7d), a date",
            ),
            ("2026-12-1", "is not a time"),
            ("2026-12-01T08", "is not a time"),
            ("today ", "is not a time"),
            ("-7d", "is not a time"),
        ] {
            let message = past(text).unwrap_err().to_string();
            assert!(
                message.starts_with("--since ") && message.contains(needle),
                "{text:?}: expected {needle:?} in {message:?}"
            );
            assert!(message.contains("now, today or yesterday"), "{message}");
        }
        assert_eq!(
            parse_since("--since", "tomorrow", now)
                .unwrap_err()
                .to_string(),
            "--since \"tomorrow\" is in the future; expected a time before now, such as 24h, \
             today or 2026-11-01"
        );
        assert_eq!(parse_since("--since", "today", now), Ok(today));
        let message = parse_expiry("--expires", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(message.contains("is not in the future"), "{message}");
        let message = parse_expiry("--expires", "2026-12-32", now)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("no such day in that month") && message.contains("2026-12-31"),
            "{message}"
        );
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

        /// Any address given bare is that host, as a prefix and as a host.
        #[test]
        fn any_address_is_its_own_host(address in prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]) {
            let host = IpNet::from(address);
            prop_assert_eq!(host.prefix_len(), host.max_prefix_len());
            prop_assert_eq!(parse_prefix_or_host("prefix", &address.to_string()), Ok(host));
            prop_assert_eq!(parse_host("host", &host.to_string()), Ok(address));
            prop_assert_eq!(parse_host("host", &address.to_string()), Ok(address));
        }

        /// Any calendar date and time of day, written without a zone, is that local
        /// wall-clock time (a date alone its midnight).
        #[test]
        fn any_local_date_is_its_wall_clock_time(
            year in 1971i64..2100, month in 1i64..=12, day in 1i64..=28,
            hour in 0i64..24, minute in 0i64..60, with_time: bool,
        ) {
            let now = SystemTime::now();
            let (text, expected) = if with_time {
                (
                    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}"),
                    [year, month, day, hour, minute, 0],
                )
            } else {
                (format!("{year:04}-{month:02}-{day:02}"), [year, month, day, 0, 0, 0])
            };
            let at = parse_past("--since", &text, now).unwrap();
            // A time skipped by a daylight-saving change moves by the change; nothing else.
            let observed = local(at);
            if observed[3] == expected[3] {
                prop_assert_eq!(observed, expected, "{}", text);
            }
        }

        /// Any text as `--since`: a time or an error naming the flag and the value. Never a
        /// panic, never an overflow.
        #[test]
        fn any_text_as_a_past_time(text in prop_oneof![
            any::<String>(),
            "[0-9]{1,5}-[0-9]{1,3}-[0-9]{1,3}([T ][0-9]{1,3}:[0-9]{1,3}(:[0-9]{1,3})?)?Z?",
            "-?[0-9]{1,25} ?(s|m|h|d|w|M|y)?",
        ]) {
            match parse_past("--since", &text, SystemTime::now()) {
                Ok(_) => {}
                Err(error) => {
                    let message = error.to_string();
                    assert_printable(&message);
                    prop_assert!(message.starts_with("--since "), "{}", message);
                }
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
