//! Rejecting: the frame of a refused SYN rewritten into its answer, a TCP reset or an ICMP
//! administratively-prohibited error, and sent back the way it came.
//!
//! The answer keeps the frame's link layer (the MAC addresses swapped, VLAN tags and the PPPoE
//! session header kept, the PPPoE length set to the answer's), so it reaches the subscriber
//! through the same access network. It replaces everything from the IP header on: the
//! IP header is written afresh (no IPv4 options, no IPv6 extension headers) from the
//! addresses and ports of the SYN, and the frame is cut or grown to the answer's length.
//!
//! This runs in programs of its own, reached by tail call from the entry points once the
//! decision is `Rejected`: the kernel verifies them apart from the entry points, whose
//! budget the decision already uses. The entry point leaves where its parser found the SYN's
//! headers in this CPU's scratch entry ([`prepare`]), so the frame is not parsed twice. A
//! failed tail call or a frame this code cannot answer is dropped, as `drop` would have.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{bpf_skb_change_tail, bpf_skb_pull_data, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
};
use smtpguard_common::{Action, ReplyScratch, policy::REPLY_MAX_LEN};

use crate::{
    REPLY_ACTION,
    parse::{Addresses, Packet, Transport},
};

const ETH_ALEN: usize = 6;
const PPPOE_HEADER_LEN: usize = 6;
const TCP_HEADER_LEN: usize = 20;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const ICMP_HEADER_LEN: usize = 8;
/// What an ICMP error quotes of the SYN: its first 28 (IPv4) or 48 (IPv6) bytes, the IP
/// header and the TCP ports and sequence number when the SYN has no IPv4 options or IPv6
/// extension headers (RFC 792 asks for the header and 8 bytes; RFC 4443 allows any prefix).
const QUOTE_V4: usize = IPV4_HEADER_LEN + 8;
const QUOTE_V6: usize = IPV6_HEADER_LEN + 8;
/// The answers' lengths from the IP header on.
const RESET_V4_LEN: usize = IPV4_HEADER_LEN + TCP_HEADER_LEN;
const RESET_V6_LEN: usize = IPV6_HEADER_LEN + TCP_HEADER_LEN;
const ICMP_V4_LEN: usize = IPV4_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_V4;
const ICMP_V6_LEN: usize = IPV6_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_V6;
/// The longest answer, the size of the buffer it is built in.
const MAX_LEN: usize = REPLY_MAX_LEN;
const _: () = assert!(ICMP_V6_LEN == MAX_LEN);
/// The link layer in front of the IP header is at most an Ethernet header, the VLAN tags
/// walked and a PPPoE session header with its protocol field; the bound is for the verifier.
const MAX_IP_OFFSET: usize = 64;
/// A bound on where the TCP header starts, for the verifier: far beyond any IPv4 header,
/// short of the longest IPv6 extension-header chain the parser walks (a SYN behind a longer
/// chain is dropped, not answered).
const MAX_TCP_OFFSET: usize = 4096;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const TTL: u8 = 64;
const TCP_RST_ACK: u8 = 0x14;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PKT_FILTERED: u8 = 13;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_ADM_PROHIBITED: u8 = 1;
/// A reply to Van Jacobson uncompressed TCP over PPP is a plain IP packet: its PPP protocol
/// becomes IPv4's.
const PPP_IPV4: u8 = 0x21;

/// An answer built from the IP header on (in this CPU's scratch entry), and where it goes in
/// the frame.
pub struct Reply {
    bytes: &'static mut [u8; MAX_LEN],
    len: usize,
    ip_offset: usize,
    pppoe_offset: usize,
    /// The SYN came as Van Jacobson uncompressed TCP.
    vj: bool,
}

