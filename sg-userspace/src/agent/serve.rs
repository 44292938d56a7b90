//! The running agent: signals (SIGINT/SIGTERM stop, SIGHUP reloads), session garbage
//! collection and counter lines, until stopped.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use super::{RunOptions, load_config};
use crate::{
    control::{Enforcer, gc::gc_period},
    dataplane::{Dataplane, attach, counters::counter_line},
};

/// Waits for signals: SIGINT/SIGTERM stop, SIGHUP reloads; prints counters meanwhile.
pub(super) async fn serve(opts: &RunOptions, dp: &Dataplane, enforcer: &mut Enforcer, names: &[String]) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let period = Duration::from_secs(opts.interval.max(1));
    let mut gc = tokio::time::interval(gc_period(enforcer.timeouts()));
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => {
                reload(opts, enforcer, names);
                gc = tokio::time::interval(gc_period(enforcer.timeouts()));
            }
            _ = gc.tick() => {
                if let Err(e) = enforcer.collect_garbage() {
                    error!("session garbage collection: {e:#}");
                }
            }
            _ = tokio::time::sleep(period), if opts.interval > 0 => {
                println!("{}", counter_line(&dp.counters()?, opts.json));
            }
        }
    }
}

/// Re-reads the rule file and applies it to the interfaces enforced since start.
fn reload(opts: &RunOptions, enforcer: &mut Enforcer, names: &[String]) {
    let outcome = load_config(&opts.config).and_then(|cfg| {
        let mut targets = Vec::new();
        for name in names {
            match cfg.interface(name) {
                Some(binding) => targets.push((attach::ifindex(name)?, binding)),
                None => bail!("the new file drops interface {name}; restart sgctl to change the interface set"),
            }
        }
        let report = enforcer.apply(&cfg, &targets)?;
        // The new rules are in force; now delete the ones they replaced.
        let retire_time = enforcer.retire_pending();
        Ok((report, enforcer.generation(targets[0].0).unwrap_or(0), retire_time))
    });
    match outcome {
        Ok((report, generation, retire_time)) => info!(
            "reloaded {}: generation {generation}, {} rules (compile {:.1} ms, write {:.1} ms; old rules removed in \
             {:.1} ms after the switch)",
            opts.config.display(),
            report.rules,
            report.compile_time.as_secs_f64() * 1e3,
            report.write_time.as_secs_f64() * 1e3,
            retire_time.as_secs_f64() * 1e3
        ),
        Err(e) => error!("reload rejected, the previous rules stay in force: {e:#}"),
    }
}
