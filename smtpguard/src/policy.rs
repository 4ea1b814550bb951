//! The policy as the kernel maps should hold it: built from the configuration, the runtime
//! exemptions and relays, and resolved relay hostnames. Reconciling writes the difference
//! between this and what the maps hold.

use std::collections::BTreeMap;

use ipnet::IpNet;
use smtpguard_common::{EnforcementConfig, Origin, PrefixOrigin, SubscriberPolicy};

use crate::config::Config;

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPolicy {
    pub enforcement: EnforcementConfig,
    pub subscribers: BTreeMap<IpNet, SubscriberPolicy>,
    pub relays: BTreeMap<IpNet, PrefixOrigin>,
    pub exemptions: BTreeMap<IpNet, PrefixOrigin>,
}

impl DesiredPolicy {
    /// The configuration's part. Subscriber entries carry their position in the file, so an
    /// explanation can name the rule.
    pub fn from_config(config: &Config) -> Self {
        let config_origin = PrefixOrigin::new(Origin::Config);
        Self {
            enforcement: EnforcementConfig::new(
                &config.enforcement.ports,
                config.enforcement.unparseable,
            ),
            subscribers: (0..)
                .zip(&config.subscribers)
                .map(|(rule, range)| (range.prefix, SubscriberPolicy::new(range.mode, rule)))
                .collect(),
            relays: config
                .relays
                .iter()
                .map(|relay| (relay.prefix, config_origin))
                .collect(),
            exemptions: config
                .exemptions
                .iter()
                .map(|exemption| (exemption.prefix, config_origin))
                .collect(),
        }
    }

    /// Adds a relay prefix unless the configuration already has it (the file wins, so a
    /// runtime entry can be removed without touching the file's).
    pub fn add_relay(&mut self, prefix: IpNet, origin: Origin) {
        self.relays
            .entry(prefix)
            .or_insert(PrefixOrigin::new(origin));
    }

    /// Adds an exemption prefix unless the configuration already has it.
    pub fn add_exemption(&mut self, prefix: IpNet, origin: Origin) {
        self.exemptions
            .entry(prefix)
            .or_insert(PrefixOrigin::new(origin));
    }
}