/// Leaves the action of the host whose SYN is about to be answered, and where the parser
/// found the SYN's headers, for the reply program the entry point tail-calls next on this CPU.
#[inline(always)]
pub fn prepare(packet: &Packet, action: Action) {
    // A rejected segment is a TCP SYN. Were it anything else, the entry would stay as the
    // last reply program left it, taken, and the reply program would drop.
    let Transport::Tcp { offset: tcp, .. } = packet.transport else {
        return;
    };
    let Some(entry) = REPLY_ACTION.get_ptr_mut(0) else {
        return;
    };
    let ipv6 = match packet.addresses {
        Addresses::V4 { .. } => 0,
        Addresses::V6 { .. } => ReplyScratch::IPV6,
    };
    let vj = if packet.vj { ReplyScratch::VJ } else { 0 };
    // SAFETY: a per-CPU entry, written only by this CPU with preemption off. Every offset is
    // far below 64 KiB (see `parse::Frame::header`).
    unsafe {
        (*entry).action = action as u32;
        (*entry).ip_offset = packet.ip_offset as u16;
        (*entry).pppoe_offset = packet.pppoe_offset as u16;
        (*entry).tcp_offset = tcp as u16;
        (*entry).flags = ipv6 | vj;
    }
}

/// The answer to the SYN in the frame `[start, end)`, from what the entry point left in this
/// CPU's scratch entry, or `None` when it cannot be answered.
#[inline(always)]
pub fn build(start: usize, end: usize) -> Option<Reply> {
    let entry = REPLY_ACTION.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry, used by this program run alone (preemption off),
    // which the entry point that tail-called this program filled.
    let (action, ip_offset, pppoe_offset, tcp, flags, bytes) = unsafe {
        let entry = &mut *entry;
        let action = Action::from_u32(entry.action);
        // Taken: an entry is answered once, so a tail call without a fresh one drops.
        entry.action = Action::Drop as u32;
        (
            action,
            usize::from(entry.ip_offset),
            usize::from(entry.pppoe_offset),
            usize::from(entry.tcp_offset),
            entry.flags,
            &mut entry.bytes,
        )
    };
    // Needed by the verifier: offsets into the frame stay small and known.
    if ip_offset > MAX_IP_OFFSET || tcp > MAX_TCP_OFFSET {
        return None;
    }
    let (ip, tcp) = (start + ip_offset, start + tcp);
    // Needed by the verifier: the parser read these bytes already.
    if tcp + 8 > end {
        return None;
    }
    // SAFETY: inside the frame (checked above); see `load`.
    let (ports, seq) = unsafe { (load::<u32>(tcp), load::<u32>(tcp + 4)) };
    // Every word of the answer is written below, so what the last answer left needs no
    // clearing: the copy into the frame takes the answer's length alone.
    let mut reply = Reply {
        bytes,
        len: 0,
        ip_offset,
        pppoe_offset,
        vj: flags & ReplyScratch::VJ != 0,
    };
    let ipv6 = flags & ReplyScratch::IPV6 != 0;
    match action {
        Action::IcmpProhibited if ipv6 => {
            let quote =
                reply.quote::<{ QUOTE_V6 / 4 }>(ip, end, IPV6_HEADER_LEN + ICMP_HEADER_LEN)?;
            let (src, dst) = ipv6_addresses(ip, end)?;
            reply.icmp_v6(src, dst, quote);
        }
        Action::IcmpProhibited => {
            let quote =
                reply.quote::<{ QUOTE_V4 / 4 }>(ip, end, IPV4_HEADER_LEN + ICMP_HEADER_LEN)?;
            let (src, dst) = ipv4_addresses(ip, end)?;
            reply.icmp_v4(src, dst, quote);
        }
        Action::Reset if ipv6 => {
            let (src, dst) = ipv6_addresses(ip, end)?;
            reply.reset_v6(src, dst, ports, seq);
        }
        Action::Reset => {
            let (src, dst) = ipv4_addresses(ip, end)?;
            reply.reset_v4(src, dst, ports, seq);
        }
        _ => return None,
    }
    Some(reply)
}

/// The source and destination words of the IPv4 header at `ip`.
#[inline(always)]
fn ipv4_addresses(ip: usize, end: usize) -> Option<(u32, u32)> {
    // Needed by the verifier: the parser read the header already.
    if ip + IPV4_HEADER_LEN > end {
        return None;
    }
    // SAFETY: inside the frame (checked above); see `load`.
    Some(unsafe { (load::<u32>(ip + 12), load::<u32>(ip + 16)) })
}

