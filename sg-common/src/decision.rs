//! Verdicts, the step of the evaluation that produced them, and the reasons a frame
//! counts as malformed. Kept as integer constants so they can live in map values.

/// What the program did with a packet (`Decision::verdict`).
pub mod verdict {
    pub const PASS: u8 = 0;
    pub const DROP: u8 = 1;
}

/// Which step of the evaluation (docs/rule-model.md#evaluation-order) decided
/// (`Decision::step`).
pub mod step {
    /// Not an IP packet: always passes.
    pub const NOT_IP: u8 = 0;
    /// Malformed IP packet: dropped, counted under `Decision::reason`.
    pub const MALFORMED: u8 = 1;
    /// No rule set is installed for this interface and direction: passes.
    pub const UNCONFIGURED: u8 = 2;
    /// A live session admitted it.
    pub const SESSION: u8 = 3;
    /// An ICMP error related to a live session.
    pub const RELATED: u8 = 4;
    /// ICMPv6 neighbour discovery (types 133-136).
    pub const NEIGHBOUR_DISCOVERY: u8 = 5;
    /// Intra-group connectivity of a basic group.
    pub const INTRA_GROUP_ACCEPT: u8 = 6;
    /// A user rule; `Decision::rule_id` names it.
    pub const RULE: u8 = 7;
    /// Intra-group isolation.
    pub const INTRA_GROUP_DROP: u8 = 8;
    /// The group type's default.
    pub const DEFAULT: u8 = 9;
    /// A non-first fragment whose first fragment was never seen.
    pub const FRAGMENT_UNKNOWN: u8 = 10;
    /// A session whose opening packet the new rules drop: deleted, packet dropped.
    pub const REVOKED: u8 = 11;
    /// A non-first fragment: the remembered verdict of its first fragment.
    pub const FRAGMENT: u8 = 12;
    pub const COUNT: usize = 13;
    /// Not a decision: the pseudo-rule ending a band of a rule set split into bands
    /// (`crate::MAX_BANDS`) matched, so the search goes on in the next band. Never
    /// leaves classification, so it is outside `COUNT` and has no counters.
    pub const NEXT_BAND: u8 = 255;

    pub const NAMES: [&str; COUNT] = [
        "not-ip",
        "malformed",
        "unconfigured",
        "session",
        "related",
        "neighbour-discovery",
        "intra-group-accept",
        "rule",
        "intra-group-drop",
        "default",
        "fragment-unknown",
        "revoked",
        "fragment",
    ];
}

/// Why a frame is malformed (`Decision::reason`, and a drop counter each).
pub mod malformed {
    pub const NONE: u8 = 0;
    /// Fewer than 14 bytes.
    pub const TRUNCATED_ETHERNET: u8 = 1;
    /// A VLAN tag cut short.
    pub const TRUNCATED_VLAN: u8 = 2;
    /// More than two VLAN tags.
    pub const VLAN_TOO_DEEP: u8 = 3;
    /// IPv4 header cut short (fixed part or options).
    pub const TRUNCATED_IPV4: u8 = 4;
    /// IPv4 version field is not 4.
    pub const IPV4_BAD_VERSION: u8 = 5;
    /// IPv4 IHL below 5.
    pub const IPV4_BAD_IHL: u8 = 6;
    /// IPv4 total length smaller than the header or beyond the frame.
    pub const IPV4_BAD_TOTAL_LENGTH: u8 = 7;
    /// IPv6 header cut short.
    pub const TRUNCATED_IPV6: u8 = 8;
    /// IPv6 version field is not 6.
    pub const IPV6_BAD_VERSION: u8 = 9;
    /// IPv6 payload length beyond the frame.
    pub const IPV6_BAD_PAYLOAD_LENGTH: u8 = 10;
    /// An IPv6 extension header cut short.
    pub const TRUNCATED_IPV6_EXTENSION: u8 = 11;
    /// More IPv6 extension headers than the parser walks.
    pub const IPV6_EXTENSION_CHAIN_TOO_LONG: u8 = 12;
    /// TCP header cut short (in a whole datagram or a first fragment).
    pub const TRUNCATED_TCP: u8 = 13;
    /// TCP data offset below 5.
    pub const TCP_BAD_DATA_OFFSET: u8 = 14;
    pub const TRUNCATED_UDP: u8 = 15;
    pub const TRUNCATED_ICMP: u8 = 16;
    pub const TRUNCATED_GRE: u8 = 17;
    pub const COUNT: usize = 18;

