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
//! budget the decision already uses. A failed tail call or a frame this code cannot answer
//! is dropped, as `drop` would have.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{bpf_skb_change_tail, bpf_skb_pull_data, bpf_xdp_adjust_tail},
};
use smtpguard_common::{Action, policy::REPLY_MAX_LEN};

use crate::{
    REPLY_ACTION,
    parse::{self, Addresses, Frame, Link, Transport},
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

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const TTL: u8 = 64;
const TCP_RST_ACK: u8 = 0x14;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PKT_FILTERED: u8 = 13;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_ADM_PROHIBITED: u8 = 1;
/// Van Jacobson uncompressed TCP over PPP (the protocol field's last byte): the reply is a
/// plain IP packet, so its PPP protocol becomes IPv4's.
const PPP_VJ_UNCOMPRESSED: u8 = 0x2f;
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

/// Remembers the action of the host whose SYN is about to be answered, for the reply
/// program the entry point tail-calls next on this CPU.
#[inline(always)]
pub fn prepare(action: Action) {
    if let Some(slot) = REPLY_ACTION.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { (*slot).action = action as u32 };
    }
}

/// The answer to the SYN in `frame`, or `None` when it cannot be answered.
#[inline(always)]
pub fn build(frame: Frame, link: Link) -> Option<Reply> {
    let scratch = REPLY_ACTION.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry, used by this program run alone (preemption off).
    let (action, bytes) = unsafe { (Action::from_u32((*scratch).action), &mut (*scratch).bytes) };
    let parse::Parsed::Ip(packet) = parse::parse(frame, link) else {
        return None;
    };
    let Transport::Tcp { offset: tcp, .. } = packet.transport else {
        return None;
    };
    // Needed by the verifier: offsets into the frame stay small and known.
    if packet.ip_offset > MAX_IP_OFFSET || tcp > 4096 {
        return None;
    }
    let vj = packet.pppoe_offset != 0
        && frame.bytes::<1>(packet.ip_offset - 1)?[0] == PPP_VJ_UNCOMPRESSED;
    let ports = frame.bytes::<4>(tcp)?;
    let seq = u32::from_be_bytes(frame.bytes::<4>(tcp + 4)?);
    // Whatever the last answer left: cleared in words, as `clear_destinations` does.
    let words = bytes.as_mut_ptr().cast::<u64>();
    for word in 0..MAX_LEN / 8 {
        // SAFETY: `MAX_LEN / 8` words of the buffer, which follows two `u32`s in a
        // `#[repr(C)]` map value and so starts 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(word), 0) };
    }
    let mut reply = Reply {
        bytes,
        len: 0,
        ip_offset: packet.ip_offset,
        pppoe_offset: packet.pppoe_offset,
        vj,
    };
    match (action, packet.addresses) {
        (Action::IcmpProhibited, Addresses::V4 { src, dst }) => {
            reply.quote::<QUOTE_V4>(frame, IPV4_HEADER_LEN + ICMP_HEADER_LEN)?;
            reply.icmp_v4(src, dst);
        }
        (Action::IcmpProhibited, Addresses::V6 { src, dst }) => {
            reply.quote::<QUOTE_V6>(frame, IPV6_HEADER_LEN + ICMP_HEADER_LEN)?;
            reply.icmp_v6(src, dst);
        }
        (Action::Reset, Addresses::V4 { src, dst }) => reply.reset_v4(src, dst, ports, seq),
        (Action::Reset, Addresses::V6 { src, dst }) => reply.reset_v6(src, dst, ports, seq),
        _ => return None,
    }
    Some(reply)
}

impl Reply {
    /// The frame's length once it holds the answer.
    #[inline(always)]
    pub fn frame_len(&self) -> usize {
        self.ip_offset + self.len
    }