/// The source and destination words of the IPv6 header at `ip`.
#[inline(always)]
fn ipv6_addresses(ip: usize, end: usize) -> Option<([u32; 4], [u32; 4])> {
    // Needed by the verifier: the parser read the header already.
    if ip + IPV6_HEADER_LEN > end {
        return None;
    }
    // SAFETY: inside the frame (checked above); see `load`.
    let words = |at: usize| unsafe { [0, 4, 8, 12].map(|i| load::<u32>(at + i)) };
    Some((words(ip + 8), words(ip + 24)))
}

/// Four bytes in memory order as the word a load of them gives: the answer is read from the
/// SYN, written and summed in such words. The Internet checksum is the same sum in either
/// byte order (RFC 1071, 2.B), so a sum of these words, folded and stored the same way, is the
/// checksum's bytes.
#[inline(always)]
const fn word(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

impl Reply {
    /// The frame's length once it holds the answer.
    #[inline(always)]
    pub fn frame_len(&self) -> usize {
        self.ip_offset + self.len
    }

    /// Writes `words` at byte `at` (a multiple of four) and returns their sum.
    #[inline(always)]
    fn put<const N: usize>(&mut self, at: usize, words: [u32; N]) -> u64 {
        let out = self.bytes.as_mut_ptr().cast::<u32>();
        let mut total = 0u64;
        for (i, value) in words.into_iter().enumerate() {
            // SAFETY: `at / 4 + i` words stay inside the buffer (constant offsets of the
            // answers below, all within `MAX_LEN`), which follows two `u32`s in a
            // `#[repr(C)]` map value and so starts 8-byte aligned.
            unsafe { out.add(at / 4 + i).write(value) };
            total += u64::from(value);
        }
        total
    }

    /// Stores the checksum of `sum` (of words as [`word`] reads them) at byte `at`.
    #[inline(always)]
    fn checksum(&mut self, at: usize, sum: u64) {
        let out = self.bytes.as_mut_ptr().cast::<u16>();
        // SAFETY: `at` is even and inside the buffer (constant offsets below); the buffer
        // is 8-byte aligned (see `put`).
        unsafe { out.add(at / 2).write(fold(sum)) };
    }

    /// The SYN's first `N` words from its IP header (at `from` in the frame, which ends at
    /// `end`), copied to byte `at` of the answer; returns their sum.
    #[inline(always)]
    fn quote<const N: usize>(&mut self, from: usize, end: usize, at: usize) -> Option<u64> {
        // Needed by the verifier: the words are inside the frame.
        if from + 4 * N > end {
            return None;
        }
        let out = self.bytes.as_mut_ptr().cast::<u32>();
        let mut total = 0u64;
        for i in 0..N {
            // SAFETY: inside the frame (checked above; see `load` for the alignment); the
            // answer's words as in `put`.
            unsafe {
                let value = load::<u32>(from + 4 * i);
                out.add(at / 4 + i).write(value);
                total += u64::from(value);
            }
        }
        Some(total)
    }

    /// The IPv4 header of an answer of `len` bytes; returns the sum of its addresses, which
    /// the TCP pseudo-header repeats.
    #[inline(always)]
    fn ipv4_header(&mut self, len: usize, protocol: u8, src: u32, dst: u32) -> u64 {
        let [len_high, len_low] = (len as u16).to_be_bytes();
        let addresses = u64::from(src) + u64::from(dst);
        // Don't fragment: an answer this small never needs it. The checksum word is 0 while
        // the header is summed.
        let sum = self.put(
            0,
            [
                word([0x45, 0, len_high, len_low]),
                word([0, 0, 0x40, 0]),
                word([TTL, protocol, 0, 0]),
                src,
                dst,
            ],
        );
        self.checksum(10, sum);
        addresses
    }

    /// The IPv6 header; returns the sum of the upper-layer checksum's pseudo-header (RFC
    /// 8200, 8.1): both addresses, the payload length and the next header.
    #[inline(always)]
    fn ipv6_header(&mut self, payload_len: usize, next: u8, src: [u32; 4], dst: [u32; 4]) -> u64 {
        let [len_high, len_low] = (payload_len as u16).to_be_bytes();
        self.put(
            0,
            [word([0x60, 0, 0, 0]), word([len_high, len_low, next, TTL])],
        );
        self.put(8, src)
            + self.put(24, dst)
            + u64::from(word((payload_len as u32).to_be_bytes()))
            + u64::from(word([0, 0, 0, next]))
    }

    /// The reset of RFC 793 for a segment without ACK: sequence 0, acknowledging the SYN;
    /// returns the sum of its words. `ports` and `seq` are the SYN's words as loaded.
    #[inline(always)]
    fn tcp_reset(&mut self, at: usize, ports: u32, seq: u32) -> u64 {
        self.put(
            at,
            [
                // The two ports swapped: the halves of the word, in either byte order.
                ports.rotate_left(16),
                0,
                u32::from_be(seq).wrapping_add(1).to_be(),
                word([(TCP_HEADER_LEN as u8 / 4) << 4, TCP_RST_ACK, 0, 0]),
                0,
            ],
        )
    }

    #[inline(always)]
    fn reset_v4(&mut self, src: u32, dst: u32, ports: u32, seq: u32) {
        self.len = RESET_V4_LEN;
        let addresses = self.ipv4_header(RESET_V4_LEN, IPPROTO_TCP, dst, src);
        // The pseudo-header: both addresses, the protocol and the TCP length.
        let pseudo = addresses + u64::from(word([0, IPPROTO_TCP, 0, TCP_HEADER_LEN as u8]));
        let tcp = self.tcp_reset(IPV4_HEADER_LEN, ports, seq);
        self.checksum(IPV4_HEADER_LEN + 16, pseudo + tcp);
    }

    #[inline(always)]
    fn reset_v6(&mut self, src: [u32; 4], dst: [u32; 4], ports: u32, seq: u32) {
        self.len = RESET_V6_LEN;
        let pseudo = self.ipv6_header(TCP_HEADER_LEN, IPPROTO_TCP, dst, src);
        let tcp = self.tcp_reset(IPV6_HEADER_LEN, ports, seq);
        self.checksum(IPV6_HEADER_LEN + 16, pseudo + tcp);
    }

    /// From the SYN's destination, as if the server refused it: the gateway's own address
    /// is not known here. `quote` is the sum of the quote, in place already.
    #[inline(always)]
    fn icmp_v4(&mut self, src: u32, dst: u32, quote: u64) {
        self.len = ICMP_V4_LEN;
        self.ipv4_header(ICMP_V4_LEN, IPPROTO_ICMP, dst, src);
        let at = IPV4_HEADER_LEN;
        let header = self.put(at, [word([ICMP_DEST_UNREACH, ICMP_PKT_FILTERED, 0, 0]), 0]);
        self.checksum(at + 2, header + quote);
    }

    #[inline(always)]
    fn icmp_v6(&mut self, src: [u32; 4], dst: [u32; 4], quote: u64) {
        self.len = ICMP_V6_LEN;
        let payload = ICMP_HEADER_LEN + QUOTE_V6;
        let pseudo = self.ipv6_header(payload, IPPROTO_ICMPV6, dst, src);
        let at = IPV6_HEADER_LEN;
        let header = self.put(
            at,
            [word([ICMPV6_DEST_UNREACH, ICMPV6_ADM_PROHIBITED, 0, 0]), 0],
        );
        self.checksum(at + 2, pseudo + header + quote);
    }
}

/// The one's-complement sum `sum` folded to 16 bits and complemented.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// A `T` read from packet memory at `at`, in one load.
///
/// # Safety
///
/// `size_of::<T>()` bytes from `at` are inside the packet. The address need not be aligned:
/// behind a 14-byte Ethernet header the IP header is two bytes off a word boundary, which the
/// verifier allows for packet memory on architectures with efficient unaligned access (it
/// refuses the program elsewhere, never misreads) and their JITs execute as one load. Read
/// as unaligned, LLVM's BPF backend would split it into single bytes.
#[inline(always)]
unsafe fn load<T: Copy>(at: usize) -> T {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::read_volatile(at as *const T) }
}