    pub const NAMES: [&str; COUNT] = [
        "none",
        "truncated-ethernet",
        "truncated-vlan",
        "vlan-too-deep",
        "truncated-ipv4",
        "ipv4-bad-version",
        "ipv4-bad-ihl",
        "ipv4-bad-total-length",
        "truncated-ipv6",
        "ipv6-bad-version",
        "ipv6-bad-payload-length",
        "truncated-ipv6-extension",
        "ipv6-extension-chain-too-long",
        "truncated-tcp",
        "tcp-bad-data-offset",
        "truncated-udp",
        "truncated-icmp",
        "truncated-gre",
    ];
}

/// Slots of the per-CPU `STATS` array: one block per interface and hook.
///
/// Each enforced interface has a small counter slot (`IfaceConfig::counters`, 1 to
/// [`stats::IFACES`] - 1; 0 gathers packets not yet tied to an interface). A block holds
/// one counter per (step, verdict column) pair, so a packet costs a single increment,
/// then one counter per malformed reason, the verdict events' accounting and the
/// sessions the kernel opened and expired.
pub mod stats {
    use super::{malformed, step};

    pub const HOOK_INGRESS: u32 = 0;
    pub const HOOK_EGRESS: u32 = 1;
    pub const HOOKS: u32 = 2;
    /// Interface counter slots, slot 0 included.
    pub const IFACES: u32 = 64;

    /// Verdict columns of the decision counters: the verdict, or `AUDIT_DROP` for a drop
    /// computed in audit mode (the packet passed; never counted as an accept).
    pub const PASS: u32 = 0;
    pub const DROP: u32 = 1;
    pub const AUDIT_DROP: u32 = 2;
    pub const COLUMNS: u32 = 3;
    pub const COLUMN_NAMES: [&str; COLUMNS as usize] = ["pass", "drop", "audit-drop"];

    pub const MALFORMED_BASE: u32 = step::COUNT as u32 * COLUMNS;
    /// Events: per kind ([`crate::event_kind`]) emitted, suppressed by the rate limit,
    /// and lost to a full ring.
    pub const EVENTS_BASE: u32 = MALFORMED_BASE + malformed::COUNT as u32;
    pub const EVENT_EMITTED: u32 = 0;
    pub const EVENT_SUPPRESSED: u32 = 1;
    pub const EVENT_LOST: u32 = 2;
    /// Sessions the programs opened, and expired ones they deleted on the flow's next packet.
    pub const SESSIONS_OPENED: u32 = EVENTS_BASE + 2 * 3;
    pub const SESSIONS_EXPIRED: u32 = SESSIONS_OPENED + 1;
    pub const PER_HOOK: u32 = SESSIONS_EXPIRED + 1;
    pub const PER_IFACE: u32 = PER_HOOK * HOOKS;
    /// The session tables' ledger, after the interfaces' blocks: entries put into and
    /// taken out of each table ([`crate::session::table`]), by the programs and (in
    /// slots the programs never touch) by the agent. What neither took out and the
    /// table no longer holds, the LRU evicted: `evicted = inserted - removed - live`.
    pub const LEDGER_BASE: u32 = PER_IFACE * IFACES;
    pub const LEDGER_INSERTED: u32 = 0;
    pub const LEDGER_REMOVED: u32 = 1;
    /// By the programs: this + `table * 2 + what` (`what`: inserted or removed).
    pub const LEDGER_KERNEL: u32 = LEDGER_BASE;
    /// By the agent (and `sgctl sessions --flush`), the same layout.
    pub const LEDGER_USER: u32 = LEDGER_BASE + 4;
    pub const SLOTS: u32 = LEDGER_BASE + 8;

