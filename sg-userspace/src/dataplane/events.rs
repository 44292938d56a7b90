//! The trace map (`SG_TRACE`): the kernel's record of the last packet each hook saw,
//! with its parse result and decision (loaded with `LoadOptions::trace`; tests); and the
//! verdict events: their rate limit (`SG_EVENT_CONFIG`) and ring (`SG_EVENTS`).

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf};
use sg_common::{Event, EventConfig, TraceRecord, map};

use super::{
    MapSource,
    error::{DataplaneError, Result},
    object::Dataplane,
};

impl Dataplane {
    /// Zeroes the trace record of `hook` on every CPU, so the next one read is fresh.
    pub fn clear_trace(&mut self, hook: u32) -> Result<()> {
        let map = self.ebpf.map_mut(map::TRACE).ok_or_else(|| DataplaneError::MissingMap(map::TRACE.to_string()))?;
        let mut array: PerCpuArray<&mut MapData, TraceRecord> = PerCpuArray::try_from(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![TraceRecord::default(); cpus])?;
        array.set(hook, zeros, 0)?;
        Ok(())
    }

    /// [`set_event_limits`] on maps still in this object (benchmarks change them between
    /// runs).
    pub fn set_event_limits(&mut self, rate: [u32; 2], burst: [u32; 2]) -> Result<()> {
        let name = map::EVENT_CONFIG;
        let map = self.ebpf.map_mut(name).ok_or_else(|| DataplaneError::MissingMap(name.to_string()))?;
        write_limits(&mut Array::try_from(map)?, rate, burst)
    }

    /// The verdict-event ring, borrowed from the object.
    pub fn event_ring(&mut self) -> Result<RingBuf<&mut MapData>> {
        let map = self.ebpf.map_mut(map::EVENTS).ok_or_else(|| DataplaneError::MissingMap(map::EVENTS.to_string()))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The most recent trace record of `hook` over all CPUs (needs `LoadOptions::trace`).
    pub fn last_trace(&self, hook: u32) -> Result<TraceRecord> {
        let map = self.ebpf.map(map::TRACE).ok_or_else(|| DataplaneError::MissingMap(map::TRACE.to_string()))?;
        let array: PerCpuArray<&MapData, TraceRecord> = PerCpuArray::try_from(map)?;
        let per_cpu = array.get(&hook, 0)?;
        per_cpu.iter().max_by_key(|record| record.seq).copied().ok_or_else(|| DataplaneError::Refused("no CPUs".into()))
    }
}

/// Writes the verdict events' rate limit: `rate` events a second and `burst` per kind
/// ([`sg_common::event_kind`]) for each interface and hook, shared out over the CPUs
/// (each CPU has its own bucket, so the kernel takes no lock).
pub fn set_event_limits(source: &mut impl MapSource, rate: [u32; 2], burst: [u32; 2]) -> Result<()> {
    let mut array: Array<MapData, EventConfig> = source.take_map(map::EVENT_CONFIG)?;
    write_limits(&mut array, rate, burst)
}

fn write_limits<T: std::borrow::BorrowMut<MapData>>(
    array: &mut Array<T, EventConfig>,
    rate: [u32; 2],
    burst: [u32; 2],
) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.max(1) as u32;
    let config = EventConfig::new(rate, burst, cpus, crate::clock::ns_per_jiffy());
    array.set(0, config, 0)?;
    Ok(())
}

/// The verdict-event ring of a generation, for its one reader (the agent).
pub fn event_ring(source: &mut impl MapSource) -> Result<RingBuf<MapData>> {
    source.take_map(map::EVENTS)
}

/// One record of the ring as an [`Event`] (`None`: not an event's size).
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is plain integers, any bytes are a valid value; the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