/// A `T` stored into packet memory at `at`, in one store; as for [`load`].
///
/// # Safety
///
/// `size_of::<T>()` bytes from `at` are inside the packet.
#[inline(always)]
unsafe fn store<T: Copy>(at: usize, value: T) {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::write_volatile(at as *mut T, value) };
}

/// Writes the answer into the frame `[start, end)` that now has the answer's length: the
/// answer itself, the swapped MAC addresses on an Ethernet link, the PPPoE length.
#[inline(always)]
fn write(reply: &Reply, start: usize, end: usize, ethernet: bool) -> Option<()> {
    // One copy per answer length: a constant length is what the verifier can check once.
    match reply.len {
        RESET_V4_LEN => copy::<RESET_V4_LEN>(reply, start, end)?,
        RESET_V6_LEN => copy::<RESET_V6_LEN>(reply, start, end)?,
        ICMP_V4_LEN => copy::<ICMP_V4_LEN>(reply, start, end)?,
        _ => copy::<ICMP_V6_LEN>(reply, start, end)?,
    }
    if ethernet {
        // Needed by the verifier: the MAC addresses are inside the frame.
        if start + 2 * ETH_ALEN > end {
            return None;
        }
        // SAFETY: the first twelve bytes are inside the frame (checked above); the halves
        // are read before either is written.
        unsafe {
            let destination = (load::<u32>(start), load::<u16>(start + 4));
            let source = (
                load::<u16>(start + ETH_ALEN),
                load::<u32>(start + ETH_ALEN + 2),
            );
            store(start, source.0);
            store(start + 2, source.1);
            store(start + ETH_ALEN, destination.0);
            store(start + ETH_ALEN + 4, destination.1);
        }
    }
    if reply.pppoe_offset != 0 {
        let length_at = (reply.pppoe_offset & (MAX_IP_OFFSET - 1)) + 4;
        // Needed by the verifier.
        if start + length_at + 2 > end {
            return None;
        }
        let length = (reply.frame_len() - reply.pppoe_offset - PPPOE_HEADER_LEN) as u16;
        let field = (start + length_at) as *mut [u8; 2];
        // SAFETY: inside the frame (checked above).
        unsafe { core::ptr::write_unaligned(field, length.to_be_bytes()) };
    }
    if reply.vj {
        // The protocol field ends right before the IP header, one or two bytes long. The
        // mask comes after the subtraction for the verifier: LLVM would otherwise fold the
        // `- 1` into the store's constant offset, below the range the test proves.
        let last = reply.ip_offset.checked_sub(1)? & (MAX_IP_OFFSET - 1);
        // Needed by the verifier. Two bytes, the field's last and the IP header's first: a
        // test of one LLVM turns into `start + last >= end`, from which the verifier learns
        // no readable range.
        if start + last + 2 > end {
            return None;
        }
        // SAFETY: inside the frame (checked above).
        unsafe { *((start + last) as *mut u8) = PPP_IPV4 };
    }
    Some(())
}

