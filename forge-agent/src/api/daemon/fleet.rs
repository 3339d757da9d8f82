//! The daemon's part of the fleet: bundles and trust records from the bus
//! are verified here, on the task that owns the maps, and the local trust
//! actions are published from here.

use serde_json::{Value, json};

use super::Daemon;
use crate::{
    fleet::{
        Admit, Identity, RecordAction, Rule, SignedRecord,
        bus::Inbound,
        record::{Issuer, Verified},
        wire,
    },
    policy::Tier,
};

/// Actor name of actions the fleet rule takes (never published again).
const FLEET_ACTOR: &str = "fleet";
/// A record from further in the future than this is refused: it could
/// otherwise outlive every operator release (they are ordered by time).
const MAX_CLOCK_AHEAD_MS: u64 = 5 * 60 * 1000;

impl Daemon {
    /// Handles one message from the bus.
    pub fn fleet_inbound(&mut self, msg: Inbound) {
        let Some(link) = self.fleet.as_mut() else { return };
        match msg {
            Inbound::Connected => {
                if let Some(secs) = link.on_connected() {
                    link.partitioned(secs);
                    tracing::warn!(partitioned_s = secs, "fleet bus back; catching up from the stream");
                    self.audit.push(json!({"action": "fleet_reconnected", "partitioned_s": secs}));
                } else {
                    tracing::info!(nats = %link.config.nats, "fleet bus connected");
                }
            }
            Inbound::Disconnected => {
                link.on_disconnected();
                tracing::warn!("fleet bus lost; the policy in force stays, records wait to be published");
            }
            Inbound::Error(e) => {
                tracing::debug!(error = %e, "fleet bus");
                link.last_error = Some(e);
            }
            Inbound::Bundle { key, revision, bytes } => self.fleet_bundle(&key, revision, &bytes),
            Inbound::Record { key, revision, bytes } => self.fleet_record(&key, revision, &bytes),
        }
    }

    fn fleet_refused(&mut self, what: &str, key: &str, revision: u64, error: &str) {
        tracing::warn!(key, revision, error, "fleet: {what} refused");
        let entry = json!({"action": format!("fleet_{what}_refused"), "key": key, "revision": revision, "error": error});
        self.audit.push(entry);
        if let Some(link) = self.fleet.as_mut() {
            match what {
                "bundle" => link.counts.bundles_refused += 1,
                _ => link.counts.records_refused += 1,
            }
            link.last_error = Some(format!("{what} {key}@{revision}: {error}"));
        }
    }

