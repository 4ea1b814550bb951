//! RADIUS accounting (RFC 2866) on the wire: which client sent a datagram, whether its
//! Request Authenticator proves the shared secret, and what session change it announces.
//! The `radius` crate reads the attributes and computes the authenticators; the IPv6 prefix
//! attributes are read here, since the crate drops their prefix length.

use std::{fmt, net::IpAddr};

use ipnet::{IpNet, Ipv6Net};
use radius::core::{
    code::Code,
    packet::Packet,
    rfc2865::{
        CALLING_STATION_ID_TYPE, CLASS_TYPE, FRAMED_IP_ADDRESS_TYPE, NAS_IDENTIFIER_TYPE,
        NAS_IP_ADDRESS_TYPE, USER_NAME_TYPE,
    },
    rfc2866::{
        ACCT_SESSION_ID_TYPE, ACCT_STATUS_TYPE_ACCOUNTING_OFF, ACCT_STATUS_TYPE_ACCOUNTING_ON,
        ACCT_STATUS_TYPE_INTERIM_UPDATE, ACCT_STATUS_TYPE_START, ACCT_STATUS_TYPE_STOP,
        ACCT_STATUS_TYPE_TYPE,
    },
    rfc3162::{FRAMED_IPV6_PREFIX_TYPE, NAS_IPV6_ADDRESS_TYPE},
    rfc4818::DELEGATED_IPV6_PREFIX_TYPE,
};

use super::{Change, ChangeKind, SessionChange};
use crate::store::check_subscriber;

/// The RADIUS header: code, identifier, length, authenticator.
const HEADER_BYTES: usize = 20;
/// The largest packet RFC 2865 allows.
pub const MAX_PACKET_BYTES: usize = 4096;

/// The attribute that names the customer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdentityAttribute {
    #[default]
    UserName,
    /// Octets the RADIUS server assigned: shown as text when printable, else as hex.
    Class,
    CallingStationId,
}

impl IdentityAttribute {
    /// The config's names, in the order messages list them.
    pub const NAMES: [(&'static str, IdentityAttribute); 3] = [
        ("user-name", IdentityAttribute::UserName),
        ("class", IdentityAttribute::Class),
        ("calling-station-id", IdentityAttribute::CallingStationId),
    ];

    fn attribute_type(self) -> u8 {
        match self {
            IdentityAttribute::UserName => USER_NAME_TYPE,
            IdentityAttribute::Class => CLASS_TYPE,
            IdentityAttribute::CallingStationId => CALLING_STATION_ID_TYPE,
        }
    }
}

/// Why a datagram was ignored; counted by [`Rejected::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejected {
    /// Shorter than its header, or than the length its header gives.
    Truncated,
    /// From an address no `[radius] clients` entry holds.
    UnknownClient,
    /// Not an Accounting-Request.
    UnknownCode,
    /// The Request Authenticator does not match the client's secret.
    BadAuthenticator,
    /// An attribute runs past the packet's end or its value is malformed.
    MalformedAttribute,
    /// No Acct-Status-Type, or no identity on a Start, Interim-Update or Stop.
    MissingAttribute,
    /// An Acct-Status-Type other than Start, Stop, Interim-Update, Accounting-On and -Off.
    UnknownStatus,
}

