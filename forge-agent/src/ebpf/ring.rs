//! Reading decision events from the ring buffer with tokio.

use std::{collections::BTreeMap, io};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::events::{DecisionEvent, Hook};

/// The ring buffer, readable asynchronously. Counts what it decodes per hook
/// and what it could not decode.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    pub per_hook: BTreeMap<Hook, u64>,
    pub decode_errors: u64,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map descriptor and keeps it open,
        // unchanged, for as long as it lives; the AsyncFd owns the ring.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd, per_hook: BTreeMap::new(), decode_errors: 0 })
    }

    /// Waits until events are available and appends every available one to
    /// `out`. Undecodable records are counted and logged, not returned.
    pub async fn read_batch(&mut self, out: &mut Vec<DecisionEvent>) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match DecisionEvent::from_bytes(&item) {
                Ok(ev) => {
                    *self.per_hook.entry(ev.hook).or_default() += 1;
                    out.push(ev);
                }
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable event from the ring buffer");
                }
            }
        }
        guard.clear_ready();
        Ok(())
    }

    /// Drains whatever is available now without waiting.
    pub fn drain(&mut self, out: &mut Vec<DecisionEvent>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            match DecisionEvent::from_bytes(&item) {
                Ok(ev) => {
                    *self.per_hook.entry(ev.hook).or_default() += 1;
                    out.push(ev);
                }
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable event from the ring buffer");
                }
            }
        }
    }
}