    #[inline(always)]
    fn put(&mut self, at: usize, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            self.bytes[at + i] = bytes[i];
            i += 1;
        }
    }

    /// Copies the SYN's first `N` bytes from its IP header on to `at`, four at a time
    /// (a whole array would not fit the stack beside the rest).
    #[inline(always)]
    fn quote<const N: usize>(&mut self, frame: Frame, at: usize) -> Option<()> {
        for word in 0..N / 4 {
            let bytes = frame.bytes::<4>(self.ip_offset + 4 * word)?;
            self.put(at + 4 * word, &bytes);
        }
        Some(())
    }

    #[inline(always)]
    fn put16(&mut self, at: usize, value: u16) {
        self.put(at, &value.to_be_bytes());
    }

    #[inline(always)]
    fn ipv4_header(&mut self, len: usize, protocol: u8, src: [u8; 4], dst: [u8; 4]) {
        self.bytes[0] = 0x45;
        self.put16(2, len as u16);
        // Don't fragment: an answer this small never needs it.
        self.bytes[6] = 0x40;
        self.bytes[8] = TTL;
        self.bytes[9] = protocol;
        self.put(12, &src);
        self.put(16, &dst);
        let checksum = fold(sum(self.bytes, 0, IPV4_HEADER_LEN));
        self.put16(10, checksum);
    }

    #[inline(always)]
    fn ipv6_header(&mut self, payload_len: usize, next: u8, src: [u8; 16], dst: [u8; 16]) {
        self.bytes[0] = 0x60;
        self.put16(4, payload_len as u16);
        self.bytes[6] = next;
        self.bytes[7] = TTL;
        self.put(8, &src);
        self.put(24, &dst);
    }

    /// The reset of RFC 793 for a segment without ACK: sequence 0, acknowledging the SYN.
    #[inline(always)]
    fn tcp_reset(&mut self, at: usize, ports: [u8; 4], seq: u32) {
        self.put(at, &[ports[2], ports[3], ports[0], ports[1]]);
        self.put(at + 8, &seq.wrapping_add(1).to_be_bytes());
        self.bytes[at + 12] = (TCP_HEADER_LEN as u8 / 4) << 4;
        self.bytes[at + 13] = TCP_RST_ACK;
    }

    #[inline(never)]
    fn reset_v4(&mut self, src: [u8; 4], dst: [u8; 4], ports: [u8; 4], seq: u32) {
        self.len = RESET_V4_LEN;
        self.ipv4_header(RESET_V4_LEN, IPPROTO_TCP, dst, src);
        self.tcp_reset(IPV4_HEADER_LEN, ports, seq);
        // The pseudo-header: both addresses, the protocol and the TCP length.
        let pseudo = sum(self.bytes, 12, 8) + IPPROTO_TCP as u32 + TCP_HEADER_LEN as u32;
        let checksum = fold(pseudo + sum(self.bytes, IPV4_HEADER_LEN, TCP_HEADER_LEN));
        self.put16(IPV4_HEADER_LEN + 16, checksum);
    }

    #[inline(never)]
    fn reset_v6(&mut self, src: [u8; 16], dst: [u8; 16], ports: [u8; 4], seq: u32) {
        self.len = RESET_V6_LEN;
        self.ipv6_header(TCP_HEADER_LEN, IPPROTO_TCP, dst, src);
        self.tcp_reset(IPV6_HEADER_LEN, ports, seq);
        let pseudo = sum(self.bytes, 8, 32) + IPPROTO_TCP as u32 + TCP_HEADER_LEN as u32;
        let checksum = fold(pseudo + sum(self.bytes, IPV6_HEADER_LEN, TCP_HEADER_LEN));
        self.put16(IPV6_HEADER_LEN + 16, checksum);
    }

    /// From the SYN's destination, as if the server refused it: the gateway's own address
    /// is not known here. The quote is in place already.
    #[inline(never)]
    fn icmp_v4(&mut self, src: [u8; 4], dst: [u8; 4]) {
        self.len = ICMP_V4_LEN;
        self.ipv4_header(ICMP_V4_LEN, IPPROTO_ICMP, dst, src);
        let at = IPV4_HEADER_LEN;
        self.bytes[at] = ICMP_DEST_UNREACH;
        self.bytes[at + 1] = ICMP_PKT_FILTERED;
        let checksum = fold(sum(self.bytes, at, ICMP_HEADER_LEN + QUOTE_V4));
        self.put16(at + 2, checksum);
    }

    #[inline(never)]
    fn icmp_v6(&mut self, src: [u8; 16], dst: [u8; 16]) {
        self.len = ICMP_V6_LEN;
        let payload = ICMP_HEADER_LEN + QUOTE_V6;
        self.ipv6_header(payload, IPPROTO_ICMPV6, dst, src);
        let at = IPV6_HEADER_LEN;
        self.bytes[at] = ICMPV6_DEST_UNREACH;
        self.bytes[at + 1] = ICMPV6_ADM_PROHIBITED;
        let pseudo = sum(self.bytes, 8, 32) + IPPROTO_ICMPV6 as u32 + payload as u32;
        let checksum = fold(pseudo + sum(self.bytes, at, payload));
        self.put16(at + 2, checksum);
    }
}