/// The answer's `N` bytes into the frame, a word at a time: eight bytes per store, and four
/// for an answer whose length is not a multiple of eight.
#[inline(always)]
fn copy<const N: usize>(reply: &Reply, start: usize, end: usize) -> Option<()> {
    // The mask is for the verifier: `build` refused larger offsets.
    let at = start + (reply.ip_offset & (MAX_IP_OFFSET * 2 - 1));
    if at + N > end {
        return None;
    }
    let words = reply.bytes.as_ptr().cast::<u64>();
    for i in 0..N / 8 {
        // SAFETY: `8 * i + 8 <= N` bytes of the frame from `at` (checked above); the buffer
        // is 8-byte aligned (see `Reply::put`).
        unsafe { store(at + 8 * i, *words.add(i)) };
    }
    if N % 8 == 4 {
        let tail = N - 4;
        // SAFETY: as above, the last four bytes.
        unsafe { store(at + tail, *reply.bytes.as_ptr().add(tail).cast::<u32>()) };
    }
    Some(())
}

/// XDP: the frame becomes the answer, for `XDP_TX`.
#[inline(always)]
pub fn xdp(ctx: *mut xdp_md, start: usize, end: usize) -> Option<()> {
    let reply = build(start, end)?;
    let delta = reply.frame_len() as i32 - (end - start) as i32;
    // The helper only where the length changes (a reset to a SYN without options or padding
    // keeps it).
    let (start, end) = if delta == 0 {
        (start, end)
    } else {
        // SAFETY: the program's own context; the helper moves the frame's end.
        if unsafe { bpf_xdp_adjust_tail(ctx, delta) } != 0 {
            // No room after the frame: veth and generic XDP hand the program a frame that
            // ends its buffer (`veth_convert_skb_to_xdp_buff`, `netif_receive_generic_xdp`),
            // so an answer longer than the SYN grows at the front instead, into the headroom
            // XDP always has.
            grow_at_head(ctx, delta, reply.ip_offset)?;
        }
        // SAFETY: the context's `xdp_md`, valid for this program run; the packet pointers are
        // read again, as every helper that moves them requires.
        unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) }
    };
    write(&reply, start, end, true)
}