    /// The ledger slot of `table`'s `what` (inserted or removed) for `base`
    /// ([`LEDGER_KERNEL`] or [`LEDGER_USER`]).
    #[inline(always)]
    pub const fn ledger_slot(base: u32, table: u32, what: u32) -> u32 {
        base + (table % 2) * 2 + (what % 2)
    }

    /// The first slot of interface slot `iface`'s block for `hook`.
    #[inline(always)]
    pub const fn block(iface: u32, hook: u32) -> u32 {
        (iface % IFACES) * PER_IFACE + (hook % HOOKS) * PER_HOOK
    }

    /// Slot counting packets that `step` decided into verdict column `column`.
    #[inline(always)]
    pub const fn decision_slot(iface: u32, hook: u32, step: u8, column: u32) -> u32 {
        block(iface, hook) + (step as u32 % step::COUNT as u32) * COLUMNS + column % COLUMNS
    }

    /// Slot counting malformed packets by reason.
    #[inline(always)]
    pub const fn malformed_slot(iface: u32, hook: u32, reason: u8) -> u32 {
        block(iface, hook) + MALFORMED_BASE + reason as u32 % malformed::COUNT as u32
    }

    /// Slot of one event count (`what`: `EVENT_EMITTED`, ...) of `kind`.
    #[inline(always)]
    pub const fn event_slot(iface: u32, hook: u32, kind: u8, what: u32) -> u32 {
        block(iface, hook) + EVENTS_BASE + (kind as u32 % 2) * 3 + what % 3
    }
}

/// What a verdict event reports ([`Event::kind`]); each kind has its own rate limit.
pub mod event_kind {
    /// A drop, or a drop computed in audit mode.
    pub const DROP: u8 = 0;
    /// A new flow accepted, opening a session.
    pub const ACCEPT: u8 = 1;
    pub const NAMES: [&str; 2] = ["drop", "accept"];
}

/// One verdict event, written to the `SG_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    /// The deciding rule's handle ([`Decision::rule_id`]), 0 when no rule decided.
    pub rule: u32,
    pub family: u8,
    pub protocol: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub hook: u8,
    /// A [`stats`] verdict column: pass, drop or audit-drop.
    pub column: u8,
    pub step: u8,
    /// [`malformed`] reason when `step` is malformed.
    pub reason: u8,
    /// [`event_kind`].
    pub kind: u8,
    pub _pad: [u8; 11],
}

/// The verdict events' rate limit, per CPU: userspace divides the configured rate and
/// burst by the CPUs ([`EventConfig::new`]). A rate of 0 turns that kind off (nothing
/// emitted or counted); [`EVENTS_UNLIMITED`] skips the bucket.
///
/// The buckets run on jiffies (`bpf_jiffies64`, a memory read) with the refill per jiffy
/// and the time to a full bucket worked out here: a clock-source read and a 64-bit
/// division on every dropped packet cost a new flow ~90 ns on this machine's VM (`cargo
/// xtask bench`, section 1b), most of that for events the limit then suppressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// Events per second, per kind ([`event_kind`]), this CPU's share.
    pub rate: [u32; 2],
    /// Bucket depth, per kind, this CPU's share.
    pub burst: [u32; 2],
    /// Billionths of a token added per jiffy, per kind.
    pub nano_tokens_per_jiffy: [u64; 2],
    /// Jiffies an empty bucket takes to fill, per kind.
    pub fill_jiffies: [u64; 2],
}

pub const EVENTS_UNLIMITED: u32 = u32::MAX;

/// A token in billionths.
pub const NANO_TOKENS: u64 = 1_000_000_000;

