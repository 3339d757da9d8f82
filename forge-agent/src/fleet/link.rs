//! The daemon's side of the fleet: configuration, the ledger, counters
//! and partitions. Pure state: the daemon calls it, the bus task feeds it.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    bus::{Bus, Inbound},
    ledger::{Admit, Effective, Ledger},
    record::{Identity, Issuer, RecordAction, TrustRecord, Verified},
    store,
};
use crate::{
    policy::Tier,
    sign::{SigningKey, trust::TrustConfig},
};

/// What an identity the fleet marks at or below `refuse_at` gets here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// New runs are refused and running workloads are quarantined here too.
    #[default]
    Quarantine,
    /// New runs (capsules) are refused; running workloads are left alone.
    Refuse,
    /// Recorded and shown, nothing enforced.
    Audit,
}

/// `forge agent run --fleet-*`.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`.
    pub nats: String,
    /// This node's name (its key must be listed under that name in `nodes`).
    pub node: String,
    /// Trust file listing the fleet's node keys, named after their nodes.
    pub nodes: PathBuf,
    pub rule: Rule,
    /// The tier from which the rule applies.
    pub refuse_at: Tier,
    /// The fleet's directory: received bundles are unpacked in `bundles/`
    /// before verification; the ledger is kept in [`store::FILE`].
    pub dir: PathBuf,
}

/// Counters for `forge status` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounts {
    pub bundles_applied: u64,
    pub bundles_refused: u64,
    pub records_admitted: u64,
    pub records_refused: u64,
    pub records_published: u64,
    pub partitions: u64,
}

