//! Valid but dangerous policy changes: a config or a runtime entry that would let every host
//! of a subscriber range mail any MX host, or that would break the subscribers' real mail.
//! `config check` prints them as warnings; `reload`, `exempt add` and `relay add` refuse them
//! unless forced (a signal cannot force, so SIGHUP refuses them too).
//!
//! Some need the running config to compare with (relays dropped, enforcement switched off,
//! subscriber ranges replaced); the others are dangerous on their own, and count as a change
//! only when the running config does not have them already (once forced, a danger does not
//! make every later reload need --force).

use std::fmt;

use ipnet::IpNet;

use smtpguard_common::Mode;

use super::Config;

/// Relays shorter than these lengths cover more of the Internet than any smarthost cluster
/// does (a /7 is 32 million IPv4 addresses): subscribers could mail every MX host in them.
const BROADEST_RELAY_V4: u8 = 8;
const BROADEST_RELAY_V6: u8 = 16;

/// One dangerous setting, named as the file or the CLI names it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Danger {
    /// An exemption contains a whole enforced subscriber range.
    ExemptsWholeRange { exemption: IpNet, range: IpNet },
    /// A relay covers a large part of the Internet.
    BroadRelay { relay: IpNet },
    /// The running config has relays, the new one none.
    RelaysDropped { before: usize },
    /// The running config enforces some ranges, the new one none.
    EnforcementDropped { enforced_before: Vec<IpNet> },
    /// None of the running config's subscriber ranges is covered by the new one.
    SubscribersReplaced { before: Vec<IpNet> },
}

impl fmt::Display for Danger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Danger::ExemptsWholeRange { exemption, range } => write!(
                f,
                "exemption {exemption} covers the whole enforced subscriber range {range}: every \
                 host in it could send mail straight to any MX host"
            ),
            Danger::BroadRelay { relay } => write!(
                f,
                "relay {relay} covers a large part of the Internet (shorter than /{} for IPv4, \
                 /{} for IPv6): subscribers could send mail straight to any MX host in it",
                BROADEST_RELAY_V4, BROADEST_RELAY_V6
            ),
            Danger::RelaysDropped { before } => write!(
                f,
                "[[relays]] is empty but the running config has {before}: subscribers' mail to \
                 the ISP's smarthosts on the enforced ports would be blocked"
            ),
            Danger::EnforcementDropped { enforced_before } => write!(
                f,
                "every [[subscribers]] range is mode = \"monitor\" but the running config \
                 enforces {}: nothing would be blocked any more",
                join(enforced_before)
            ),
            Danger::SubscribersReplaced { before } => write!(
                f,
                "[[subscribers]] covers none of the running config's ranges ({}): those \
                 subscribers would no longer be policed",
                join(before)
            ),
        }
    }
}

