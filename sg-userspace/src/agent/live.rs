//! The enforcement an agent keeps, and how it survives the agent.
//!
//! Everything lives in a pinned *generation* (one loaded object: programs and maps,
//! `dataplane::pins`) and pinned links, recorded in the state file (`super::state`).
//! Starting, an agent takes the first of these that applies:
//!
//! - **adopt**: the pins are those of the same object and the record matches the maps:
//!   it takes them over as they are (nothing is written), then applies its rule file like
//!   any apply if that differs from the one in force;
//! - **regenerate**: the pins run another object (an upgrade, or a downgrade), or the
//!   record does not match the maps, or the rule file needs larger maps: it loads its own
//!   object as a new generation, fills it, copies the sessions over, moves every link to
//!   it with one atomic update per hook, copies the sessions opened meanwhile, and unpins
//!   the old generation. Packets see the old programs or the new, never neither;
//! - **fresh**: nothing usable is pinned (or the interfaces are gone): load, fill, attach.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use sg_common::map;
use tracing::{info, warn};

use super::{
    RunOptions,
    state::{AgentState, STATE_FORMAT},
    targets,
};
use crate::{
    control::{ApplyReport, ControlError, Enforcer, compile_targets, enforcer::CompiledInterface, handles::Handles},
    dataplane::{
        Capacity, Dataplane, LoadOptions,
        attach::{XdpModeChoice, presence},
        counters::{carry_counters, carry_rule_counters},
        established,
        links::{self, HeldInterface, TcRecord},
        object::{KernelFeatures, identity},
        pins::{Generation, Pins},
        sessions::{self, SessionTable},
    },
    paths,
    policy::config::{Config, InterfaceBinding, parse_str},
};

/// How an agent came to hold the interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing usable was pinned: loaded and attached.
    Fresh,
    /// Took over the pinned generation; `applied` when its rule file differed.
    Adopted { generation: u32, applied: bool },
    /// Replaced the pinned generation by one of its own (`why`).
    Regenerated { from: u32, to: u32, why: String },
}

/// The path and text of the rule file a state file records.
type Recorded = (String, String);

/// What the agent needs to know besides the enforcement itself.
struct Context {
    pins: Pins,
    xdp_mode: XdpModeChoice,
    only: Vec<String>,
    replace: bool,
    state_file: PathBuf,
    /// The BPF filesystem was mounted by this agent (under `ip netns exec`): its pins
    /// go when this process's mount namespace does.
    private_bpffs: bool,
    /// The verdict-event ring's size for generations this agent loads.
    event_ring_bytes: u32,
}

/// One generation in force: its programs and maps, what is installed in them, and the
/// interfaces attached to it.
pub struct Holding {
    pub generation: Generation,
    pub enforcer: Enforcer,
    pub held: Vec<HeldInterface>,
    pub capacity: Capacity,
    pub features: KernelFeatures,
    /// `dataplane::object::identity` of the generation's object.
    pub object: String,
    pub rules: usize,
}

/// The enforcement in force.
pub struct Live {
    ctx: Context,
    pub now: Holding,
    pub config_path: String,
    pub config_text: String,
    /// When this agent started (for `sgctl status`).
    pub started: std::time::Instant,
}

/// What [`Live::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub report: ApplyReport,
    pub retire: std::time::Duration,
    /// The new generation when the maps had to grow.
    pub regenerated: Option<u32>,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
}

/// The maps a rule file needs.
fn capacity_for(cfg: &Config, compiled: &[CompiledInterface]) -> Capacity {
    let sets = compiled.iter().flat_map(|c| [&*c.ingress, &*c.egress]);
    Capacity { sessions: cfg.sessions.max_sessions, ..Capacity::for_rule_sets(sets) }
}

/// The ids of a session table's maps, for `sgctl sessions`.
fn record_session_ids(enforcer: &mut Enforcer) -> Result<()> {
    let id_file = paths::map_id_file();
    if let Some(dir) = id_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&id_file, enforcer.session_map_ids()?)?;
    Ok(())
}

/// The next free generation number under `pins`.
fn next_generation(pins: &Pins) -> u32 {
    pins.generations().last().map_or(1, |g| g + 1)
}

