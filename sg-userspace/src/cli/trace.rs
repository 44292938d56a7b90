//! `sgctl trace FILE ...`: which rule decides a packet, by the reference evaluator.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use sgctl::policy::{
    config::{self, Direction, Protocol},
    eval::{PacketTuple, evaluate},
};

#[derive(clap::Args)]
pub struct Args {
    /// The rule file.
    file: PathBuf,
    /// Interface (as named in the rule file's `[[interface]]`).
    #[arg(long)]
    iface: String,
    /// ingress or egress.
    #[arg(long)]
    direction: Direction,
    /// tcp, udp, icmp, icmpv6, gre, or an IP protocol number.
    #[arg(long)]
    proto: String,
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, default_value_t = 0)]
    sport: u16,
    #[arg(long, default_value_t = 0)]
    dport: u16,
    /// ICMP or ICMPv6 type (icmp and icmpv6 only; default: echo request, 8 or 128).
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code (default 0).
    #[arg(long)]
    icmp_code: Option<u8>,
    #[arg(long)]
    json: bool,
}

/// An IP protocol number from a name or a number.
fn protocol_number(text: &str) -> Result<u8> {
    if let Ok(n) = text.parse::<u8>() {
        return Ok(n);
    }
    text.parse::<Protocol>()
        .ok()
        .and_then(|p| p.ip_proto())
        .with_context(|| format!("--proto {text}: expected tcp, udp, icmp, icmpv6, gre or a protocol number"))
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let cfg = match config::load_file(&args.file) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            anyhow::bail!("{}: invalid rule file", args.file.display());
        }
    };
    let iface = cfg
        .interface(&args.iface)
        .with_context(|| format!("{} has no [[interface]] named {}", args.file.display(), args.iface))?;
    if args.src.is_ipv4() != args.dst.is_ipv4() {
        anyhow::bail!("--src and --dst must be of one address family");
    }
    let protocol = protocol_number(&args.proto)?;
    let icmp = matches!(protocol, sg_common::ip_proto::ICMP | sg_common::ip_proto::ICMPV6);
    if !icmp && (args.icmp_type.is_some() || args.icmp_code.is_some()) {
        anyhow::bail!("--icmp-type and --icmp-code are only for --proto icmp or icmpv6");
    }
    // An ICMP message's type and code are what rules match, as its key (`PacketTuple`).
    let (src_port, dst_port) = if icmp {
        let icmp_type = args.icmp_type.unwrap_or_else(|| sg_common::echo_request_type(protocol));
        (0, sg_common::icmp_key(icmp_type, args.icmp_code.unwrap_or(0)))
    } else {
        (args.sport, args.dport)
    };
    // The data plane passes neighbour and multicast listener discovery before any rule
    // (IPv6 cannot work without them), and so does the trace.
    let icmp_type = (dst_port >> 8) as u8;
    if icmp && sg_common::is_neighbour_discovery(protocol, icmp_type) {
        if args.json {
            let decided_by = serde_json::json!({ "step": "neighbour_discovery", "icmp_type": icmp_type });
            println!("{}", serde_json::json!({ "action": "accept", "decided_by": decided_by, "skipped": [] }));
        } else {
            println!(
                "accept: ICMPv6 type {icmp_type} is neighbour or multicast listener discovery, which always passes \
                 (before sessions and rules; IPv6 does not work without it)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let packet = PacketTuple { src: args.src, dst: args.dst, protocol, src_port, dst_port };
    let decision = evaluate(&cfg, iface, args.direction, &packet);
    if args.json {
        println!("{}", decision.to_json(&cfg));
    } else {
        println!("{}", decision.explain(&cfg));
    }
    Ok(ExitCode::SUCCESS)
}