/// Several dangers in one line; `;` apart, since a danger may name a list itself.
pub fn describe(dangers: &[Danger]) -> String {
    dangers
        .iter()
        .map(Danger::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn join(prefixes: &[IpNet]) -> String {
    prefixes
        .iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What is dangerous about `next`, alone and, when given, compared with the `running` config.
pub fn dangers(running: Option<&Config>, next: &Config) -> Vec<Danger> {
    let mut found = dangers_alone(next);
    let Some(running) = running else {
        return found;
    };
    let already = dangers_alone(running);
    found.retain(|danger| !already.contains(danger));
    let relays = |config: &Config| config.relays.len() + config.relay_hosts.len();
    if relays(running) > 0 && relays(next) == 0 {
        found.push(Danger::RelaysDropped {
            before: relays(running),
        });
    }
    let enforced = |config: &Config| -> Vec<IpNet> {
        config
            .subscribers
            .iter()
            .filter(|s| s.mode == Mode::Enforce)
            .map(|s| s.prefix)
            .collect()
    };
    if !enforced(running).is_empty() && enforced(next).is_empty() {
        found.push(Danger::EnforcementDropped {
            enforced_before: enforced(running),
        });
    }
    let still_covered = |old: &IpNet| next.subscribers.iter().any(|s| s.prefix.contains(old));
    if !running.subscribers.iter().any(|s| still_covered(&s.prefix)) {
        found.push(Danger::SubscribersReplaced {
            before: running.subscribers.iter().map(|s| s.prefix).collect(),
        });
    }
    found
}

/// The dangers `config` holds by itself: whole-range exemptions and broad relays.
fn dangers_alone(config: &Config) -> Vec<Danger> {
    let mut found: Vec<Danger> = config
        .exemptions
        .iter()
        .flat_map(|e| exemption_dangers(config, e.prefix))
        .collect();
    found.extend(config.relays.iter().filter_map(|r| relay_danger(r.prefix)));
    found
}

/// What is dangerous about exempting `prefix` under `config`: each enforced subscriber range
/// it covers whole.
pub fn exemption_dangers(config: &Config, prefix: IpNet) -> Vec<Danger> {
    config
        .subscribers
        .iter()
        .filter(|s| s.mode == Mode::Enforce && prefix.contains(&s.prefix))
        .map(|s| Danger::ExemptsWholeRange {
            exemption: prefix,
            range: s.prefix,
        })
        .collect()
}

/// Whether `prefix` is too broad a relay.
pub fn relay_danger(prefix: IpNet) -> Option<Danger> {
    let broadest = match prefix {
        IpNet::V4(_) => BROADEST_RELAY_V4,
        IpNet::V6(_) => BROADEST_RELAY_V6,
    };
    (prefix.prefix_len() < broadest).then_some(Danger::BroadRelay { relay: prefix })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "2001:db8:1000::/36"
[[relays]]
prefix = "192.0.2.25/32"
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("danger.toml")).unwrap()
    }

    fn found(running: Option<&str>, next: &str) -> Vec<String> {
        let running = running.map(config);
        dangers(running.as_ref(), &config(next))
            .iter()
            .map(Danger::to_string)
            .collect()
    }

    #[test]
    fn an_ordinary_change_is_not_dangerous() {
        let next = format!(
            "{BASE}[[exemptions]]\nprefix = \"100.64.10.0/24\"\nreason = \"business\"\n\
             [[relays]]\nprefix = \"198.51.100.0/24\"\n"
        );
        assert_eq!(found(Some(BASE), &next), Vec::<String>::new());
        assert_eq!(found(None, BASE), Vec::<String>::new());
    }

    #[test]
    fn whole_range_exemptions_are_dangerous_alone() {
        let next = format!(
            "{BASE}[[exemptions]]\nprefix = \"100.64.0.0/10\"\nreason = \"oops\"\n\
             [[subscribers]]\nprefix = \"0.0.0.0/0\"\n\
             [[exemptions]]\nprefix = \"0.0.0.0/0\"\nreason = \"everyone\"\n"
        );
        assert_eq!(
            found(None, &next),
            [
                "exemption 100.64.0.0/10 covers the whole enforced subscriber range \
                 100.64.0.0/10: every host in it could send mail straight to any MX host",
                "exemption 0.0.0.0/0 covers the whole enforced subscriber range 100.64.0.0/10: \
                 every host in it could send mail straight to any MX host",
                "exemption 0.0.0.0/0 covers the whole enforced subscriber range 0.0.0.0/0: \
                 every host in it could send mail straight to any MX host",
            ]
        );
        // A monitor-mode range lets mail through anyway: exempting it whole changes nothing.
        let monitor = "[[subscribers]]\nprefix = \"100.64.0.0/10\"\nmode = \"monitor\"\n\
                       [[exemptions]]\nprefix = \"100.64.0.0/10\"\nreason = \"r\"\n";
        assert_eq!(found(None, monitor), Vec::<String>::new());
    }

    #[test]
    fn broad_relays_are_dangerous_alone() {
        for (relay, dangerous) in [
            ("0.0.0.0/0", true),
            ("::/0", true),
            ("64.0.0.0/2", true),
            ("10.0.0.0/7", true),
            ("10.0.0.0/8", false),
            ("2000::/15", true),
            ("2001::/16", false),
        ] {
            let prefix: IpNet = relay.parse().unwrap();
            assert_eq!(relay_danger(prefix).is_some(), dangerous, "{relay}");
        }
    }

    #[test]
    fn changes_against_the_running_config() {
        let no_relays = "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n\
                         [[subscribers]]\nprefix = \"2001:db8:1000::/36\"\n";
        assert_eq!(
            found(Some(BASE), no_relays),
            [
                "[[relays]] is empty but the running config has 1: subscribers' mail to the \
              ISP's smarthosts on the enforced ports would be blocked"
            ]
        );
        // Alone, a config without relays is fine: a new installation may have none.
        assert_eq!(found(None, no_relays), Vec::<String>::new());

        let monitor = BASE.replace(
            "\"\n[[subscribers]]",
            "\"\nmode = \"monitor\"\n[[subscribers]]",
        );
        let monitor = monitor.replace("/36\"\n", "/36\"\nmode = \"monitor\"\n");
        assert_eq!(
            found(Some(BASE), &monitor),
            [
                "every [[subscribers]] range is mode = \"monitor\" but the running config \
              enforces 100.64.0.0/10, 2001:db8:1000::/36: nothing would be blocked any more"
            ]
        );
        // From monitor to monitor (a rollout that has not started) is no change.
        assert_eq!(found(Some(&monitor), &monitor), Vec::<String>::new());

        let replaced = "[[subscribers]]\nprefix = \"10.0.0.0/8\"\n\
                        [[relays]]\nprefix = \"192.0.2.25/32\"\n";
        assert_eq!(
            found(Some(BASE), replaced),
            [
                "[[subscribers]] covers none of the running config's ranges (100.64.0.0/10, \
              2001:db8:1000::/36): those subscribers would no longer be policed"
            ]
        );
        // One range kept (here even widened) is an ordinary change.
        let widened = "[[subscribers]]\nprefix = \"100.0.0.0/8\"\n\
                       [[relays]]\nprefix = \"192.0.2.25/32\"\n";
        assert_eq!(found(Some(BASE), widened), Vec::<String>::new());
    }

    #[test]
    fn a_danger_already_running_is_no_change() {
        let forced =
            format!("{BASE}[[exemptions]]\nprefix = \"100.64.0.0/10\"\nreason = \"forced once\"\n");
        assert_eq!(found(Some(&forced), &forced), Vec::<String>::new());
        assert_eq!(found(Some(BASE), &forced).len(), 1);
        // Alone (config check without --against) it is still reported.
        assert_eq!(found(None, &forced).len(), 1);
    }
}