    /// A bundle from the bus: verified and applied like `policy apply
    /// --bundle`, with the set of record. A bundle of record delivered
    /// again while that set is in force changes nothing; one not newer than
    /// the trust domain's version is a replay or rollback and refused.
    fn fleet_bundle(&mut self, key: &str, revision: u64, bytes: &[u8]) {
        let Some(link) = self.fleet.as_ref() else { return };
        let (name, version) = match wire::peek(bytes) {
            Ok(nv) => nv,
            Err(e) => return self.fleet_refused("bundle", key, revision, &e.to_string()),
        };
        // Named by revision only: a bus key may hold `/` and `..`.
        let dir = link.config.dir.join("bundles").join(format!("revision-{revision}"));
        let result = wire::unpack(bytes, &dir)
            .map_err(|e| e.to_string())
            .and_then(|path| self.apply_bundle_at(&path, true).map_err(|e| e.message));
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(v) if v["unchanged"] == true => {}
            Ok(_) => {
                let Some(link) = self.fleet.as_mut() else { return };
                link.counts.bundles_applied += 1;
                link.last_bundle = Some((name.clone(), version, revision));
                tracing::info!(bundle = %name, version, revision, "fleet: bundle applied");
                if let Some(last) = self.audit.last_mut() {
                    last["via"] = json!("fleet");
                    last["revision"] = json!(revision);
                    last["applied_at_ms"] = json!(crate::fleet::link::now_ms());
                }
            }
            Err(e) => self.fleet_refused("bundle", key, revision, &e),
        }
    }

    /// A trust record from the bus: verified, admitted to the ledger, and
    /// the rule carried out for the local workloads it concerns.
    fn fleet_record(&mut self, key: &str, revision: u64, bytes: &[u8]) {
        let Some(link) = self.fleet.as_ref() else { return };
        let v: Verified = match SignedRecord::verify(bytes, &link.nodes, &link.operators) {
            Ok(v) => v,
            Err(e) => return self.fleet_refused("record", key, revision, &e.to_string()),
        };
        if key != v.record.bucket_key() {
            let why = format!("stored under {key:?}, but the record's key is {:?}", v.record.bucket_key());
            return self.fleet_refused("record", key, revision, &why);
        }
        let now = crate::fleet::link::now_ms();
        if v.record.issued_at_ms > now + MAX_CLOCK_AHEAD_MS {
            let why = format!(
                "issued {} s in the future by this host's clock (at most {} s of skew is accepted)",
                (v.record.issued_at_ms - now) / 1000,
                MAX_CLOCK_AHEAD_MS / 1000
            );
            return self.fleet_refused("record", key, revision, &why);
        }
        let own = v.issuer == Issuer::Node(link.config.node.clone());
        let Some(link) = self.fleet.as_mut() else { return };
        let (issuer, signers, record) = (v.issuer.clone(), v.signers.clone(), v.record.clone());
        match link.admit(v) {
            Admit::Duplicate => return,
            Admit::Stale { held_issued_at_ms } => {
                let why = format!(
                    "older than the record held from {} (issued at {held_issued_at_ms} ms): a replay",
                    record.node
                );
                return self.fleet_refused("record", key, revision, &why);
            }
            Admit::New => link.counts.records_admitted += 1,
        }
        if !own {
            let signers: Vec<String> = signers.iter().map(ToString::to_string).collect();
            self.audit.push(json!({
                "action": "fleet_record", "revision": revision, "issuer": issuer, "signers": signers,
                "record": record,
            }));
        }
        self.fleet_enforce(&record.identity);
    }

    /// Carries out the fleet rule for the local workloads that are `identity`.
    pub(super) fn fleet_enforce(&mut self, identity: &Identity) {
        let Some(link) = self.fleet.as_ref() else { return };
        if link.config.rule != Rule::Quarantine {
            return;
        }
        // A cgroup path names a service, not its code: records about one
        // are held and shown, but only digest identities are enforced.
        if identity.digest.is_none() {
            return;
        }
        let verdict = link.refuses(identity);
        let matching: Vec<(u64, bool, bool)> = self
            .governed
            .values()
            .filter(|g| identity.matches(&g.workload))
            .map(|g| (g.cgroup.id, g.fleet_hold, g.compiled.tier == Tier::Compromised))
            .collect();
        let now = std::time::Instant::now();
        for (id, held, compromised) in matching {
            match &verdict {
                Some(e) if !held && !compromised => {
                    let reason = vec![format!(
                        "fleet: {} marked {} by {} ({})",
                        identity,
                        e.tier.as_str(),
                        e.by.join(", "),
                        e.reason.join("; ")
                    )];
                    match self.quarantine(id, FLEET_ACTOR, &reason, now) {
                        Ok(entry) => {
                            self.audit.push(entry);
                            if let Some(g) = self.governed.get_mut(&id) {
                                g.fleet_hold = true;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e.message, cgroup_id = id, "fleet quarantine failed")
                        }
                    }
                }
                None if held => match self.release(id, FLEET_ACTOR) {
                    Ok(entry) => {
                        self.audit.push(entry);
                        if let Some(g) = self.governed.get_mut(&id) {
                            g.fleet_hold = false;
                        }
                    }
                    Err(e) => tracing::error!(error = %e.message, cgroup_id = id, "fleet release failed"),
                },
                _ => {}
            }
        }
    }

    /// Publishes a local trust action on `cgroup_id` (not the fleet's own).
    pub(super) fn fleet_publish(
        &mut self,
        cgroup_id: u64,
        action: RecordAction,
        reason: &[String],
        actor: &str,
    ) {
        if actor == FLEET_ACTOR {
            return;
        }
        let Some(g) = self.governed.get(&cgroup_id) else { return };
        let Some(identity) = Identity::of(&g.workload) else { return };
        let tier = g.compiled.tier;
        let head = self.traces.as_ref().and_then(|t| t.head(cgroup_id)).map(|h| h.to_string());
        let Some(link) = self.fleet.as_mut() else { return };
        let r = link.publish(identity, action, tier, reason.to_vec(), head);
        tracing::info!(identity = %r.identity, action = ?action, tier = %tier, "fleet: trust record published");
    }

    /// The refusal of a capsule run the fleet marked, if it is.
    pub(super) fn fleet_refusal(&self, digest: &str) -> Option<String> {
        let link = self.fleet.as_ref()?;
        let identity = Identity { digest: Some(digest.to_string()), ..Identity::default() };
        let e = link.refuses(&identity)?;
        Some(format!(
            "capsule {digest} is marked {} in the fleet by {} ({}); the fleet rule refuses it here until an operator release (forge fleet release)",
            e.tier.as_str(),
            e.by.join(", "),
            e.reason.join("; ")
        ))
    }

    pub(super) fn fleet_status(&self) -> Value {
        self.fleet.as_ref().map_or(Value::Null, crate::fleet::FleetLink::status)
    }
}