/// Whether `held` is still attached to `generation`'s programs.
fn still_held(generation: &Generation, pins: &Pins, held: &HeldInterface) -> Result<bool> {
    let (xdp, tc) = generation.program_ids()?;
    if crate::dataplane::attach::ifindex(&held.iface).ok() != Some(held.ifindex) {
        return Ok(false);
    }
    let found = presence(&held.iface)?;
    let tc_ok = match held.tc {
        TcRecord::Tcx => found.tcx_programs.contains(&tc) && pins.link(held.ifindex, "tcx").exists(),
        TcRecord::Clsact { .. } => found.clsact_filter,
    };
    Ok(found.xdp_program == Some(xdp) && pins.link(held.ifindex, "xdp").exists() && tc_ok)
}

/// Copies every session of `from` into `to` that `to` lacks; returns how many.
fn copy_sessions(from: &SessionTable, to: &mut SessionTable) -> Result<usize> {
    let mut copied = 0;
    for (key, session) in from.entries()? {
        if to.stored(&key).is_none() {
            to.carry(&key, &session)?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Key and value sizes of a generation's session map.
fn session_layout(generation: &Generation) -> Result<(u32, u32)> {
    let (k, v, _) = generation.map_shape(map::SESSIONS)?;
    Ok((k, v))
}

/// Enters the TCP connections already established on each interface as sessions where
/// the rules admit them (`dataplane::established`), so attaching does not cut the
/// session of whoever started the agent. Between applying the rules and attaching: the
/// programs then judge the connections with the rules in force, and no packet of theirs
/// meets the programs before their session exists. A failure only warns: enforcing
/// matters more than sparing the connections, which are then left to the rules.
fn import_established(generation: &mut Generation, enforcer: &mut Enforcer, here: &[(u32, &InterfaceBinding)]) {
    for (ifindex, binding) in here {
        match established::import_established(generation, enforcer.sessions(), *ifindex, &binding.name) {
            Ok(counts) => info!("{}: {counts}", binding.name),
            Err(e) => {
                warn!("{}: established TCP connections left to the rules: {:#}", binding.name, anyhow::Error::from(e))
            }
        }
    }
}

impl Context {
    /// Removes every generation and link pinned here (nothing records them).
    fn clean_pins(&self) {
        for link in self.pins.links() {
            let _ = std::fs::remove_file(link);
        }
        for id in self.pins.generations() {
            let _ = self.pins.remove_generation(id);
        }
    }

    /// Loads, fills and attaches a new generation where nothing is held.
    fn fresh(
        &self,
        cfg: &Config,
        here: &[(u32, &InterfaceBinding)],
        compiled: &[CompiledInterface],
    ) -> Result<Holding> {
        let capacity = capacity_for(cfg, compiled);
        let dp = Dataplane::load(&LoadOptions { trace: false, capacity, event_ring_bytes: self.event_ring_bytes })?;
        let (object, features) = (dp.identity.clone(), dp.features);
        let id = next_generation(&self.pins);
        let mut generation = Generation::pin(dp, &self.pins, id)?;
        let filled = (|| -> Result<(Enforcer, ApplyReport)> {
            let mut enforcer = Enforcer::new(&mut generation, &capacity)?;
            let report = enforcer.apply_compiled(cfg, compiled)?;
            record_session_ids(&mut enforcer)?;
            Ok((enforcer, report))
        })();
        let (mut enforcer, report) = match filled {
            Ok(done) => done,
            Err(e) => {
                let _ = self.pins.remove_generation(id);
                return Err(e);
            }
        };
        import_established(&mut generation, &mut enforcer, here);
        // Rules go in before the programs attach: there is no moment without them.
        let mut held = Vec::new();
        for (_, binding) in here {
            match links::attach(&mut generation, &self.pins, &binding.name, self.xdp_mode) {
                Ok(h) => held.push(h),
                Err(e) => {
                    for h in &held {
                        let _ = links::detach(&self.pins, h);
                    }
                    let _ = self.pins.remove_generation(id);
                    return Err(e.into());
                }
            }
        }
        Ok(Holding { generation, enforcer, held, capacity, features, object, rules: report.rules })
    }

    /// Takes over generation `prev.generation` as `prev` records it, writing nothing.
    fn adopt(&self, prev: &AgentState) -> Result<Holding> {
        let old_cfg = parse_str(&prev.config_text, &prev.config_path)
            .map_err(|e| anyhow!("the recorded rule file no longer validates: {e}"))?;
        let mut old_targets = Vec::new();
        for placed in &prev.enforcer.interfaces {
            let held = prev
                .interfaces
                .iter()
                .find(|h| h.ifindex == placed.ifindex)
                .ok_or_else(|| anyhow!("ifindex {} is enforced but not held", placed.ifindex))?;
            let binding = old_cfg
                .interface(&held.iface)
                .ok_or_else(|| anyhow!("{} is not in the recorded rule file", held.iface))?;
            old_targets.push((placed.ifindex, binding));
        }
        let compiled = compile_targets(&old_cfg, &old_targets)?;
        let timeouts = sessions::timeouts(&old_cfg.sessions);
        let mut generation = Generation::open(&self.pins, prev.generation)?;
        let mut enforcer =
            Enforcer::adopt(&mut generation, &prev.capacity, &prev.enforcer, (&old_cfg, &compiled), timeouts)?;
        record_session_ids(&mut enforcer)?;
        Ok(Holding {
            generation,
            enforcer,
            held: prev.interfaces.clone(),
            capacity: prev.capacity,
            features: prev.features,
            object: prev.object.clone(),
            rules: compiled.iter().map(|c| c.ingress.rules.len() + c.egress.rules.len()).sum(),
        })
    }

    /// Loads a new generation with maps of `capacity`, fills it with `compiled`, carries
    /// the sessions and counters of `old` over, moves the `held` interfaces that `here`
    /// still names to it (one atomic update per hook), detaches the others, attaches the
    /// interfaces of `here` not held yet, and unpins `old`. `generations` continues each
    /// interface's rule-set generation count. On an error, `old` stays in force.
    #[expect(clippy::too_many_arguments, reason = "the whole of one step, each argument a different part")]
    fn regenerate(
        &self,
        old: &mut Generation,
        held: &[HeldInterface],
        generations: &[(u32, u32)],
        capacity: Capacity,
        cfg: &Config,
        here: &[(u32, &InterfaceBinding)],
        (compiled, seed): (&[CompiledInterface], Option<&Handles>),
    ) -> Result<Holding> {
        let dp = Dataplane::load(&LoadOptions { trace: false, capacity, event_ring_bytes: self.event_ring_bytes })?;
        let (object, features) = (dp.identity.clone(), dp.features);
        let id = next_generation(&self.pins);
        let mut generation = Generation::pin(dp, &self.pins, id)?;
        // A generation from before the opening table (one session map) is not carried:
        // its flows are classified again, as after any layout change.
        let carry_sessions = session_layout(old)? == session_layout(&generation)?
            && old.map_shape(sg_common::map::OPENING_SESSIONS).is_ok();
        // The old sessions are read with this build's types: only when the layouts agree.
        let old_sessions = match carry_sessions.then(|| SessionTable::take(old)).transpose() {
            Ok(table) => table,
            Err(e) => {
                let _ = self.pins.remove_generation(id);
                return Err(e.into());
            }
        };
        let outcome = (|| -> Result<(Enforcer, ApplyReport)> {
            let mut enforcer = Enforcer::new(&mut generation, &capacity)?;
            for (ifindex, count) in generations {
                enforcer.continue_generation(*ifindex, *count);
            }
            if let Some(seed) = seed {
                enforcer.seed_handles(seed);
            }
            let report = enforcer.apply_compiled(cfg, compiled)?;
            enforcer.drop_unused_handles();
            if let Some(old_sessions) = &old_sessions {
                let copied = copy_sessions(old_sessions, enforcer.sessions())?;
                info!("copied {copied} sessions into generation {id}");
            } else if self.replace {
                warn!("--replace: the old programs' sessions are not carried over (their layout differs)");
            } else if session_layout(old)? == session_layout(&generation)? {
                bail!(
                    "the old programs keep their sessions in one table, the new ones in two (assured and opening): \
                     the old programs keep running. `sgctl run --replace` switches anyway, and connections then \
                     depend on the rules alone"
                );
            } else {
                let ((ok, ov), (nk, nv)) = (session_layout(old)?, session_layout(&generation)?);
                bail!(
                    "the new programs' sessions ({nk}-byte keys, {nv}-byte values) cannot hold the old ones ({ok}, \
                     {ov}); the old programs keep running. `sgctl run --replace` switches anyway, and connections \
                     then depend on the rules alone"
                );
            }
            Ok((enforcer, report))
        })();
        let (mut enforcer, report) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let _ = self.pins.remove_generation(id);
                return Err(e);
            }
        };
        let keep: Vec<u32> = here.iter().map(|(i, _)| *i).collect();
        let (staying, leaving): (Vec<&HeldInterface>, Vec<&HeldInterface>) =
            held.iter().partition(|h| keep.contains(&h.ifindex));
        let mut switched: Vec<&HeldInterface> = Vec::new();
        for h in &staying {
            if let Err(e) = links::switch(&mut generation, &self.pins, h) {
                // Back to the old programs, all of them: the old generation stays.
                for done in &switched {
                    let _ = links::switch(old, &self.pins, done);
                }
                let _ = self.pins.remove_generation(id);
                return Err(anyhow::Error::from(e).context("switching to the new programs; the old ones stay"));
            }
            switched.push(h);
        }
        // Sessions the old programs opened between the copy and the switch.
        if let Some(old_sessions) = &old_sessions {
            let late = copy_sessions(old_sessions, enforcer.sessions())?;
            if late > 0 {
                info!("copied {late} sessions the old programs opened during the switch");
            }
        }
        if let Err(e) = carry_counters(old, &mut generation) {
            warn!("the counters of generation {} are not carried over: {e}", old.id);
        }
        // With the rules' handles kept, their counters follow. (Another build's maps are
        // not read that way: its rules start counting again.)
        if seed.is_some()
            && let Err(e) = carry_rule_counters(old, &mut generation)
        {
            warn!("the rule counters of generation {} are not carried over: {e}", old.id);
        }
        for h in &leaving {
            links::detach(&self.pins, h)?;
        }
        let mut now: Vec<HeldInterface> = staying.into_iter().cloned().collect();
        for (_, binding) in here {
            if !now.iter().any(|h| h.iface == binding.name) {
                now.push(links::attach(&mut generation, &self.pins, &binding.name, self.xdp_mode)?);
            }
        }
        self.pins.remove_generation(old.id).with_context(|| format!("unpinning generation {}", old.id))?;
        record_session_ids(&mut enforcer)?;
        Ok(Holding { generation, enforcer, held: now, capacity, features, object, rules: report.rules })
    }
}

impl Live {
    /// How full the maps in force are.
    pub fn fills(&mut self) -> anyhow::Result<crate::control::enforcer::MapFills> {
        let fragments = crate::dataplane::sessions::fragment_fill(&mut self.now.generation)?;
        Ok(self.now.enforcer.fills(fragments)?)
    }

    /// Takes over or sets up enforcement of `cfg` (the text of `path`).
    pub fn start(opts: &RunOptions, cfg: &Config, path: &str, text: &str) -> Result<(Self, Start)> {
        let pin_dir = opts.pin_dir.clone().unwrap_or_else(paths::pin_dir);
        let (pins, mounted) = Pins::open(&pin_dir)?;
        if mounted {
            warn!(
                "no BPF filesystem was mounted at {}; mounted one (under `ip netns exec`, which mounts a fresh /sys, the \
                 pins last only as long as this command: use `sgctl --netns NAME run` to keep enforcement across \
                 restarts)",
                paths::BPFFS
            );
        }
        let ctx = Context {
            pins,
            xdp_mode: opts.xdp_mode,
            only: opts.only.clone(),
            replace: opts.replace,
            state_file: paths::state_file(),
            private_bpffs: mounted,
            event_ring_bytes: opts.events.ring_bytes,
        };
        let previous = match AgentState::load(&ctx.state_file) {
            Ok(state) => state.filter(|s| s.pin_dir == pin_dir),
            Err(e) => {
                warn!("{e}; whatever is pinned is replaced");
                None
            }
        };
        let here = targets(cfg, &opts.only)?;
        let compiled = compile_targets(cfg, &here)?;
        let (now, start, recorded) = match previous {
            Some(prev) => Self::take_over(&ctx, prev, cfg, &here, &compiled)?,
            None => {
                ctx.clean_pins();
                (ctx.fresh(cfg, &here, &compiled)?, Start::Fresh, None)
            }
        };
        let mut live = Self {
            ctx,
            now,
            config_path: path.to_string(),
            config_text: text.to_string(),
            started: std::time::Instant::now(),
        };
        if let Some((old_path, old_text)) = recorded {
            // Adopted as it was: now the agent's own rule file, like any apply.
            (live.config_path, live.config_text) = (old_path, old_text);
            let same_interfaces = {
                let mut a: Vec<u32> = here.iter().map(|(i, _)| *i).collect();
                let mut b: Vec<u32> = live.now.held.iter().map(|h| h.ifindex).collect();
                a.sort_unstable();
                b.sort_unstable();
                a == b
            };
            if live.config_text != text || !same_interfaces {
                live.apply(cfg, path, text)?;
                let Start::Adopted { generation, .. } = start else { unreachable!("recorded only when adopted") };
                live.save()?;
                return Ok((live, Start::Adopted { generation, applied: true }));
            }
        }
        live.save()?;
        Ok((live, start))
    }

    /// Starts from what `prev` records: adopt (returning the recorded rule file's path
    /// and text), regenerate, or (when the interfaces are no longer held) start over.
    fn take_over(
        ctx: &Context,
        prev: AgentState,
        cfg: &Config,
        here: &[(u32, &InterfaceBinding)],
        compiled: &[CompiledInterface],
    ) -> Result<(Holding, Start, Option<Recorded>)> {
        let usable = Generation::open(&ctx.pins, prev.generation).map_err(anyhow::Error::from).and_then(|g| {
            for held in &prev.interfaces {
                if !still_held(&g, &ctx.pins, held)? {
                    bail!("{} is no longer held by generation {}", held.iface, prev.generation);
                }
            }
            Ok(g)
        });
        let mut old = match usable {
            Ok(g) => g,
            Err(e) => {
                warn!("the pinned state cannot be taken over ({e:#}); starting over");
                for held in &prev.interfaces {
                    let _ = links::detach(&ctx.pins, held);
                }
                ctx.clean_pins();
                return Ok((ctx.fresh(cfg, here, compiled)?, Start::Fresh, None));
            }
        };
        let ours =
            identity(&LoadOptions { capacity: prev.capacity, ..LoadOptions::default() }, &KernelFeatures::probe());
        let why = if prev.object != ours {
            format!("the pinned programs are another build's (object {}, this sgctl's {ours})", prev.object)
        } else {
            match ctx.adopt(&prev) {
                Ok(holding) => {
                    // A generation an agent loaded but never switched to (it died during
                    // an upgrade or a regeneration) holds no interface: free it.
                    for id in ctx.pins.generations().into_iter().filter(|g| *g != prev.generation) {
                        info!("unpinning generation {id}, which no interface uses");
                        let _ = ctx.pins.remove_generation(id);
                    }
                    let start = Start::Adopted { generation: prev.generation, applied: false };
                    return Ok((holding, start, Some((prev.config_path, prev.config_text))));
                }
                Err(e) => format!("{e:#}"),
            }
        };
        info!("replacing pinned generation {}: {why}", prev.generation);
        let generations: Vec<(u32, u32)> = prev.enforcer.interfaces.iter().map(|i| (i.ifindex, i.generation)).collect();
        let capacity = capacity_for(cfg, compiled);
        let now = ctx.regenerate(&mut old, &prev.interfaces, &generations, capacity, cfg, here, (compiled, None))?;
        let to = now.generation.id;
        Ok((now, Start::Regenerated { from: prev.generation, to, why }, None))
    }

    /// Applies `cfg` (the text of `path`): the interfaces it names that exist here are
    /// enforced (attached when new), held ones it no longer names are detached. A rule
    /// file that outgrows the maps moves everything to a new generation with larger
    /// ones. All or nothing for the rules: on an error the previous ones stay in force.
    pub fn apply(&mut self, cfg: &Config, path: &str, text: &str) -> Result<Applied> {
        let here = targets(cfg, &self.ctx.only)?;
        let started = std::time::Instant::now();
        let compiled = self.now.enforcer.compile(cfg, &here)?;
        let compile_time = started.elapsed();
        let mut applied = Applied::default();
        let need = capacity_for(cfg, &compiled);
        let in_place = if need.sessions != self.now.capacity.sessions {
            Err(ControlError::NoRoom { count: need.sessions as usize, what: "sessions" })
        } else {
            // Interfaces new to this agent are attached before the switch: until the
            // switch gives them a configuration their programs pass everything, as before
            // they were attached, so a failed attach, or a failed apply after it, leaves
            // nothing in force once they are detached again (all or nothing).
            let fresh = self.attach_new(&here)?;
            applied.attached = fresh.iter().map(|h| h.iface.clone()).collect();
            let result = self.now.enforcer.apply_compiled(cfg, &compiled);
            if result.is_err() {
                self.detach_fresh(&fresh);
                applied.attached.clear();
            }
            result
        };
        match in_place {
            Ok(report) => {
                applied.report = report;
                applied.retire = self.now.enforcer.retire_pending();
                let names: Vec<String> = here.iter().map(|(_, b)| b.name.clone()).collect();
                for held in std::mem::take(&mut self.now.held) {
                    if names.contains(&held.iface) {
                        self.now.held.push(held);
                        continue;
                    }
                    links::detach(&self.ctx.pins, &held)?;
                    self.now.enforcer.clear(held.ifindex)?;
                    applied.detached.push(held.iface);
                }
                self.now.rules = applied.report.rules;
            }
            Err(ControlError::NoRoom { .. } | ControlError::NoFreeSlot) => {
                let generations: Vec<(u32, u32)> = self
                    .now
                    .enforcer
                    .interfaces()
                    .into_iter()
                    .map(|i| (i, self.now.enforcer.generation(i).unwrap_or(0)))
                    .collect();
                let capacity = need;
                let before: Vec<String> = self.now.held.iter().map(|h| h.iface.clone()).collect();
                let held = self.now.held.clone();
                let next = self.ctx.regenerate(
                    &mut self.now.generation,
                    &held,
                    &generations,
                    capacity,
                    cfg,
                    &here,
                    (&compiled, Some(self.now.enforcer.handles())),
                )?;
                let old = std::mem::replace(&mut self.now, next);
                drop(old);
                info!(
                    "the rule file outgrew the maps: moved to generation {} with room for {} vectors and {} sessions",
                    self.now.generation.id, capacity.vectors, capacity.sessions
                );
                applied.regenerated = Some(self.now.generation.id);
                applied.report.rules = self.now.rules;
                applied.report.rule_sets = compiled.len() * 2;
                applied.attached = self.names().into_iter().filter(|n| !before.contains(n)).collect();
                applied.detached = before.into_iter().filter(|n| !self.names().contains(n)).collect();
            }
            Err(e) => return Err(e.into()),
        }
        applied.report.compile_time = compile_time;
        (self.config_path, self.config_text) = (path.to_string(), text.to_string());
        self.save()?;
        Ok(applied)
    }

    /// Attaches the interfaces of `here` this agent does not hold yet (entering their
    /// established connections as sessions first), and adds them to the held ones. On
    /// a failure the ones attached so far are detached again and the error returned.
    fn attach_new(&mut self, here: &[(u32, &InterfaceBinding)]) -> Result<Vec<links::HeldInterface>> {
        let mut fresh = Vec::new();
        for (ifindex, binding) in here {
            if self.now.held.iter().any(|h| h.ifindex == *ifindex) {
                continue;
            }
            import_established(&mut self.now.generation, &mut self.now.enforcer, &[(*ifindex, *binding)]);
            match links::attach(&mut self.now.generation, &self.ctx.pins, &binding.name, self.ctx.xdp_mode) {
                Ok(h) => {
                    self.now.held.push(h.clone());
                    fresh.push(h);
                }
                Err(e) => {
                    self.detach_fresh(&fresh);
                    return Err(anyhow::Error::from(e)
                        .context(format!("{} could not be attached; nothing was applied", binding.name)));
                }
            }
        }
        Ok(fresh)
    }

    /// Undoes [`Live::attach_new`] for `fresh`.
    fn detach_fresh(&mut self, fresh: &[links::HeldInterface]) {
        for h in fresh {
            if let Err(e) = links::detach(&self.ctx.pins, h) {
                warn!("{}: detaching after a failed apply: {e:#}", h.iface);
            }
            self.now.held.retain(|held| held.ifindex != h.ifindex);
        }
    }

    /// Records the state for the next agent.
    pub fn save(&self) -> Result<()> {
        let state = AgentState {
            format: STATE_FORMAT,
            pin_dir: self.ctx.pins.dir().to_path_buf(),
            generation: self.now.generation.id,
            object: self.now.object.clone(),
            features: self.now.features,
            capacity: self.now.capacity,
            session_layout: session_layout(&self.now.generation)?,
            config_path: self.config_path.clone(),
            config_text: self.config_text.clone(),
            enforcer: self.now.enforcer.state(),
            interfaces: self.now.held.clone(),
        };
        let file = &self.ctx.state_file;
        state.save(file).with_context(|| format!("writing {}", file.display()))
    }

    /// The names of the held interfaces.
    pub fn names(&self) -> Vec<String> {
        self.now.held.iter().map(|h| h.iface.clone()).collect()
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        self.ctx.pins.dir()
    }

    /// Whether the pins are on a BPF filesystem this agent mounted, which ends with it.
    pub fn pins_die_with_agent(&self) -> bool {
        self.ctx.private_bpffs
    }
}

/// The state at `state_file`, or `None` when there is none or it cannot be read.
pub fn recorded_state(state_file: &Path) -> Option<AgentState> {
    AgentState::load(state_file).ok().flatten()
}

/// Fails when the state records pins this mount namespace cannot see: under `ip netns
/// exec` (a fresh /sys with no BPF filesystem) the pins are there, just not reachable, and
/// removing the state then would orphan them. `sgctl down` checks this before it even
/// stops the agent.
pub fn ensure_reachable(state: Option<&AgentState>, pin_dir: &Path) -> Result<()> {
    let pin_dir = state.map_or(pin_dir, |s| s.pin_dir.as_path());
    let bpffs = Path::new(paths::BPFFS);
    if state.is_some() && pin_dir.starts_with(bpffs) && !crate::dataplane::pins::is_bpffs(bpffs) {
        bail!(
            "no BPF filesystem at {} here, so the pins under {} cannot be reached (under `ip netns exec`?); nothing \
             done: run `sgctl --netns NAME down` instead",
            bpffs.display(),
            pin_dir.display()
        );
    }
    Ok(())
}

/// Removes everything of sgctl's in this namespace that `state_file` and `pin_dir`
/// record: links (so the programs leave the interfaces), clsact filters and the qdiscs
/// sgctl created, every pinned generation, the state. Returns what it removed.
pub fn down(state_file: &Path, pin_dir: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let state = AgentState::load(state_file).unwrap_or_else(|e| {
        warn!("{e}; removing the pins without it");
        None
    });
    let pin_dir = state.as_ref().map_or_else(|| pin_dir.to_path_buf(), |s| s.pin_dir.clone());
    ensure_reachable(state.as_ref(), &pin_dir)?;
    if let Some(pins) = Pins::existing(&pin_dir) {
        for held in state.iter().flat_map(|s| &s.interfaces) {
            links::detach(&pins, held)?;
            done.push(format!("detached from {}", held.iface));
        }
        for link in pins.links() {
            std::fs::remove_file(&link)?;
            done.push(format!("unpinned {}", link.display()));
        }
        let generations = pins.generations();
        pins.remove_all().with_context(|| format!("removing {}", pin_dir.display()))?;
        if !generations.is_empty() {
            done.push(format!("unpinned generation(s) {generations:?} under {}", pin_dir.display()));
        }
    }
    if state.is_some() {
        std::fs::remove_file(state_file)?;
        done.push(format!("removed {}", state_file.display()));
    }
    for held in state.iter().flat_map(|s| &s.interfaces) {
        if crate::dataplane::attach::ifindex(&held.iface).is_ok() {
            // The kernel releases an unpinned link from a workqueue (Linux 6.4 and
            // later), so the programs leave the interface a moment after the unpin:
            // wait for that, up to 5 s, before calling it a failure.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let left = presence(&held.iface)?;
                if left.is_empty() {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    bail!("{} still carries sgctl programs after down: {left:?}", held.iface);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    Ok(done)
}
