//! Subscriber identities: which customer holds which address now (bindings from RADIUS
//! accounting or `smtpguard session`), and which customers are exempt whatever address they
//! hold. The agent keeps the current bindings in memory ([`Identities`]) beside the store that
//! keeps them with their history, so that an Interim-Update that changes nothing costs a
//! lookup, not a write.

pub mod radius;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::store::Binding;
pub use crate::store::Holder;

/// What an accounting packet or `smtpguard session` changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Session(SessionChange),
    /// Accounting-On or -Off: the NAS (re)started, so every session it announced is over.
    NasRestarted {
        nas: String,
    },
}

/// A session's change, from an accounting packet or `smtpguard session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionChange {
    pub kind: ChangeKind,
    pub subscriber: String,
    pub session: Option<String>,
    /// The NAS that announced it (see [`radius::nas_of`]); `None` for `smtpguard session`.
    pub nas: Option<String>,
    /// The addresses and prefixes the session holds (Start, Interim-Update) or gives up
    /// (Stop). A Stop without any gives up everything its session holds.
    pub prefixes: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Start or Interim-Update: the session holds exactly `prefixes` now.
    Hold,
    Stop,
}

/// The current bindings and the exempt identities.
#[derive(Debug, Default)]
pub struct Identities {
    current: BTreeMap<IpNet, Holder>,
    exempt: BTreeSet<String>,
}

impl Identities {
    pub fn new(current: Vec<Binding>, exempt: impl IntoIterator<Item = String>) -> Self {
        Self {
            current: current
                .into_iter()
                .map(|b| {
                    let holder = Holder {
                        subscriber: b.subscriber,
                        session: b.session,
                        nas: b.nas,
                    };
                    (b.prefix, holder)
                })
                .collect(),
            exempt: exempt.into_iter().collect(),
        }
    }

    pub fn holder(&self, prefix: &IpNet) -> Option<&Holder> {
        self.current.get(prefix)
    }

    /// Who holds `host` (a host prefix) now: through its own binding, or a wider bound
    /// prefix's (a delegated /56 holds its /64 hosts).
    pub fn covering(&self, host: IpNet) -> Option<&Holder> {
        (0..=host.prefix_len()).rev().find_map(|length| {
            let prefix = IpNet::new(host.network(), length).ok()?.trunc();
            self.current.get(&prefix)
        })
    }

    /// Whether `prefix` is bound to an exempt identity now.
    pub fn exempts(&self, prefix: &IpNet) -> bool {
        self.current
            .get(prefix)
            .is_some_and(|holder| self.exempt.contains(&holder.subscriber))
    }

    /// Every prefix bound to an exempt identity now.
    pub fn exempt_prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.current
            .iter()
            .filter(|(_, holder)| self.exempt.contains(&holder.subscriber))
            .map(|(prefix, _)| *prefix)
    }

    /// The prefixes `subscriber` holds now (in `session` only, when given).
    pub fn prefixes_of(&self, subscriber: &str, session: Option<Option<&str>>) -> Vec<IpNet> {
        self.current
            .iter()
            .filter(|(_, holder)| {
                holder.subscriber == subscriber
                    && session.is_none_or(|session| holder.session.as_deref() == session)
            })
            .map(|(prefix, _)| *prefix)
            .collect()
    }

    /// The prefixes whose sessions `nas` announced.
    pub fn prefixes_of_nas(&self, nas: &str) -> Vec<IpNet> {
        self.current
            .iter()
            .filter(|(_, holder)| holder.nas.as_deref() == Some(nas))
            .map(|(prefix, _)| *prefix)
            .collect()
    }

    pub fn bind(&mut self, prefix: IpNet, holder: Holder) {
        self.current.insert(prefix, holder);
    }

    pub fn unbind(&mut self, prefix: &IpNet) {
        self.current.remove(prefix);
    }

    pub fn set_exempt(&mut self, subscriber: &str, exempt: bool) {
        if exempt {
            self.exempt.insert(subscriber.to_owned());
        } else {
            self.exempt.remove(subscriber);
        }
    }

    /// Exactly `subscribers` are exempt from now on.
    pub fn set_exempt_identities(&mut self, subscribers: impl IntoIterator<Item = String>) {
        self.exempt = subscribers.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn holder(subscriber: &str, session: Option<&str>) -> Holder {
        Holder {
            subscriber: subscriber.to_owned(),
            session: session.map(str::to_owned),
            nas: session.map(|_| "bng-1".to_owned()),
        }
    }

    #[test]
    fn only_prefixes_of_exempt_identities_are_exempt() {
        let mut identities = Identities::new(Vec::new(), ["alice".to_owned()]);
        identities.bind(net("100.64.0.2/32"), holder("alice", Some("s1")));
        identities.bind(net("2001:db8:1000::/56"), holder("alice", Some("s1")));
        identities.bind(net("100.64.0.3/32"), holder("bob", None));
        assert!(identities.exempts(&net("100.64.0.2/32")));
        assert!(!identities.exempts(&net("100.64.0.3/32")));
        assert!(!identities.exempts(&net("100.64.0.4/32")));
        assert_eq!(
            identities.exempt_prefixes().collect::<Vec<_>>(),
            [net("100.64.0.2/32"), net("2001:db8:1000::/56")]
        );
        identities.set_exempt("bob", true);
        identities.set_exempt("alice", false);
        assert_eq!(
            identities.exempt_prefixes().collect::<Vec<_>>(),
            [net("100.64.0.3/32")]
        );
        assert_eq!(
            identities.prefixes_of("alice", Some(Some("s1"))),
            [net("100.64.0.2/32"), net("2001:db8:1000::/56")]
        );
        assert!(identities.prefixes_of("alice", Some(Some("s2"))).is_empty());
        assert_eq!(identities.prefixes_of("bob", None), [net("100.64.0.3/32")]);
        assert_eq!(
            identities.prefixes_of_nas("bng-1"),
            [net("100.64.0.2/32"), net("2001:db8:1000::/56")]
        );
        assert!(identities.prefixes_of_nas("bng-2").is_empty());
        let holder_of = |host: &str| {
            identities
                .covering(net(host))
                .map(|h| h.subscriber.as_str())
        };
        assert_eq!(holder_of("2001:db8:1000:ff::/64"), Some("alice"));
        assert_eq!(holder_of("2001:db8:1000:100::/64"), None);
        assert_eq!(holder_of("100.64.0.2/32"), Some("alice"));
        identities.unbind(&net("100.64.0.3/32"));
        assert!(identities.holder(&net("100.64.0.3/32")).is_none());
        identities.set_exempt_identities(["carol".to_owned()]);
        assert_eq!(identities.exempt_prefixes().count(), 0);
    }
}
