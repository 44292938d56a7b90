//! Test support for sgctl: network-namespace labs with real veth pairs and sockets,
//! frame builders for BPF_PROG_TEST_RUN fixtures, and running the real `sgctl` binary.

pub mod agent;
pub mod deploy;
pub mod event_rate;
pub mod fleet;
pub mod fleet_bench;
pub mod frames;
pub mod fuzzing;
pub mod r#gen;
pub mod kernel;
pub mod memcg;
pub mod netns;
pub mod procfs;
pub mod ref_parse;
pub mod sessions_gen;
pub mod testrun;
pub mod throughput;
pub mod traffic;