impl EventConfig {
    /// The limits of `rate` events a second and bursts of `burst`, per kind, shared out
    /// over `cpus` CPUs whose jiffy lasts `ns_per_jiffy`.
    pub fn new(rate: [u32; 2], burst: [u32; 2], cpus: u32, ns_per_jiffy: u64) -> Self {
        let cpus = cpus.max(1);
        let share = |n: u32| match n {
            0 | EVENTS_UNLIMITED => n,
            n => n.div_ceil(cpus),
        };
        let rate = [share(rate[0]), share(rate[1])];
        let burst = [share(burst[0]).max(1), share(burst[1]).max(1)];
        let per_jiffy = |k: usize| (u64::from(rate[k]) * ns_per_jiffy.max(1)).max(1);
        let fill = |k: usize| (u64::from(burst[k]) * NANO_TOKENS).div_ceil(per_jiffy(k));
        Self { rate, burst, nano_tokens_per_jiffy: [per_jiffy(0), per_jiffy(1)], fill_jiffies: [fill(0), fill(1)] }
    }
}

/// One CPU's token bucket for one interface slot, hook and kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens, in billionths ([`NANO_TOKENS`]).
    pub nano_tokens: u64,
    /// When it was last refilled, in jiffies (0: never, so it starts full).
    pub refilled_jiffies: u64,
}

impl TokenBucket {
    /// Refills the bucket for the jiffies since the last call and takes a token of kind
    /// `k` (0 or 1) under `config`; whether there was one. No division, no overflow: a
    /// bucket idle for its fill time is simply full.
    #[inline(always)]
    pub fn take(&mut self, config: &EventConfig, k: usize, jiffies: u64) -> bool {
        let k = k & 1;
        let cap = u64::from(config.burst[k]) * NANO_TOKENS;
        let elapsed = jiffies.wrapping_sub(self.refilled_jiffies);
        let tokens = if elapsed >= config.fill_jiffies[k] {
            cap
        } else {
            let refilled = self.nano_tokens + elapsed * config.nano_tokens_per_jiffy[k];
            if refilled > cap { cap } else { refilled }
        };
        self.refilled_jiffies = jiffies;
        if tokens < NANO_TOKENS {
            self.nano_tokens = tokens;
            return false;
        }
        self.nano_tokens = tokens - NANO_TOKENS;
        true
    }
}

/// Per rule handle and CPU: what the rule decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Packets it decided as a new flow, plus the packets of the sessions it admitted.
    pub packets: u64,
    pub bytes: u64,
    /// Sessions it opened.
    pub sessions: u64,
}

/// The outcome of evaluating one packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The handle of the deciding rule or pseudo-rule (userspace assigns one to each
    /// rule of an interface and direction, stable while the rule is unchanged, and maps
    /// it back to the rule's id), else 0.
    pub rule_id: u32,
    /// One of [`verdict`].
    pub verdict: u8,
    /// One of [`step`].
    pub step: u8,
    /// One of [`malformed`] when `step == MALFORMED`, else 0.
    pub reason: u8,
    /// [`DECISION_AUDIT`]: the interface is in audit mode, so the packet passes whatever
    /// `verdict` says.
    pub flags: u8,
}

/// `Decision::flags`: computed in audit mode; the packet passed.
pub const DECISION_AUDIT: u8 = 1;
/// `Decision::flags`: the packet opened a session.
pub const DECISION_OPENED: u8 = 2;

impl Decision {
    pub const fn new(verdict: u8, step: u8) -> Self {
        Self { rule_id: 0, verdict, step, reason: 0, flags: 0 }
    }

    pub const fn malformed(reason: u8) -> Self {
        Self { rule_id: 0, verdict: verdict::DROP, step: step::MALFORMED, reason, flags: 0 }
    }
}

/// The last packet a hook saw and what it decided, recorded only when the program is
/// loaded with tracing on (tests and `sgctl trace --live`), so the fast path pays nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// Incremented on every traced packet, so readers can tell a fresh record.
    pub seq: u64,
    pub meta: crate::PacketMeta,
    pub decision: Decision,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no implicit padding (asserted in tests).
