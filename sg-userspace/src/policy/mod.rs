//! Policy: what the rules are and what they mean, with no kernel in sight.
//!
//! Pure code (no aya, no tokio): the rule model and rule-file parsing ([`config`]), the
//! total order of rules and the defaults ([`order`]), addresses in the data plane's byte
//! form ([`addr`]), the reference evaluator ([`eval`]) the compiler to map contents
//! ([`compile`]), and the guide's advice as tools ([`guidance`]: lint, diff, import,
//! export). Everything above (the data plane, control, the agent and the CLI) may
//! use it; it uses none of them.

pub mod addr;
pub mod compile;
pub mod config;
pub mod eval;
pub mod fleet;
pub mod guidance;
pub mod order;
