//! The narrow column beside each chunk of records in PostgreSQL: every record's host and
//! attempts, and nothing else, so that a report with `--top` can sum each host's attempts over
//! the whole window without reading the records. Hosts are in address order within a chunk,
//! so each is written as its distance from the previous one, and both numbers as LEB128
//! varints: a snapshot of neighbouring hosts takes 2 or 3 bytes a record instead of 24.

use std::collections::{BinaryHeap, binary_heap::PeekMut};

/// Encodes `entries` (hosts in ascending order, with their attempts) into `out`.
pub fn encode(entries: impl IntoIterator<Item = ([u8; 16], u64)>, out: &mut Vec<u8>) {
    let mut previous = 0u128;
    for (host, attempts) in entries {
        let host = u128::from_be_bytes(host);
        put_varint(out, host.wrapping_sub(previous));
        put_varint(out, u128::from(attempts));
        previous = host;
    }
}

/// The (host, attempts) entries of an encoded column, the host as a number that orders as
/// its bytes do. A truncated column ends early.
pub fn decode(keys: &[u8]) -> impl Iterator<Item = (u128, u64)> + '_ {
    let mut rest = keys;
    let mut host = 0u128;
    std::iter::from_fn(move || {
        let delta = take_varint(&mut rest)?;
        let attempts = take_varint(&mut rest)?;
        host = host.wrapping_add(delta);
        Some((host, u64::try_from(attempts).unwrap_or(u64::MAX)))
    })
}

/// Merges lists of (host, attempts), each in ascending host order (`lists` makes them, once
/// per core), into one in ascending host order with each host's attempts summed over the
/// lists. The host space is cut at quantiles of the first list and each part merged on a
/// core of its own: every part decodes the lists up to its end, which costs little beside
/// the merge.
pub fn sum<L: Iterator<Item = (u128, u64)>>(
    lists: impl Fn() -> Vec<L> + Sync,
) -> Vec<([u8; 16], u64)> {
    let parts = crate::report::parallelism();
    let first: Vec<u128> = lists()
        .into_iter()
        .next()
        .map(|list| list.map(|(host, _)| host).collect())
        .unwrap_or_default();
    let cuts: Vec<u128> = std::iter::once(0)
        .chain((1..parts).filter_map(|part| first.get(part * first.len() / parts).copied()))
        .collect();
    let ranges: Vec<(u128, Option<u128>)> = cuts
        .iter()
        .enumerate()
        .map(|(index, low)| (*low, cuts.get(index + 1).copied()))
        .collect();
    crate::report::on_threads(&ranges, |&(low, high)| {
        merge(
            lists()
                .into_iter()
                .map(|list| {
                    list.skip_while(move |(host, _)| *host < low)
                        .take_while(move |(host, _)| high.is_none_or(|high| *host < high))
                })
                .collect(),
        )
    })
}

/// [`sum`] of one part, on this thread.
fn merge(mut lists: Vec<impl Iterator<Item = (u128, u64)>>) -> Vec<([u8; 16], u64)> {
    let mut heads: BinaryHeap<std::cmp::Reverse<(u128, u64, usize)>> = lists
        .iter_mut()
        .enumerate()
        .filter_map(|(index, list)| {
            list.next()
                .map(|(host, attempts)| std::cmp::Reverse((host, attempts, index)))
        })
        .collect();
    let mut totals: Vec<(u128, u64)> = Vec::new();
    while let Some(mut head) = heads.peek_mut() {
        let std::cmp::Reverse((host, attempts, index)) = *head;
        match totals.last_mut() {
            Some(last) if last.0 == host => last.1 = last.1.saturating_add(attempts),
            _ => totals.push((host, attempts)),
        }
        match lists[index].next() {
            Some((host, attempts)) => *head = std::cmp::Reverse((host, attempts, index)),
            None => {
                PeekMut::pop(head);
            }
        }
    }
    totals
        .into_iter()
        .map(|(host, attempts)| (host.to_be_bytes(), attempts))
        .collect()
}

fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(rest: &mut &[u8]) -> Option<u128> {
    let mut value = 0u128;
    for (index, byte) in rest.iter().enumerate() {
        let shift = 7 * index as u32;
        if shift >= 128 {
            return None;
        }
        value |= u128::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            *rest = &rest[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u128) -> [u8; 16] {
        n.to_be_bytes()
    }

    #[test]
    fn entries_come_back_as_written() {
        let entries = [
            (host(0), 0),
            (host(1), 1),
            (host(0xffff_6440_0002), 127),
            (host(0xffff_6440_0003), 128),
            (host(u128::MAX - 1), u64::MAX),
            (host(u128::MAX), 300),
        ];
        let mut encoded = Vec::new();
        encode(entries, &mut encoded);
        let decoded: Vec<([u8; 16], u64)> = decode(&encoded)
            .map(|(h, attempts)| (h.to_be_bytes(), attempts))
            .collect();
        assert_eq!(decoded, entries);
    }

    #[test]
    fn neighbouring_hosts_take_a_few_bytes() {
        let mut encoded = Vec::new();
        encode(
            (0..4096).map(|n| (host(0xffff_6440_0000 + n), 90)),
            &mut encoded,
        );
        // The first host's full distance, then one byte each for the distance and attempts.
        assert!(encoded.len() < 2 * 4096 + 16, "{} bytes", encoded.len());
    }

    #[test]
    fn a_truncated_column_ends_early() {
        let mut encoded = Vec::new();
        encode([(host(5), 1), (host(300), 2)], &mut encoded);
        encoded.pop();
        assert_eq!(decode(&encoded).collect::<Vec<_>>(), [(5, 1)]);
    }

    #[test]
    fn sums_are_the_same_in_parts() {
        // Hosts on both sides of every cut, in every list.
        let lists: Vec<Vec<(u128, u64)>> = (1..=5)
            .map(|list| {
                (0..1000)
                    .filter(|n| n % list == 0)
                    .map(|n| (n, list as u64))
                    .collect()
            })
            .collect();
        let totals = sum(|| lists.iter().map(|list| list.iter().copied()).collect());
        let expected: Vec<([u8; 16], u64)> = (0..1000u128)
            .map(|n| {
                (
                    host(n),
                    (1..=5).filter(|list| n % list == 0).map(|l| l as u64).sum(),
                )
            })
            .collect();
        assert_eq!(totals, expected);
    }

    #[test]
    fn sums_are_per_host_over_every_list() {
        let lists: [&[(u128, u64)]; 4] = [
            &[(1, 10), (3, 1), (9, 4)],
            &[],
            &[(3, 2), (4, 7)],
            &[(1, 1), (9, 6), (12, 3)],
        ];
        assert_eq!(
            sum(|| lists.iter().map(|list| list.iter().copied()).collect()),
            [
                (host(1), 11),
                (host(3), 3),
                (host(4), 7),
                (host(9), 10),
                (host(12), 3)
            ]
        );
    }
}