/// The one's-complement sum of `len` bytes (an even number) from `at`, in 16-bit words.
#[inline(always)]
fn sum(bytes: &[u8; MAX_LEN], at: usize, len: usize) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i < len {
        total += u16::from_be_bytes([bytes[at + i], bytes[at + i + 1]]) as u32;
        i += 2;
    }
    total
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Writes the answer into the frame `[start, end)` that now has the answer's length: the
/// answer itself, the swapped MAC addresses on an Ethernet link, the PPPoE length.
#[inline(never)]
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
        let mac = start as *mut [u8; ETH_ALEN];
        // SAFETY: the first twelve bytes are inside the frame (checked above).
        unsafe {
            let destination = core::ptr::read_unaligned(mac);
            let source = core::ptr::read_unaligned(mac.add(1));
            core::ptr::write_unaligned(mac, source);
            core::ptr::write_unaligned(mac.add(1), destination);
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
        // The protocol field ends right before the IP header, one or two bytes long.
        let last = (reply.ip_offset & (MAX_IP_OFFSET - 1)).checked_sub(1)?;
        // Needed by the verifier.
        if start + last + 1 > end {
            return None;
        }
        // SAFETY: inside the frame (checked above).
        unsafe { *((start + last) as *mut u8) = PPP_IPV4 };
    }
    Some(())
}

#[inline(always)]
fn copy<const N: usize>(reply: &Reply, start: usize, end: usize) -> Option<()> {
    // The mask is for the verifier: `build` refused larger offsets.
    let at = start + (reply.ip_offset & (MAX_IP_OFFSET * 2 - 1));
    if at + N > end {
        return None;
    }
    let out = at as *mut u8;
    for i in 0..N {
        // SAFETY: `i < N`, and `N` bytes from `out` are inside the frame (checked above).
        unsafe { *out.add(i) = reply.bytes[i] };
    }
    Some(())
}

/// XDP: the frame becomes the answer, for `XDP_TX`.
#[inline(always)]
pub fn xdp(ctx: *mut xdp_md, start: usize, end: usize) -> Option<()> {
    let reply = build(
        Frame::new(start, end, end - start),
        Link::Ethernet { offloaded_tags: 0 },
    )?;
    let delta = reply.frame_len() as i32 - (end - start) as i32;
    // SAFETY: the program's own context; the helper moves the frame's end.
    if unsafe { bpf_xdp_adjust_tail(ctx, delta) } != 0 {
        return None;
    }
    // SAFETY: the context's `xdp_md`, valid for this program run; the packet pointers are
    // read again, as every helper that moves them requires.
    let (start, end) = unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) };
    write(&reply, start, end, true)
}

/// TC: the skb becomes the answer, to be redirected out of the interface it came in on.
/// `ethernet` is false for the L3 entry point, whose frames start with the IP header.
#[inline(always)]
pub fn tc(skb: *mut __sk_buff, link: Link, ethernet: bool) -> Option<()> {
    // SAFETY: the context's `__sk_buff`, valid for this program run.
    let (start, end, len) = unsafe {
        (
            (*skb).data as usize,
            (*skb).data_end as usize,
            (*skb).len as usize,
        )
    };
    let reply = build(Frame::new(start, end, len), link)?;
    // SAFETY: the program's own context; the helper trims or grows the packet.
    if unsafe { bpf_skb_change_tail(skb, reply.frame_len() as u32, 0) } != 0 {
        return None;
    }
    // The answer is written with direct access: all of it must be in the linear part.
    // SAFETY: as above.
    if unsafe { bpf_skb_pull_data(skb, reply.frame_len() as u32) } != 0 {
        return None;
    }
    // SAFETY: as above; the data pointers are read again after the helpers moved them.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    write(&reply, start, end, ethernet)
}
