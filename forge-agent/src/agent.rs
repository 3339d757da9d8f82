//! The agent runtime: kernel state (loaded or adopted) plus the event reader.

use std::path::PathBuf;

use crate::{
    ebpf::{LoadError, MapWriter, Pins, Want, WriterError, loader, ring::EventReader},
    events::DecisionEvent,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("opening the event ring buffer: {0}")]
    Ring(#[source] std::io::Error),
    #[error("the event ring buffer was already taken")]
    RingTaken,
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// bpffs directory holding the pins.
    pub pin_root: PathBuf,
    pub want: Want,
    /// Size in bytes of the event ring buffer; `None` keeps the object's
    /// default ([`forge_common::capacity::EVENT_RING_BYTES`], 1 MiB). Must be
    /// a power-of-two multiple of the page size (4096 is the smallest on most
    /// hosts), else the start fails with [`LoadError::RingBytes`]. It applies
    /// to a fresh load only: an agent that adopts pinned state keeps the ring
    /// that state was loaded with (and logs its size), since the programs in
    /// force write to that map. A small ring loses events sooner, never
    /// decisions: losses are counted globally and per cgroup
    /// ([`crate::ebpf::MapWriter::drops`], [`crate::ebpf::MapWriter::drops_by_cgroup`]).
    pub ring_bytes: Option<u32>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(crate::ebpf::pins::DEFAULT_ROOT),
            want: Want::default(),
            ring_bytes: None,
        }
    }
}

/// A running agent. Must be created inside a tokio runtime.
pub struct Agent {
    pub writer: MapWriter,
    pub events: EventReader,
}

impl Agent {
    pub fn start(opts: &AgentOptions) -> Result<Self, AgentError> {
        let handles = loader::start(Pins::new(&opts.pin_root), opts.want, opts.ring_bytes)?;
        for s in &handles.statuses {
            match &s.error {
                None => tracing::info!(backend = s.backend, "backend loaded"),
                Some(e) => tracing::warn!(backend = s.backend, error = %e, "backend not available"),
            }
        }
        let mut writer = MapWriter::new(handles)?;
        let ring = writer.take_events().ok_or(AgentError::RingTaken)?;
        let events = EventReader::new(ring).map_err(AgentError::Ring)?;
        Ok(Self { writer, events })
    }

    /// Events available now, without waiting.
    pub fn drain(&mut self) -> Vec<DecisionEvent> {
        let mut out = Vec::new();
        self.events.drain(&mut out);
        out
    }

    /// Collects events until `pred` is satisfied by the collected set or
    /// `timeout` passes; returns everything collected.
    pub async fn collect_until(
        &mut self,
        timeout: std::time::Duration,
        mut pred: impl FnMut(&[DecisionEvent]) -> bool,
    ) -> Vec<DecisionEvent> {
        let mut out = Vec::new();
        self.events.drain(&mut out);
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&out) {
            match tokio::time::timeout_at(deadline, self.events.read_batch(&mut out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading events");
                    break;
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Removes every pin: enforcement ends for all cgroups this agent governed.
    pub fn remove_pins(self) -> std::io::Result<()> {
        let pins = self.writer.handles().pins.clone();
        drop(self);
        pins.remove_all()
    }
}