/// The daemon's fleet state.
pub struct FleetLink {
    pub config: FleetConfig,
    pub nodes: TrustConfig,
    /// The operators' trust config (the agent's `--trust`): their records
    /// need its threshold of signatures, like bundles.
    pub operators: TrustConfig,
    key: Arc<SigningKey>,
    /// Read only through [`FleetLink::admit`], which keeps it on disk.
    pub ledger: Ledger,
    pub counts: FleetCounts,
    /// Receives from the bus (taken by the daemon's loop).
    pub inbox: Option<mpsc::Receiver<Inbound>>,
    bus: Option<Bus>,
    seq: u64,
    pub connected: bool,
    ever_connected: bool,
    down_since: Option<Instant>,
    /// Seconds each partition lasted, the latest last (at most 64 kept).
    pub partitions_s: Vec<f64>,
    pub last_error: Option<String>,
    /// Bundle name, version and bus revision last applied from the bus.
    pub last_bundle: Option<(String, u64, u64)>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl FleetLink {
    /// Restores the ledger kept on disk (every record verified again),
    /// connects to the bus (in the background) and returns the link.
    /// `operators`: the agent's trust config.
    pub async fn start(
        config: FleetConfig,
        key: Arc<SigningKey>,
        operators: TrustConfig,
    ) -> Result<Self, String> {
        if !super::valid_name(&config.node) {
            return Err(format!("fleet node name {:?}: 1-64 of [A-Za-z0-9_-]", config.node));
        }
        let nodes = TrustConfig::load(&config.nodes).map_err(|e| e.to_string())?;
        match nodes.find(&key.public_key()) {
            Some(k) if k.label == config.node => {}
            Some(k) => {
                return Err(format!(
                    "{}: this agent's key is listed as {:?}, not as node {:?}",
                    config.nodes.display(),
                    k.label,
                    config.node
                ));
            }
            None => {
                return Err(format!(
                    "{}: this agent's key ({}) is not listed; other nodes would refuse its records",
                    config.nodes.display(),
                    key.public_key().id()
                ));
            }
        }
        let mut ledger = Ledger::default();
        let mut counts = FleetCounts::default();
        let mut last_error = None;
        let path = config.dir.join(store::FILE);
        let stored = store::load(&path).map_err(|e| e.to_string())?;
        let restored = store::restore(&mut ledger, &stored, &nodes, &operators, &path);
        for why in &restored.dropped {
            tracing::warn!(error = %why, "fleet: a stored record no longer verifies; dropped");
            counts.records_refused += 1;
            last_error = Some(why.clone());
        }
        if !stored.is_empty() {
            tracing::info!(
                file = %path.display(),
                restored = restored.admitted,
                dropped = restored.dropped.len(),
                "fleet: records restored from disk"
            );
        }
        let (tx, rx) = mpsc::channel(1024);
        let bus = super::bus::spawn(&config.nats, tx).await.map_err(|e| format!("{}: {e}", config.nats))?;
        Ok(Self {
            config,
            nodes,
            operators,
            key,
            ledger,
            counts,
            inbox: Some(rx),
            bus: Some(bus),
            seq: 0,
            connected: false,
            ever_connected: false,
            down_since: Some(Instant::now()),
            partitions_s: Vec::new(),
            last_error,
            last_bundle: None,
        })
    }

    /// Admits a verified record to the ledger and, if it counts now, keeps
    /// the ledger on disk ([`store`]). A failed write is logged and shown in
    /// `last_error`; the record is in force here either way.
    pub fn admit(&mut self, v: Verified) -> Admit {
        let admitted = self.ledger.admit(v);
        if admitted == Admit::New {
            let path = self.config.dir.join(store::FILE);
            if let Err(e) = store::save(&path, &self.ledger.signed()) {
                tracing::error!(error = %e, "fleet: keeping the ledger on disk failed; a restart would lose it");
                self.last_error = Some(e.to_string());
            }
        }
        admitted
    }

    /// Signs a record of this node about `identity`, admits it to the
    /// ledger and queues it for the bus. Returns the record.
    pub fn publish(
        &mut self,
        identity: Identity,
        action: RecordAction,
        tier: Tier,
        reason: Vec<String>,
        trace_head: Option<String>,
    ) -> TrustRecord {
        self.seq += 1;
        let record = TrustRecord {
            node: self.config.node.clone(),
            identity,
            action,
            tier,
            reason,
            trace_head,
            issued_at_ms: now_ms(),
            seq: self.seq,
        };
        let signed = record.sign(&self.key);
        if let Some(bus) = &self.bus {
            let _ = bus.outbox.send((record.bucket_key(), signed.to_bytes()));
        }
        self.admit(Verified {
            record: record.clone(),
            issuer: Issuer::Node(self.config.node.clone()),
            signers: vec![self.key.public_key().id()],
            envelope: signed,
        });
        self.counts.records_published += 1;
        record
    }

    /// The fleet's verdict on `identity` if the rule refuses it here.
    pub fn refuses(&self, identity: &Identity) -> Option<Effective> {
        if self.config.rule == Rule::Audit {
            return None;
        }
        self.ledger.effective(identity).filter(|e| e.tier >= self.config.refuse_at)
    }

    /// The bus connected (again). Returns how long it was away, if it was.
    pub fn on_connected(&mut self) -> Option<f64> {
        self.connected = true;
        let down = self.down_since.take()?.elapsed().as_secs_f64();
        // The first connection is not a partition.
        std::mem::replace(&mut self.ever_connected, true).then_some(down)
    }

    /// Records a partition that lasted `secs` (after a reconnect).
    pub fn partitioned(&mut self, secs: f64) {
        self.counts.partitions += 1;
        self.partitions_s.push(secs);
        if self.partitions_s.len() > 64 {
            self.partitions_s.remove(0);
        }
    }

    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.down_since.get_or_insert_with(Instant::now);
    }

    pub fn status(&self) -> Value {
        json!({
            "nats": self.config.nats,
            "node": self.config.node,
            "rule": self.config.rule,
            "refuse_at": self.config.refuse_at,
            "connected": self.connected,
            "counts": self.counts,
            "partitions_s": self.partitions_s,
            "last_error": self.last_error,
            "last_bundle": self.last_bundle.as_ref().map(|(n, v, r)| json!({"name": n, "version": v, "revision": r})),
            "identities": self.ledger.all(),
        })
    }
}
