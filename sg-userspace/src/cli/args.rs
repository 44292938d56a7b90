//! Argument groups several subcommands share (flattened into each).

use sgctl::dataplane::attach::XdpModeChoice;

/// How to attach and what to print meanwhile: `attach` and `run`.
#[derive(clap::Args, Clone, Debug)]
pub struct AttachOptions {
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    pub xdp_mode: XdpModeChoice,
    /// Seconds between counter lines (0: no counter lines).
    #[arg(long, default_value_t = 1)]
    pub interval: u64,
    /// Print counter lines as JSON.
    #[arg(long)]
    pub json: bool,
}