impl Rejected {
    pub const ALL: [Rejected; 7] = [
        Rejected::Truncated,
        Rejected::UnknownClient,
        Rejected::UnknownCode,
        Rejected::BadAuthenticator,
        Rejected::MalformedAttribute,
        Rejected::MissingAttribute,
        Rejected::UnknownStatus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rejected::Truncated => "truncated",
            Rejected::UnknownClient => "unknown-client",
            Rejected::UnknownCode => "unknown-code",
            Rejected::BadAuthenticator => "bad-authenticator",
            Rejected::MalformedAttribute => "malformed-attribute",
            Rejected::MissingAttribute => "missing-attribute",
            Rejected::UnknownStatus => "unknown-status",
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One RADIUS client (a BNG) and its shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// The addresses it sends from.
    pub prefix: IpNet,
    pub secret: Vec<u8>,
}

impl fmt::Debug for Client {
    /// Never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The client a datagram from `source` belongs to: the most specific prefix holding it.
pub fn client_of(clients: &[Client], source: IpAddr) -> Option<&Client> {
    let source = unmapped(source);
    clients
        .iter()
        .filter(|client| client.prefix.contains(&source))
        .max_by_key(|client| client.prefix.prefix_len())
}

/// An authentic Accounting-Request: what it changes and the Accounting-Response to send once
/// the change is durable.
#[derive(Debug)]
pub struct Accounting {
    pub change: Change,
    request: Packet,
}

impl Accounting {
    /// The Accounting-Response (RFC 2866 section 3: its authenticator covers the request's).
    pub fn response(&self) -> Vec<u8> {
        self.request
            .make_response_packet(Code::AccountingResponse)
            .encode()
            .expect("an attribute-less Accounting-Response always encodes")
    }
}

/// Checks and reads one datagram that `source`, a client whose secret is `secret`, sent.
pub fn decode(
    datagram: &[u8],
    source: IpAddr,
    secret: &[u8],
    identity: IdentityAttribute,
) -> Result<Accounting, Rejected> {
    if datagram.len() < HEADER_BYTES {
        return Err(Rejected::Truncated);
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if !(HEADER_BYTES..=MAX_PACKET_BYTES).contains(&length) || length > datagram.len() {
        return Err(Rejected::Truncated);
    }
    // Octets past the header's length are padding (RFC 2865 section 3): not authenticated.
    let packet = &datagram[..length];
    if Code::from(packet[0]) != Code::AccountingRequest {
        return Err(Rejected::UnknownCode);
    }
    if !Packet::is_authentic_request(packet, secret) {
        return Err(Rejected::BadAuthenticator);
    }
    let request = Packet::decode(packet, secret).map_err(|_| Rejected::MalformedAttribute)?;
    let status =
        u32_attribute(&request, ACCT_STATUS_TYPE_TYPE)?.ok_or(Rejected::MissingAttribute)?;
    let nas = nas_of(&request, source)?;
    let kind = match status {
        ACCT_STATUS_TYPE_START | ACCT_STATUS_TYPE_INTERIM_UPDATE => ChangeKind::Hold,
        ACCT_STATUS_TYPE_STOP => ChangeKind::Stop,
        ACCT_STATUS_TYPE_ACCOUNTING_ON | ACCT_STATUS_TYPE_ACCOUNTING_OFF => {
            return Ok(Accounting {
                change: Change::NasRestarted { nas },
                request,
            });
        }
        _ => return Err(Rejected::UnknownStatus),
    };
    let subscriber = identity_of(&request, identity)?;
    let session = match request.lookup(ACCT_SESSION_ID_TYPE) {
        Some(avp) => Some(text(&avp.encode_bytes()).ok_or(Rejected::MalformedAttribute)?),
        None => None,
    };
    let change = SessionChange {
        kind,
        subscriber,
        session,
        nas: Some(nas),
        prefixes: prefixes(&request)?,
    };
    Ok(Accounting {
        change: Change::Session(change),
        request,
    })
}

/// The NAS a packet speaks for: its NAS-IP-Address, else its NAS-IPv6-Address, else its
/// NAS-Identifier (RFC 2866 asks for one of them in every Accounting-Request), else the
/// address it came from. A proxy's source address is no NAS's, hence the attributes first;
/// a NAS names itself the same way in its sessions' packets and in its Accounting-On.
pub fn nas_of(packet: &Packet, source: IpAddr) -> Result<String, Rejected> {
    if let Some(avp) = packet.lookup(NAS_IP_ADDRESS_TYPE) {
        let avp = avp
            .encode_ipv4()
            .map_err(|_| Rejected::MalformedAttribute)?;
        return Ok(avp.to_string());
    }
    if let Some(avp) = packet.lookup(NAS_IPV6_ADDRESS_TYPE) {
        let avp = avp
            .encode_ipv6()
            .map_err(|_| Rejected::MalformedAttribute)?;
        return Ok(avp.to_string());
    }
    if let Some(avp) = packet.lookup(NAS_IDENTIFIER_TYPE) {
        return text(&avp.encode_bytes()).ok_or(Rejected::MalformedAttribute);
    }
    Ok(unmapped(source).to_string())
}

/// A v4 client's address on a dual-stack socket as the v4 address it is.
fn unmapped(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
        v4 => v4,
    }
}

fn u32_attribute(packet: &Packet, typ: u8) -> Result<Option<u32>, Rejected> {
    packet
        .lookup(typ)
        .map(|avp| {
            let bytes: [u8; 4] = avp
                .encode_bytes()
                .try_into()
                .map_err(|_| Rejected::MalformedAttribute)?;
            Ok(u32::from_be_bytes(bytes))
        })
        .transpose()
}

/// The customer's identity, as the store keeps it.
fn identity_of(packet: &Packet, identity: IdentityAttribute) -> Result<String, Rejected> {
    let value = packet
        .lookup(identity.attribute_type())
        .ok_or(Rejected::MissingAttribute)?
        .encode_bytes();
    let subscriber = match (text(&value), identity) {
        (Some(text), _) => text,
        (None, IdentityAttribute::Class) => value.iter().fold("0x".to_owned(), |mut hex, b| {
            hex.push_str(&format!("{b:02x}"));
            hex
        }),
        (None, _) => return Err(Rejected::MalformedAttribute),
    };
    check_subscriber(&subscriber).map_err(|_| Rejected::MalformedAttribute)?;
    Ok(subscriber)
}

/// `bytes` as text, if they are UTF-8 without control characters.
fn text(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.chars().any(char::is_control)).then(|| text.to_owned())
}

/// Framed-IP-Address, Framed-IPv6-Prefix and Delegated-IPv6-Prefix, every one given.
fn prefixes(packet: &Packet) -> Result<Vec<IpNet>, Rejected> {
    let mut prefixes = Vec::new();
    for avp in packet.lookup_all(FRAMED_IP_ADDRESS_TYPE) {
        let octets: [u8; 4] = avp
            .encode_bytes()
            .try_into()
            .map_err(|_| Rejected::MalformedAttribute)?;
        let address = std::net::Ipv4Addr::from(octets);
        // 255.255.255.254 and .255 ask the NAS to pick or the user to choose (RFC 2865
        // section 5.8): no address of the session.
        if !address.is_broadcast() && octets != [255, 255, 255, 254] {
            prefixes.push(IpNet::from(IpAddr::V4(address)));
        }
    }
    for typ in [FRAMED_IPV6_PREFIX_TYPE, DELEGATED_IPV6_PREFIX_TYPE] {
        for avp in packet.lookup_all(typ) {
            prefixes.push(ipv6_prefix(&avp.encode_bytes()).ok_or(Rejected::MalformedAttribute)?);
        }
    }
    Ok(prefixes)
}

/// An IPv6 prefix attribute's value (RFC 3162 section 2.3): reserved, length, then the
/// prefix's significant octets.
fn ipv6_prefix(value: &[u8]) -> Option<IpNet> {
    let (&length, octets) = value.get(1..)?.split_first()?;
    if length > 128 || octets.len() > 16 || octets.len() * 8 < usize::from(length) {
        return None;
    }
    let mut address = [0u8; 16];
    address[..octets.len()].copy_from_slice(octets);
    Ipv6Net::new(address.into(), length)
        .ok()
        .map(|net| IpNet::V6(net.trunc()))
}

#[cfg(test)]
mod tests {
    use radius::core::{avp::AVP, rfc2865, rfc2866};

