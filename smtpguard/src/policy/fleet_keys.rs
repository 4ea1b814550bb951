//! The fleet policy's layout in etcd: which key holds what, and the JSON each value is.
//!
//! ```text
//! {prefix}policy/exemptions/{prefix}   {"reason", "ticket", "who", "gateway", "created_ms", "expires_ms"}
//! {prefix}policy/relays/{prefix}       {"note", "who", "gateway", "created_ms"}
//! {prefix}policy/subscribers/{hex id}  {"reason", "ticket", "who", "gateway", "created_ms"}
//! {prefix}audit/{at_ms}-{gateway}-{n}  {"at_ms", "action", "subject", "who", "gateway", "detail"}
//! ```
//!
//! Agents watch `{prefix}policy/` only: the audit range beside it never wakes them. A value
//! anyone else wrote is decoded strictly (unknown fields, bad prefixes, host bits, control
//! characters are all refused): a key that does not decode is never applied.

use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::store::{
    AuditAction, EntryKind, Exemption, RuntimeRelay, StoreError, SubscriberExemption, check_prefix,
    check_subscriber, check_text, from_millis, to_millis,
};

/// Where one fleet's keys live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetKeys {
    prefix: String,
}

/// One decoded policy key.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetEntry {
    Exemption(Exemption),
    Relay(RuntimeRelay),
    /// A customer identity exempt at the addresses it holds on any gateway.
    Subscriber(SubscriberExemption),
}

impl FleetEntry {
    /// The gateway the entry was made on.
    pub fn gateway(&self) -> Option<String> {
        match self {
            FleetEntry::Exemption(exemption) => exemption.gateway.clone(),
            FleetEntry::Relay(relay) => relay.gateway.clone(),
            FleetEntry::Subscriber(exemption) => exemption.gateway.clone(),
        }
    }
}

/// Why a key under the policy range was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CorruptKey {
    #[error("the key is not UTF-8")]
    KeyNotText,
    #[error("expected policy/exemptions/<prefix> or policy/relays/<prefix> under the prefix")]
    UnknownKind,
    #[error("{text:?} is not a prefix such as 100.64.2.0/24")]
    BadPrefix { text: String },
    #[error("{text:?} is not a subscriber identity as lowercase hex of its UTF-8")]
    BadSubscriber { text: String },
    #[error("the value is not the JSON of an entry: {0}")]
    BadValue(#[from] serde_json::Error),
    #[error(transparent)]
    BadField(#[from] StoreError),
    #[error("created_ms or expires_ms {0} is out of range")]
    BadTime(i64),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemptionValue {
    reason: String,
    ticket: Option<String>,
    who: String,
    gateway: String,
    created_ms: i64,
    expires_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayValue {
    note: Option<String>,
    who: String,
    gateway: String,
    created_ms: i64,
}

/// One fleet audit entry, as `audit --fleet` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetAuditEntry {
    pub at_ms: i64,
    pub action: String,
    pub subject: String,
    pub who: String,
    pub gateway: String,
    pub detail: String,
}

const EXEMPTIONS: &str = "policy/exemptions/";
const RELAYS: &str = "policy/relays/";
/// Identities as hex: any text (a '/', a space) makes one key, and only one.
const SUBSCRIBERS: &str = "policy/subscribers/";

impl FleetKeys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// What agents list and watch.
    pub fn policy(&self) -> String {
        format!("{}policy/", self.prefix)
    }

    /// The key of the exemption or relay `prefix`.
    pub fn of(&self, kind: EntryKind, prefix: IpNet) -> String {
        let folder = match kind {
            EntryKind::Exemption => EXEMPTIONS,
            EntryKind::Relay => RELAYS,
        };
        format!("{}{folder}{prefix}", self.prefix)
    }

    /// The key of the exemption of identity `subscriber`.
    pub fn of_subscriber(&self, subscriber: &str) -> String {
        let hex: String = subscriber.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}{SUBSCRIBERS}{hex}", self.prefix)
    }

    /// The bounded audit range (see docs/fleet.md, "Audit").
    pub fn audit(&self) -> String {
        format!("{}audit/", self.prefix)
    }

    /// A new audit key: ordered by time, unique per gateway and `sequence`.
    pub fn audit_entry(&self, at_ms: i64, gateway: &str, sequence: u64) -> String {
        format!("{}{at_ms:013}-{gateway}-{sequence}", self.audit())
    }

    /// Decodes a key of the policy range and its value; anything else is [`CorruptKey`].
    pub fn decode(&self, key: &[u8], value: &[u8]) -> Result<FleetEntry, CorruptKey> {
        let key = std::str::from_utf8(key).map_err(|_| CorruptKey::KeyNotText)?;
        let rest = key
            .strip_prefix(&self.prefix)
            .ok_or(CorruptKey::UnknownKind)?;
        if let Some(text) = rest.strip_prefix(EXEMPTIONS) {
            let prefix = parse_prefix(text, EntryKind::Exemption)?;
            let value: ExemptionValue = serde_json::from_slice(value)?;
            check_text("reason", &value.reason)?;
            if let Some(ticket) = &value.ticket {
                check_text("ticket", ticket)?;
            }
            check_text("who", &value.who)?;
            check_text("gateway", &value.gateway)?;
            Ok(FleetEntry::Exemption(Exemption {
                prefix,
                reason: value.reason,
                ticket: value.ticket,
                who: value.who,
                created: time(value.created_ms)?,
                expires: value.expires_ms.map(time).transpose()?,
                gateway: Some(value.gateway),
            }))
        } else if let Some(text) = rest.strip_prefix(RELAYS) {
            let prefix = parse_prefix(text, EntryKind::Relay)?;
            let value: RelayValue = serde_json::from_slice(value)?;
            if let Some(note) = &value.note {
                check_text("note", note)?;
            }
            check_text("who", &value.who)?;
            check_text("gateway", &value.gateway)?;
            Ok(FleetEntry::Relay(RuntimeRelay {
                prefix,
                note: value.note,
                who: value.who,
                created: time(value.created_ms)?,
                gateway: Some(value.gateway),
            }))
        } else if let Some(text) = rest.strip_prefix(SUBSCRIBERS) {
            let subscriber = parse_subscriber(text)?;
            // An exemption's value; one that expires is held by a lease as well.
            let value: ExemptionValue = serde_json::from_slice(value)?;
            let exemption = crate::store::NewSubscriberExemption {
                subscriber,
                reason: value.reason,
                ticket: value.ticket,
                who: value.who,
                expires: value.expires_ms.map(time).transpose()?,
            };
            check_text("gateway", &value.gateway)?;
            let created = time(value.created_ms)?;
            Ok(FleetEntry::Subscriber(SubscriberExemption {
                gateway: Some(value.gateway),
                ..exemption.checked(created)?
            }))
        } else {
            Err(CorruptKey::UnknownKind)
        }
    }
}

