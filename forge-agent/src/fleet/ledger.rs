//! What the fleet's trust records say about each identity.
//!
//! The rule that resolves conflicting records (docs/fleet.md):
//!
//! 1. Each issuer has at most one record per identity in force: its
//!    latest, ordered by `(issued_at_ms, seq)`. An older record from the
//!    same issuer is stale (a replay) and is refused.
//! 2. A node's own release withdraws that node's record only.
//! 3. An operator release clears every record of the identity issued at or
//!    before it; records issued after it count again.
//! 4. Of the records left, the least trusted tier wins.
//!
//! The outcome depends only on the set of records, not on the order they
//! arrive in. The ledger keeps each record's signed envelope, so what it
//! holds can be stored and verified again ([`super::store`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{Identity, Issuer, RecordAction, SignedRecord, TrustRecord, Verified};
use crate::policy::Tier;

/// What admitting a record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Newer than what was held from its issuer: it counts now.
    New,
    /// The very record already held (a redelivery).
    Duplicate,
    /// Older than the record held from the same issuer: refused.
    Stale { held_issued_at_ms: u64 },
}

/// The resolved state of one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub identity: Identity,
    /// The least trusted tier among the records in force.
    pub tier: Tier,
    /// The nodes whose records say so (those at `tier`).
    pub by: Vec<String>,
    /// Their reasons.
    pub reason: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Held {
    identity: Identity,
    by_issuer: BTreeMap<String, Verified>,
    operator_release: Option<Verified>,
}

/// Records in force, by identity.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    ids: BTreeMap<String, Held>,
}

fn order(r: &TrustRecord) -> (u64, u64) {
    (r.issued_at_ms, r.seq)
}

impl Ledger {
    /// Takes in a verified record.
    pub fn admit(&mut self, v: Verified) -> Admit {
        let operator_release =
            matches!(v.issuer, Issuer::Operator(_)) && v.record.action == RecordAction::Release;
        let held = self
            .ids
            .entry(v.record.identity.key())
            .or_insert_with(|| Held { identity: v.record.identity.clone(), ..Held::default() });
        let old = if operator_release {
            held.operator_release.as_ref()
        } else {
            held.by_issuer.get(&v.record.node)
        };
        match old {
            Some(old) if old.record == v.record => return Admit::Duplicate,
            Some(old) if order(&old.record) >= order(&v.record) => {
                return Admit::Stale { held_issued_at_ms: old.record.issued_at_ms };
            }
            _ => {}
        }
        if operator_release {
            held.operator_release = Some(v);
        } else {
            held.by_issuer.insert(v.record.node.clone(), v);
        }
        Admit::New
    }

    /// The resolved state of `identity`, if any record is in force for it.
    pub fn effective(&self, identity: &Identity) -> Option<Effective> {
        let held = self.ids.get(&identity.key())?;
        let cutoff = held.operator_release.as_ref().map(|v| order(&v.record));
        let active: Vec<&TrustRecord> = held
            .by_issuer
            .values()
            .map(|v| &v.record)
            .filter(|r| r.action != RecordAction::Release)
            .filter(|r| cutoff.is_none_or(|c| order(r) > c))
            .collect();
        let tier = active.iter().map(|r| r.tier).max()?;
        let worst: Vec<&&TrustRecord> = active.iter().filter(|r| r.tier == tier).collect();
        Some(Effective {
            identity: held.identity.clone(),
            tier,
            by: worst.iter().map(|r| r.node.clone()).collect(),
            reason: worst.iter().flat_map(|r| r.reason.iter().cloned()).collect(),
        })
    }

    /// Every identity with a record in force.
    pub fn all(&self) -> Vec<Effective> {
        self.ids.values().filter_map(|h| self.effective(&h.identity)).collect()
    }

    /// The envelope of every record held (each issuer's latest and the
    /// operator releases), what [`super::store`] keeps on disk.
    pub fn signed(&self) -> Vec<&SignedRecord> {
        self.ids
            .values()
            .flat_map(|h| h.by_issuer.values().chain(h.operator_release.as_ref()))
            .map(|v| &v.envelope)
            .collect()
    }
}