    use super::*;

    const SECRET: &[u8] = b"s3cret";
    /// The address the test packets come from.
    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn decode(
        datagram: &[u8],
        secret: &[u8],
        identity: IdentityAttribute,
    ) -> Result<Accounting, Rejected> {
        super::decode(datagram, SOURCE, secret, identity)
    }

    fn request(status: u32, attributes: &[AVP]) -> Packet {
        let mut packet = Packet::new(Code::AccountingRequest, SECRET);
        rfc2866::add_acct_status_type(&mut packet, status);
        packet.extend(attributes.to_vec());
        packet
    }

    fn start(user: &str, address: [u8; 4]) -> Vec<u8> {
        let mut packet = request(ACCT_STATUS_TYPE_START, &[]);
        rfc2865::add_user_name(&mut packet, user);
        rfc2865::add_framed_ip_address(&mut packet, &address.into());
        rfc2866::add_acct_session_id(&mut packet, "sess-1");
        packet.encode().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn a_start_binds_its_addresses_and_is_answered() {
        let mut packet = request(ACCT_STATUS_TYPE_START, &[]);
        rfc2865::add_user_name(&mut packet, "cust-42@isp");
        rfc2865::add_framed_ip_address(&mut packet, &[100, 64, 0, 2].into());
        packet.add(AVP::from_bytes(
            FRAMED_IPV6_PREFIX_TYPE,
            &[0, 64, 0x20, 0x01, 0x0d, 0xb8, 0x10, 0, 0, 7],
        ));
        packet.add(AVP::from_bytes(
            DELEGATED_IPV6_PREFIX_TYPE,
            &[0, 56, 0x20, 0x01, 0x0d, 0xb8, 0x10, 0, 0x01, 0],
        ));
        let bytes = packet.encode().unwrap();
        let accounting = decode(&bytes, SECRET, IdentityAttribute::UserName).unwrap();
        assert_eq!(
            accounting.change,
            Change::Session(SessionChange {
                kind: ChangeKind::Hold,
                subscriber: "cust-42@isp".to_owned(),
                session: None,
                nas: Some("192.0.2.1".to_owned()),
                prefixes: vec![
                    net("100.64.0.2/32"),
                    net("2001:db8:1000:7::/64"),
                    net("2001:db8:1000:100::/56"),
                ],
            })
        );
        let response = accounting.response();
        assert_eq!(response[0], Code::AccountingResponse as u8);
        assert_eq!(response[1], bytes[1], "the identifier of the request");
        assert!(Packet::is_authentic_response(&response, &bytes, SECRET));
    }

    #[test]
    fn the_identity_comes_from_the_configured_attribute() {
        let mut packet = request(ACCT_STATUS_TYPE_STOP, &[]);
        rfc2865::add_user_name(&mut packet, "shared-login");
        rfc2865::add_class(&mut packet, &[0xde, 0xad, 0x01]);
        rfc2865::add_calling_station_id(&mut packet, "00:11:22:33:44:55");
        let bytes = packet.encode().unwrap();
        let identity = |attribute| {
            let Change::Session(change) = decode(&bytes, SECRET, attribute).unwrap().change else {
                panic!("a Stop is a session's change");
            };
            assert_eq!(change.kind, ChangeKind::Stop);
            change.subscriber
        };
        assert_eq!(identity(IdentityAttribute::UserName), "shared-login");
        assert_eq!(identity(IdentityAttribute::Class), "0xdead01");
        assert_eq!(
            identity(IdentityAttribute::CallingStationId),
            "00:11:22:33:44:55"
        );
    }

    #[test]
    fn bad_datagrams_are_rejected_by_reason() {
        let good = start("alice", [100, 64, 0, 2]);
        assert!(decode(&good, SECRET, IdentityAttribute::UserName).is_ok());
        let reject = |bytes: &[u8], secret: &[u8]| {
            decode(bytes, secret, IdentityAttribute::UserName).map(|_| ())
        };
        assert_eq!(reject(&good, b"wrong"), Err(Rejected::BadAuthenticator));
        assert_eq!(reject(&good[..19], SECRET), Err(Rejected::Truncated));
        assert_eq!(
            reject(&good[..good.len() - 1], SECRET),
            Err(Rejected::Truncated)
        );
        // Padding past the header's length is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 7]);
        assert_eq!(reject(&padded, SECRET), Ok(()));

        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(reject(&tampered, SECRET), Err(Rejected::BadAuthenticator));

        let mut access = Packet::new(Code::AccessRequest, SECRET);
        rfc2865::add_user_name(&mut access, "alice");
        assert_eq!(
            reject(&access.encode().unwrap(), SECRET),
            Err(Rejected::UnknownCode)
        );

        // An attribute whose length runs past the end, authenticated correctly.
        let mut truncated = request(ACCT_STATUS_TYPE_START, &[]);
        rfc2865::add_user_name(&mut truncated, "alice");
        let mut bytes = truncated.encode().unwrap();
        let last_attribute = bytes.len() - 7;
        assert_eq!(bytes[last_attribute], USER_NAME_TYPE);
        bytes[last_attribute + 1] = 40;
        sign(&mut bytes);
        assert_eq!(reject(&bytes, SECRET), Err(Rejected::MalformedAttribute));

        let mut no_user = request(ACCT_STATUS_TYPE_START, &[]);
        rfc2865::add_framed_ip_address(&mut no_user, &[100, 64, 0, 2].into());
        assert_eq!(
            reject(&no_user.encode().unwrap(), SECRET),
            Err(Rejected::MissingAttribute)
        );
        let mut failed = request(15, &[]);
        rfc2865::add_user_name(&mut failed, "alice");
        assert_eq!(
            reject(&failed.encode().unwrap(), SECRET),
            Err(Rejected::UnknownStatus)
        );
        let mut bad_prefix = request(ACCT_STATUS_TYPE_START, &[]);
        rfc2865::add_user_name(&mut bad_prefix, "alice");
        bad_prefix.add(AVP::from_bytes(FRAMED_IPV6_PREFIX_TYPE, &[0, 64, 0x20]));
        assert_eq!(
            reject(&bad_prefix.encode().unwrap(), SECRET),
            Err(Rejected::MalformedAttribute)
        );
    }

    #[test]
    fn accounting_on_and_off_end_the_sessions_of_the_nas_they_name() {
        let nas = |status: u32, attributes: &[AVP]| {
            let bytes = request(status, attributes).encode().unwrap();
            decode(&bytes, SECRET, IdentityAttribute::UserName).map(|accounting| accounting.change)
        };
        let restarted = |nas: &str| {
            Ok(Change::NasRestarted {
                nas: nas.to_owned(),
            })
        };
        let ip = AVP::from_ipv4(NAS_IP_ADDRESS_TYPE, &[192, 0, 2, 10].into());
        let ipv6 = AVP::from_ipv6(NAS_IPV6_ADDRESS_TYPE, &"2001:db8::10".parse().unwrap());
        let identifier = AVP::from_string(NAS_IDENTIFIER_TYPE, "bng-1.pop3");
        // The NAS's address first, its identifier next, the packet's source last.
        for status in [
            ACCT_STATUS_TYPE_ACCOUNTING_ON,
            ACCT_STATUS_TYPE_ACCOUNTING_OFF,
        ] {
            assert_eq!(
                nas(status, &[identifier.clone(), ip.clone()]),
                restarted("192.0.2.10")
            );
            assert_eq!(
                nas(status, &[identifier.clone(), ipv6.clone()]),
                restarted("2001:db8::10")
            );
            assert_eq!(
                nas(status, std::slice::from_ref(&identifier)),
                restarted("bng-1.pop3")
            );
            assert_eq!(nas(status, &[]), restarted("192.0.2.1"));
        }
        assert_eq!(
            nas(
                ACCT_STATUS_TYPE_ACCOUNTING_ON,
                &[AVP::from_bytes(NAS_IP_ADDRESS_TYPE, &[192, 0, 2])]
            ),
            Err(Rejected::MalformedAttribute)
        );
        // A session's packet names its NAS the same way.
        let mut start = request(ACCT_STATUS_TYPE_START, &[ip]);
        rfc2865::add_user_name(&mut start, "alice");
        let bytes = start.encode().unwrap();
        let Change::Session(change) = decode(&bytes, SECRET, IdentityAttribute::UserName)
            .unwrap()
            .change
        else {
            panic!("a Start is a session's change");
        };
        assert_eq!(change.nas.as_deref(), Some("192.0.2.10"));
    }

    #[test]
    fn the_most_specific_client_holds_the_secret() {
        let clients = [
            Client {
                prefix: net("10.0.0.0/8"),
                secret: b"wide".to_vec(),
            },
            Client {
                prefix: net("10.1.0.0/16"),
                secret: b"narrow".to_vec(),
            },
        ];
        let secret = |source: &str| {
            client_of(&clients, source.parse().unwrap()).map(|c| c.secret.as_slice())
        };
        assert_eq!(secret("10.1.2.3"), Some(&b"narrow"[..]));
        assert_eq!(secret("10.2.0.1"), Some(&b"wide"[..]));
        assert_eq!(secret("::ffff:10.1.0.1"), Some(&b"narrow"[..]));
        assert_eq!(secret("192.0.2.1"), None);
        assert!(!format!("{:?}", clients[0]).contains("wide"));
    }

    /// Recomputes the Request Authenticator of raw request bytes.
    fn sign(bytes: &mut [u8]) {
        let mut input = bytes[..4].to_vec();
        input.extend_from_slice(&[0; 16]);
        input.extend_from_slice(&bytes[HEADER_BYTES..]);
        input.extend_from_slice(SECRET);
        let digest = md5::compute(&input);
        bytes[4..HEADER_BYTES].copy_from_slice(&digest.0);
    }
}