/// The identity a subscriber key names: lowercase hex of its UTF-8, nothing else.
fn parse_subscriber(text: &str) -> Result<String, CorruptKey> {
    let bad = || CorruptKey::BadSubscriber {
        text: text.to_owned(),
    };
    if !text.len().is_multiple_of(2)
        || text
            .bytes()
            .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    let subscriber = String::from_utf8(bytes).map_err(|_| bad())?;
    check_subscriber(&subscriber)?;
    Ok(subscriber)
}

/// The value a subscriber identity's exemption is stored as: an exemption's, without expiry.
pub fn encode_subscriber_exemption(
    exemption: &SubscriberExemption,
    gateway: &str,
) -> Result<Vec<u8>, StoreError> {
    let value = ExemptionValue::new(
        (&exemption.reason, &exemption.ticket, &exemption.who),
        exemption.gateway.as_deref().unwrap_or(gateway),
        exemption.created,
        exemption.expires,
    )?;
    Ok(serde_json::to_vec(&value).expect("plain fields serialize"))
}

impl ExemptionValue {
    /// (reason, ticket, who), made on `gateway` at `created`, lapsing at `expires`.
    fn new(
        (reason, ticket, who): (&str, &Option<String>, &str),
        gateway: &str,
        created: SystemTime,
        expires: Option<SystemTime>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            reason: reason.to_owned(),
            ticket: ticket.clone(),
            who: who.to_owned(),
            gateway: gateway.to_owned(),
            created_ms: to_millis("created", created)?,
            expires_ms: expires.map(|at| to_millis("expires", at)).transpose()?,
        })
    }
}

/// The value an exemption is stored as.
pub fn encode_exemption(exemption: &Exemption, gateway: &str) -> Result<Vec<u8>, StoreError> {
    let value = ExemptionValue::new(
        (&exemption.reason, &exemption.ticket, &exemption.who),
        exemption.gateway.as_deref().unwrap_or(gateway),
        exemption.created,
        exemption.expires,
    )?;
    Ok(serde_json::to_vec(&value).expect("plain fields serialize"))
}