unsafe impl aya::Pod for Decision {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for TraceRecord {}
#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields only, no implicit padding (asserted in tests).
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::EventConfig {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::RuleCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Decision>(), 8);
        assert_eq!(core::mem::size_of::<TraceRecord>(), 8 + 64 + 8);
        assert_eq!(core::mem::size_of::<Event>(), 8 + 32 + 4 + 4 + 4 + 9 + 11);
        assert_eq!(core::mem::size_of::<EventConfig>(), 48);
        assert_eq!(core::mem::size_of::<TokenBucket>(), 16);
        assert_eq!(core::mem::size_of::<RuleCounters>(), 24);
    }

    #[test]
    fn token_buckets_start_full_refill_per_jiffy_and_cap_at_the_burst() {
        // 1,000 a second, bursts of 10, on 2 CPUs with 4 ms jiffies: 500/s and 5 a CPU,
        // 2 tokens a jiffy.
        let c = EventConfig::new([1000, 0], [10, 10], 2, 4_000_000);
        assert_eq!((c.rate[0], c.burst[0]), (500, 5));
        assert_eq!(c.nano_tokens_per_jiffy[0], 2 * NANO_TOKENS);
        assert_eq!(c.fill_jiffies[0], 3, "5 tokens at 2 a jiffy");
        let mut b = TokenBucket::default();
        let taken = (0..8).filter(|_| b.take(&c, 0, 1_000_000)).count();
        assert_eq!(taken, 5, "a fresh bucket holds the burst, no more");
        assert!(!b.take(&c, 0, 1_000_000), "empty within the jiffy");
        assert!(b.take(&c, 0, 1_000_001) && b.take(&c, 0, 1_000_001), "two tokens a jiffy");
        assert!(!b.take(&c, 0, 1_000_001));
        let after_idle = (0..8).filter(|_| b.take(&c, 0, 9_000_000)).count();
        assert_eq!(after_idle, 5, "idle long past the fill time: full, capped at the burst");
        // A fraction of a token a jiffy adds up.
        let slow = EventConfig::new([100, 0], [10, 10], 1, 4_000_000);
        let mut b = TokenBucket::default();
        while b.take(&slow, 0, 100) {}
        let granted = (101..=200).filter(|j| b.take(&slow, 0, *j)).count();
        assert_eq!(granted, 40, "0.4 tokens a jiffy over 100 jiffies");
    }

    #[test]
    fn name_tables_cover_every_code() {
        assert_eq!(step::NAMES.len(), step::COUNT);
        assert_eq!(malformed::NAMES.len(), malformed::COUNT);
        assert_eq!(step::NAMES[step::FRAGMENT_UNKNOWN as usize], "fragment-unknown");
        assert_eq!(malformed::NAMES[malformed::TRUNCATED_GRE as usize], "truncated-gre");
    }

    #[test]
    fn stats_slots_do_not_overlap() {
        use stats::*;
        let mut seen = std::collections::HashSet::new();
        for iface in 0..IFACES {
            for hook in 0..HOOKS {
                for s in 0..step::COUNT as u8 {
                    for c in 0..COLUMNS {
                        assert!(seen.insert(decision_slot(iface, hook, s, c)));
                    }
                }
                for r in 0..malformed::COUNT as u8 {
                    assert!(seen.insert(malformed_slot(iface, hook, r)));
                }
                for k in 0..2 {
                    for w in [EVENT_EMITTED, EVENT_SUPPRESSED, EVENT_LOST] {
                        assert!(seen.insert(event_slot(iface, hook, k, w)));
                    }
                }
                assert!(seen.insert(block(iface, hook) + SESSIONS_OPENED));
                assert!(seen.insert(block(iface, hook) + SESSIONS_EXPIRED));
            }
        }
        for base in [LEDGER_KERNEL, LEDGER_USER] {
            for table in 0..2 {
                for what in [LEDGER_INSERTED, LEDGER_REMOVED] {
                    assert!(seen.insert(ledger_slot(base, table, what)));
                }
            }
        }
        assert_eq!(seen.len() as u32, SLOTS);
        assert!(seen.iter().all(|&s| s < SLOTS));
    }
}