/// Grows the frame by `delta` bytes at its front and moves its link layer (the `ip_offset`
/// bytes before the IP header, which the answer keeps) there; what follows is overwritten by
/// the answer.
#[inline(always)]
fn grow_at_head(ctx: *mut xdp_md, delta: i32, ip_offset: usize) -> Option<()> {
    if delta <= 0 || delta as usize > MAX_LEN {
        return None;
    }
    // SAFETY: the program's own context; the helper moves the frame's start.
    if unsafe { bpf_xdp_adjust_head(ctx, -delta) } != 0 {
        return None;
    }
    // SAFETY: as in `xdp`.
    let (start, end) = unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) };
    // Needed by the verifier for the destination: an answer that grows is an ICMP error,
    // longer than the longest link layer.
    if start + MAX_IP_OFFSET > end {
        return None;
    }
    let from = start + delta as usize;
    // Eight bytes at a time, from the front: each word is read before anything is written
    // over it, since the destination lies `delta` bytes before the source.
    for i in 0..MAX_IP_OFFSET / 8 {
        if 8 * i >= ip_offset {
            break;
        }
        // Needed by the verifier.
        if from + 8 * i + 8 > end {
            return None;
        }
        // SAFETY: both words are inside the frame (checked above).
        unsafe { store(start + 8 * i, load::<u64>(from + 8 * i)) };
    }
    Some(())
}

/// TC: the skb becomes the answer, to be redirected out of the interface it came in on.
/// `ethernet` is false for the L3 entry point, whose frames start with the IP header.
#[inline(always)]
pub fn tc(skb: *mut __sk_buff, ethernet: bool) -> Option<()> {
    // SAFETY: the context's `__sk_buff`, valid for this program run.
    let (start, end, len) = unsafe {
        (
            (*skb).data as usize,
            (*skb).data_end as usize,
            (*skb).len as usize,
        )
    };
    let reply = build(start, end)?;
    let (start, end) = if reply.frame_len() == len {
        (start, end)
    } else {
        // SAFETY: the program's own context; the helper trims or grows the packet.
        if unsafe { bpf_skb_change_tail(skb, reply.frame_len() as u32, 0) } != 0
            // The kernel refuses to cut an skb short of its transport header
            // (`__bpf_skb_min_len`), which the sender's stack may have set deep into a long
            // SYN (`skb_probe_transport_header`). A shorter answer then keeps the frame's
            // length: its IP and PPPoE lengths say where it ends, and the receiver trims the
            // rest of the SYN that trails it (`ip_rcv_core`, `ipv6_rcv`, `pppoe_rcv`).
            && reply.frame_len() > len
        {
            return None;
        }
        // SAFETY: as above; the data pointers are read again after the helper moved them.
        unsafe { ((*skb).data as usize, (*skb).data_end as usize) }
    };
    // The answer is written with direct access: all of it must be in the linear part, which
    // the entry point's pull made it for any SYN this short.
    if end - start >= reply.frame_len() {
        return write(&reply, start, end, ethernet);
    }
    // SAFETY: as above.
    if unsafe { bpf_skb_pull_data(skb, reply.frame_len() as u32) } != 0 {
        return None;
    }
    // SAFETY: as above; the data pointers are read again after the helper moved them.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    write(&reply, start, end, ethernet)
}