/// The value a relay is stored as.
pub fn encode_relay(relay: &RuntimeRelay, gateway: &str) -> Result<Vec<u8>, StoreError> {
    let value = RelayValue {
        note: relay.note.clone(),
        who: relay.who.clone(),
        gateway: relay.gateway.clone().unwrap_or_else(|| gateway.to_owned()),
        created_ms: to_millis("created", relay.created)?,
    };
    Ok(serde_json::to_vec(&value).expect("plain fields serialize"))
}

impl FleetAuditEntry {
    pub fn new(
        at: SystemTime,
        action: AuditAction,
        subject: &str,
        who: &str,
        gateway: &str,
        detail: String,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            at_ms: to_millis("at", at)?,
            action: action.name().to_owned(),
            subject: subject.to_owned(),
            who: who.to_owned(),
            gateway: gateway.to_owned(),
            detail,
        })
    }
}

fn parse_prefix(text: &str, kind: EntryKind) -> Result<IpNet, CorruptKey> {
    let prefix: IpNet = text.parse().map_err(|_| CorruptKey::BadPrefix {
        text: text.to_owned(),
    })?;
    // A key is the prefix's canonical text: "100.064.2.0/24" would be a second key for it.
    if prefix.to_string() != text {
        return Err(CorruptKey::BadPrefix {
            text: text.to_owned(),
        });
    }
    check_prefix(kind, prefix)?;
    Ok(prefix)
}

fn time(ms: i64) -> Result<SystemTime, CorruptKey> {
    from_millis(ms).ok_or(CorruptKey::BadTime(ms))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn keys() -> FleetKeys {
        FleetKeys::new("/sg/")
    }

    fn exemption() -> Exemption {
        Exemption {
            prefix: "100.64.2.0/24".parse().unwrap(),
            reason: "own mail server".to_owned(),
            ticket: Some("T-1".to_owned()),
            who: "alice".to_owned(),
            created: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            expires: None,
            gateway: Some("gw-1".to_owned()),
        }
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        let exemption = exemption();
        let value = encode_exemption(&exemption, "gw-2").unwrap();
        let key = keys().of(EntryKind::Exemption, exemption.prefix);
        assert_eq!(key, "/sg/policy/exemptions/100.64.2.0/24");
        assert_eq!(
            keys().decode(key.as_bytes(), &value).unwrap(),
            FleetEntry::Exemption(exemption)
        );
    }

    #[test]
    fn a_subscriber_exemption_decodes_to_what_was_encoded() {
        let exemption = SubscriberExemption {
            subscriber: "cust/42 @isp".to_owned(),
            reason: "own mail server".to_owned(),
            ticket: None,
            who: "alice".to_owned(),
            created: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            expires: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000)),
            gateway: Some("gw-1".to_owned()),
        };
        let value = encode_subscriber_exemption(&exemption, "gw-2").unwrap();
        let key = keys().of_subscriber(&exemption.subscriber);
        assert_eq!(key, "/sg/policy/subscribers/637573742f34322040697370");
        assert_eq!(
            keys().decode(key.as_bytes(), &value).unwrap(),
            FleetEntry::Subscriber(exemption)
        );
        for bad in ["637", "6375737G", "637573742F3432", "ff"] {
            let key = format!("/sg/policy/subscribers/{bad}");
            let err = keys().decode(key.as_bytes(), &value).unwrap_err();
            assert!(
                err.to_string().contains("is not a subscriber identity"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_keys_are_refused_with_their_cause() {
        let good = encode_exemption(&exemption(), "gw").unwrap();
        let cases: &[(&str, &[u8], &str)] = &[
            ("/sg/policy/exemptions/100.64.2.1/24", &good, "host bits"),
            ("/sg/policy/exemptions/100.64.2.0", &good, "not a prefix"),
            ("/sg/policy/exemptions/100.64.2.0/24", b"{not json", "not the JSON"),
            (
                "/sg/policy/exemptions/100.64.2.0/24",
                br#"{"reason":"x","ticket":null,"who":"a","gateway":"g","created_ms":1,"expires_ms":null,"extra":1}"#,
                "unknown field",
            ),
            (
                "/sg/policy/exemptions/100.64.2.0/24",
                b"{\"reason\":\"x\\u0007\",\"ticket\":null,\"who\":\"a\",\"gateway\":\"g\",\"created_ms\":1,\"expires_ms\":null}",
                "control character",
            ),
            ("/sg/policy/other/100.64.2.0/24", &good, "expected policy/"),
        ];
        for (key, value, cause) in cases {
            let error = keys()
                .decode(key.as_bytes(), value)
                .expect_err(&format!("{key} is refused"));
            assert!(
                error.to_string().contains(cause),
                "{key}: {error} names {cause:?}"
            );
        }
    }
}
