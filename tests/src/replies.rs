//! What holds of every answer smtpguard sends (`reject`), whatever the model says (the two
//! could share a mistake): it answers a SYN to an enforced port, from a source inside a
//! subscriber range whose action replies, not exempt, not to a relay, with the answer that
//! range asks for; and no host gets more answers than the largest bucket of the policy
//! allows. The differential test checks the frames the program answers in test runs; the
//! kernel oracle checks the answers it captures on the subscriber's wire, read with
//! [`CapturedReply::parse`].

use std::{collections::HashMap, net::IpAddr};

use smtpguard::model::{ModelPolicy, ip_packet};
use smtpguard_common::Action;

/// The hop limit smtpguard's answers leave with: every packet the gateway forwards toward
/// the subscriber has one less, so a captured packet with this hop limit came from the
/// gateway itself.
const REPLY_HOP_LIMIT: u8 = 64;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_RST: u8 = 0x04;

/// A SYN smtpguard answered, as far as its answer shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnsweredSyn {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `None` when the answer does not show it (an ICMP error quotes the first 8 bytes after
    /// the IP header, which are an IPv4 option or an IPv6 extension header when there are any).
    pub dst_port: Option<u16>,
    /// The answer sent: `Action::Reset` or `Action::IcmpProhibited`; `None` when not known
    /// (the differential test sees the verdict, not the answer).
    pub answer: Option<Action>,
}

/// An answer of smtpguard's on the subscriber's wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedReply {
    pub syn: AnsweredSyn,
    /// The answer's destination, which must be the SYN's source (an ICMP error names it
    /// twice: its destination and its quote's source).
    pub to: IpAddr,
}

impl CapturedReply {
    /// The answer in `frame` (any link layer a subscriber line has), or `None` for what is
    /// not one: anything forwarded, or not a TCP reset or an administratively-prohibited
    /// ICMP error.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let ip = ip_packet(frame)?;
        match ip.first()? >> 4 {
            4 => {
                let header_len = usize::from(ip[0] & 0x0f) * 4;
                if *ip.get(8)? != REPLY_HOP_LIMIT {
                    return None;
                }
                let (src, dst) = (v4(ip, 12)?, v4(ip, 16)?);
                let above = ip.get(header_len..)?;
                match ip[9] {
                    IPPROTO_TCP => reset(src, dst, above),
                    IPPROTO_ICMP if above.get(..2)? == [3, 13] => {
                        let quote = above.get(8..)?;
                        let quote_len = usize::from(quote.first()? & 0x0f) * 4;
                        let ports = (quote_len == 20 && *quote.get(9)? == IPPROTO_TCP)
                            .then(|| be16(quote, 22))
                            .flatten();
                        icmp(dst, v4(quote, 12)?, v4(quote, 16)?, ports)
                    }
                    _ => None,
                }
            }
            6 => {
                if *ip.get(7)? != REPLY_HOP_LIMIT {
                    return None;
                }
                let (src, dst) = (v6(ip, 8)?, v6(ip, 24)?);
                let above = ip.get(40..)?;
                match ip[6] {
                    IPPROTO_TCP => reset(src, dst, above),
                    IPPROTO_ICMPV6 if above.get(..2)? == [1, 1] => {
                        let quote = above.get(8..)?;
                        let ports = (*quote.get(6)? == IPPROTO_TCP)
                            .then(|| be16(quote, 42))
                            .flatten();
                        icmp(dst, v6(quote, 8)?, v6(quote, 24)?, ports)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `Err` when the answer's destination is not the SYN it quotes.
    pub fn check_addressed(&self) -> Result<(), String> {
        if self.to == self.syn.src {
            Ok(())
        } else {
            Err(format!(
                "an answer to {} quoting a SYN from {}",
                self.to, self.syn.src
            ))
        }
    }
}

/// A TCP reset from `src` to `dst` answers a SYN from `dst` to `src`'s port.
fn reset(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> Option<CapturedReply> {
    if tcp.get(13)? & TCP_RST == 0 {
        return None;
    }
    Some(CapturedReply {
        syn: AnsweredSyn {
            src: dst,
            dst: src,
            dst_port: be16(tcp, 0),
            answer: Some(Action::Reset),
        },
        to: dst,
    })
}

fn icmp(to: IpAddr, src: IpAddr, dst: IpAddr, dst_port: Option<u16>) -> Option<CapturedReply> {
    Some(CapturedReply {
        syn: AnsweredSyn {
            src,
            dst,
            dst_port,
            answer: Some(Action::IcmpProhibited),
        },
        to,
    })
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn v4(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::from(octets))
}

fn v6(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let octets: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::from(octets))
}

/// The answers each host got so far, by its host key (the source with the host prefix
/// applied), checked against the policy's largest bucket: the generated buckets are per hour
/// and do not refill within a run.
#[derive(Default)]
pub struct ReplyBudget {
    replies: HashMap<IpAddr, u64>,
}

impl ReplyBudget {
    /// `Err` saying why `policy` never lets smtpguard send this answer.
    pub fn check(&mut self, policy: &ModelPolicy, syn: &AnsweredSyn) -> Result<(), String> {
        let AnsweredSyn {
            src,
            dst,
            dst_port,
            answer,
        } = *syn;
        if let Some(port) = dst_port
            && !policy.ports.contains(&port)
        {
            return Err(format!("an answer to a SYN to port {port}, not enforced"));
        }
        // Outside every subscriber range, the action is `Drop` too.
        let (action, _) = policy.action(src);
        if !matches!(action, Action::Reset | Action::IcmpProhibited) {
            return Err(format!(
                "an answer to {src}, whose range (if any) does not reject ({action:?})"
            ));
        }
        if answer.is_some_and(|answer| answer != action) {
            return Err(format!(
                "an answer {answer:?} to {src}, whose range asks for {action:?}"
            ));
        }
        if policy.is_exempt(src) || policy.is_relay(dst) {
            return Err(format!(
                "an answer to {src} for {dst}: exempt, or to a relay"
            ));
        }
        let bucket = policy
            .actions
            .values()
            .map(|(_, limit)| u64::from(limit.rate))
            .max()
            .unwrap_or(0);
        let key = policy.host(src);
        let replies = self.replies.entry(key).or_default();
        *replies += 1;
        if *replies > bucket {
            return Err(format!(
                "answer {replies} to host {key} ({src}), beyond the largest bucket ({bucket})"
            ));
        }
        Ok(())
    }

    /// Answers counted so far.
    pub fn total(&self) -> u64 {
        self.replies.values().sum()
    }
}
