//! The policy block list an ISP publishes: its subscriber ranges minus the exempted and relay
//! ranges, i.e. the addresses that should never send mail directly to an MX.

use std::net::IpAddr;

use ipnet::IpNet;

/// `ranges` with every `hole` cut out, merged into the fewest prefixes.
pub fn subtract(ranges: &[IpNet], holes: &[IpNet]) -> Vec<IpNet> {
    let mut kept = Vec::new();
    for range in ranges {
        cut(*range, holes, &mut kept);
    }
    IpNet::aggregate(&kept)
}

fn cut(range: IpNet, holes: &[IpNet], kept: &mut Vec<IpNet>) {
    if holes.iter().any(|hole| hole.contains(&range)) {
        return;
    }
    if !holes.iter().any(|hole| range.contains(hole)) {
        kept.push(range);
        return;
    }
    // A hole lies inside: keep the halves, cutting further where the hole is.
    if let Ok(halves) = range.subnets(range.prefix_len() + 1) {
        for half in halves {
            cut(half, holes, kept);
        }
    }
}

/// `first - last` as the Spamhaus PBL ISP portal accepts ranges.
pub fn as_range(net: &IpNet) -> String {
    let (first, last): (IpAddr, IpAddr) = (net.network(), net.broadcast());
    format!("{first} - {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn holes_are_cut_out_and_the_rest_merged() {
        let kept = subtract(&nets(&["100.64.0.0/16"]), &nets(&["100.64.10.0/24"]));
        let expected = nets(&[
            "100.64.0.0/21",
            "100.64.8.0/23",
            "100.64.11.0/24",
            "100.64.12.0/22",
            "100.64.16.0/20",
            "100.64.32.0/19",
            "100.64.64.0/18",
            "100.64.128.0/17",
        ]);
        assert_eq!(kept, expected);
        let addresses: u64 = kept.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
        assert_eq!(addresses, 65_536 - 256, "exactly the hole is missing");
    }

    #[test]
    fn whole_ranges_and_ipv6() {
        assert!(subtract(&nets(&["192.0.2.0/24"]), &nets(&["192.0.2.0/23"])).is_empty());
        assert_eq!(
            subtract(&nets(&["2001:db8:1000::/36"]), &[]),
            nets(&["2001:db8:1000::/36"])
        );
        let kept = subtract(
            &nets(&["2001:db8:1000::/36"]),
            &nets(&["2001:db8:1000:10::/64"]),
        );
        assert!(
            !kept
                .iter()
                .any(|n| n.contains(&"2001:db8:1000:10::1".parse::<IpAddr>().unwrap()))
        );
        assert!(
            kept.iter()
                .any(|n| n.contains(&"2001:db8:1000:11::1".parse::<IpAddr>().unwrap()))
        );
        assert_eq!(
            as_range(&"100.64.0.0/10".parse().unwrap()),
            "100.64.0.0 - 100.127.255.255"
        );
    }
}
