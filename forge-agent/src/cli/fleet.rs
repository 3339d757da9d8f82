//! `forge fleet`: publish signed bundles, release identities fleet-wide
//! (signed k of n by operators), and read the fleet's history from NATS
//! JetStream (docs/fleet.md).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use forge_agent::{
    fleet::{
        self, Identity, RecordAction, SignedRecord, TrustRecord,
        bus::bucket,
        link::now_ms,
        record::{Issuer, Verified},
        wire,
    },
    policy::Tier,
    sign::{Bundle, SigningKey, files::write_atomic, signature::AddOutcome, trust::TrustConfig},
};

use super::{print_json, text_lines};

#[derive(Subcommand)]
pub(crate) enum FleetCommand {
    /// Publish a signed policy bundle (a directory), or a signed release
    /// made with `forge fleet release --out` (a file), to every agent of the
    /// fleet. Each agent verifies it against its own trust config (k-of-n)
    /// and applies it; an unsigned, under-quorum or older bundle or release
    /// is refused and reported by every agent. With --trust it is checked
    /// here first and not published if it would be refused.
    #[command(
        after_help = "Example:\n  forge policy bundle create --name prod --version 8 --out prod-8 policies/\n  \
forge policy sign prod-8 --key alice.key\n  \
forge fleet publish prod-8 --nats nats://10.0.0.5:4222 --trust trust.toml"
    )]
    Publish(PublishArgs),
    /// Clear an identity fleet-wide (operators): every record about it
    /// issued before now stops counting, on every node. Signed with operator
    /// keys (ones the agents' --trust lists), as many as its threshold asks:
    /// give --key once per key, or write the release with --out, add
    /// signatures with `forge fleet sign` and publish it with `forge fleet
    /// publish`. `IDENTITY` is `sha3-256:<hex>` or `cgroup:<path>`.
    #[command(
        after_help = "Examples:\n  forge fleet release sha3-256:6f1e… --key alice.key --key bob.key --reason \"rebuilt from clean source\"\n  \
forge fleet release sha3-256:6f1e… --key alice.key --out release.json\n  \
forge fleet sign release.json --key bob.key          # on bob's machine\n  \
forge fleet publish release.json --trust trust.toml"
    )]
    Release(ReleaseArgs),
    /// Add your operator signature to a release written by `forge fleet
    /// release --out` (signing again with the same key replaces yours).
    #[command(after_help = "Example:\n  forge fleet sign release.json --key bob.key")]
    Sign(SignRecordArgs),
    /// The fleet's history: every bundle and trust record still in the
    /// stream, oldest first, with who signed it. With --nodes and --trust
    /// each entry is verified; exit 4 if any does not verify.
    History(HistoryArgs),
}

#[derive(Args)]
pub(crate) struct BusArgs {
    /// The NATS server (JetStream enabled).
    #[arg(long, env = "FORGE_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
}

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The bundle directory (`forge policy bundle create`, then `sign`), or a
    /// release file (`forge fleet release --out`, then `forge fleet sign`).
    bundle: PathBuf,
    #[command(flatten)]
    bus: BusArgs,
    /// Verify against this trust config before publishing.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ReleaseArgs {
    /// What to release: `sha3-256:<hex>` (a capsule or executable digest,
    /// as `forge status` lists it under fleet) or `cgroup:<path>`.
    identity: String,
    /// An operator's private key; repeat it for each signer (the agents
    /// need as many as their trust config's threshold).
    #[arg(long, value_name = "FILE", required = true)]
    key: Vec<PathBuf>,
    /// The issuer the record names: the name the agents' trust config gives
    /// one of the signing keys (default: the first key file's stem, as
    /// `file = "ops.pub"` names it `ops`).
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    /// Why, for the audit trail.
    #[arg(long, default_value = "released by an operator")]
    reason: String,
    /// Write the signed release to FILE (new) instead of publishing it, for
    /// more signatures (`forge fleet sign`) and `forge fleet publish`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Check the release against this trust config (the agents' --trust)
    /// and publish it only if it has enough signatures.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    #[command(flatten)]
    bus: BusArgs,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct SignRecordArgs {
    /// The release file (`forge fleet release --out`).
    file: PathBuf,
    /// Your operator private key.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// The fleet's node keys (as given to the agents' --fleet-nodes).
    #[arg(long, value_name = "FILE", requires = "trust")]
    nodes: Option<PathBuf>,
    /// The operators' trust config (as given to the agents' --trust).
    #[arg(long, value_name = "FILE", requires = "nodes")]
    trust: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: &FleetCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match cmd {
            FleetCommand::Publish(a) => publish(a).await,
            FleetCommand::Release(a) => release(a).await,
            FleetCommand::Sign(a) => sign_record(a),
            FleetCommand::History(a) => history(a).await,
        }
    })
}

async fn connect(bus: &BusArgs) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(&bus.nats)
        .await
        .with_context(|| format!("connecting to {} (is nats-server running with -js?)", bus.nats))?;
    Ok(async_nats::jetstream::new(client))
}

fn emit(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(v)
    } else {
        text_lines(v).iter().for_each(|l| println!("{l}"));
        Ok(())
    }
}

async fn publish(a: &PublishArgs) -> anyhow::Result<ExitCode> {
    if !a.bundle.is_dir() {
        let bytes = read_record(&a.bundle)?;
        return put_record(&a.bus, &bytes, a.trust.as_deref(), a.json).await;
    }
    let bundle = Bundle::load(&a.bundle)?;
    if let Some(t) = &a.trust {
        let trust = TrustConfig::load(t)?;
        bundle.verify(&trust, None).with_context(|| format!("{}: not published", a.bundle.display()))?;
    }
    let packed = wire::pack(&bundle)?;
    let js = connect(&a.bus).await?;
    let store = bucket(&js, fleet::POLICY_BUCKET).await.map_err(anyhow::Error::msg)?;
    let revision = store
        .put(&packed.name, packed.bytes.into())
        .await
        .with_context(|| format!("publishing to {}", fleet::POLICY_BUCKET))?;
    let v = json!({"published": packed.name, "version": packed.version, "revision": revision, "published_at_ms": now_ms(), "bucket": fleet::POLICY_BUCKET});
    emit(&v, a.json)?;
    Ok(ExitCode::SUCCESS)
}

async fn release(a: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    let identity = Identity::parse(&a.identity)?;
    let keys = a.key.iter().map(|k| SigningKey::load(k)).collect::<Result<Vec<_>, _>>()?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.key[0].file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    anyhow::ensure!(fleet::valid_name(&name), "--as {name:?}: 1-64 of [A-Za-z0-9_-]");
    let record = TrustRecord {
        node: name,
        identity,
        action: RecordAction::Release,
        tier: Tier::Verified,
        reason: vec![a.reason.clone()],
        trace_head: None,
        issued_at_ms: now_ms(),
        seq: 0,
    };
    let mut env = record.sign(&keys[0]);
    for k in &keys[1..] {
        env.cosign(k)?;
    }
    let Some(out) = &a.out else {
        return put_record(&a.bus, &env.to_bytes(), a.trust.as_deref(), a.json).await;
    };
    if let Some(t) = &a.trust {
        check_record(&env.to_bytes(), t)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &env.to_bytes()))
        .with_context(|| format!("writing {}", out.display()))?;
    let v = json!({"written": out, "release": record.identity.to_string(), "by": record.node, "signatures": signature_ids(&env)?});
    emit(&v, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a release file (at most a record's size).
fn read_record(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(fleet::record::MAX_RECORD_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Key ids of the signatures an envelope carries (verified or not).
fn signature_ids(env: &SignedRecord) -> anyhow::Result<Vec<String>> {
    Ok(env.signature_list()?.entries().iter().map(|e| e.key.id().to_string()).collect())
}

/// Verifies an operator record against `trust` (k of n).
fn check_record(bytes: &[u8], trust: &std::path::Path) -> anyhow::Result<Verified> {
    let t = TrustConfig::load(trust)?;
    SignedRecord::verify_operator(bytes, &t)
        .with_context(|| format!("checked against {}: not published", trust.display()))
}

/// Publishes a signed record under its bucket key, checked first against
/// `trust` when given.
async fn put_record(
    bus: &BusArgs,
    bytes: &[u8],
    trust: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let env: SignedRecord = serde_json::from_slice(bytes).context("not a signed trust record")?;
    let record: TrustRecord = serde_json::from_str(&env.body).context("the record's body")?;
    if let Some(t) = trust {
        check_record(bytes, t)?;
    }
    let js = connect(bus).await?;
    let store = bucket(&js, fleet::TRUST_BUCKET).await.map_err(anyhow::Error::msg)?;
    let revision = store
        .put(record.bucket_key(), bytes.to_vec().into())
        .await
        .with_context(|| format!("publishing to {}", fleet::TRUST_BUCKET))?;
    let v = json!({"released": record.identity.to_string(), "action": record.action, "by": record.node, "revision": revision, "signatures": signature_ids(&env)?});
    emit(&v, json)?;
    Ok(ExitCode::SUCCESS)
}

fn sign_record(a: &SignRecordArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::load(&a.key)?;
    let bytes = read_record(&a.file)?;
    let mut env: SignedRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a signed trust record", a.file.display()))?;
    let outcome = env.cosign(&key).with_context(|| a.file.display().to_string())?;
    if outcome != AddOutcome::Unchanged {
        write_atomic(&a.file, &env.to_bytes(), 0o644)
            .with_context(|| format!("writing {}", a.file.display()))?;
    }
    let v = json!({
        "file": a.file,
        "key_id": key.public_key().id().to_string(),
        "outcome": format!("{outcome:?}").to_lowercase(),
        "signatures": signature_ids(&env)?,
    });
    emit(&v, a.json)?;
    Ok(ExitCode::SUCCESS)
}

async fn entries(
    store: &async_nats::jetstream::kv::Store,
) -> anyhow::Result<Vec<async_nats::jetstream::kv::Entry>> {
    let mut out = Vec::new();
    let keys: Vec<String> = store.keys().await?.filter_map(|k| async { k.ok() }).collect().await;
    for k in keys {
        let mut h = store.history(&k).await?;
        while let Some(e) = h.next().await {
            out.push(e?);
        }
    }
    Ok(out)
}

async fn history(a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let trust = match (&a.nodes, &a.trust) {
        (Some(n), Some(t)) => Some((TrustConfig::load(n)?, TrustConfig::load(t)?)),
        _ => None,
    };
    let js = connect(&a.bus).await?;
    let mut rows: Vec<(i128, Value)> = Vec::new();
    let mut bad = 0usize;
    for name in [fleet::POLICY_BUCKET, fleet::TRUST_BUCKET] {
        let store = bucket(&js, name).await.map_err(anyhow::Error::msg)?;
        for e in entries(&store).await.with_context(|| format!("reading {name}"))? {
            let at = e.created.unix_timestamp_nanos();
            let mut row =
                json!({"bucket": name, "key": e.key, "revision": e.revision, "time_ms": at / 1_000_000});
            let checked = if name == fleet::POLICY_BUCKET {
                bundle_row(&e.value, trust.as_ref().map(|t| &t.1), &mut row)
            } else {
                record_row(&e.value, trust.as_ref(), &mut row)
            };
            if let Err(err) = checked {
                bad += 1;
                row["verified"] = json!(false);
                row["error"] = json!(err);
            }
            rows.push((at, row));
        }
    }
    rows.sort_by_key(|(at, _)| *at);
    let rows: Vec<Value> = rows.into_iter().map(|(_, r)| r).collect();
    if a.json {
        print_json(&rows)?;
    } else if rows.is_empty() {
        println!("(no history)");
    } else {
        for r in &rows {
            println!("{}", text_line(r));
        }
    }
    Ok(if trust.is_some() && bad > 0 { ExitCode::from(4) } else { ExitCode::SUCCESS })
}

fn text_line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().map_or_else(|| r[k].to_string(), String::from);
    let verdict = match r["verified"].as_bool() {
        Some(true) => "verified".to_string(),
        Some(false) => format!("NOT VERIFIED: {}", s("error")),
        None => "unverified".to_string(),
    };
    let when = utc(r["time_ms"].as_u64().unwrap_or_default());
    if r["bucket"] == fleet::POLICY_BUCKET {
        format!(
            "#{} {when} bundle {} v{} signers={} ({verdict})",
            r["revision"],
            s("name"),
            r["version"],
            r["signers"]
        )
    } else {
        format!(
            "#{} {when} {} {} {} tier={} reason={:?} ({verdict})",
            r["revision"],
            s("issued_by"),
            s("action"),
            s("identity"),
            s("tier"),
            s("reason")
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time in milliseconds.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn bundle_row(bytes: &[u8], trust: Option<&TrustConfig>, row: &mut Value) -> Result<(), String> {
    let (name, version) = wire::peek(bytes).map_err(|e| e.to_string())?;
    row["name"] = json!(name);
    row["version"] = json!(version);
    let Some(trust) = trust else { return Ok(()) };
    let dir = tempfile_dir();
    let r = wire::unpack(bytes, &dir)
        .map_err(|e| e.to_string())
        .and_then(|p| Bundle::load(&p).map_err(|e| e.to_string()))
        .and_then(|b| b.verify(trust, None).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    let v = r?;
    row["signers"] = json!(v.signer_ids().iter().map(ToString::to_string).collect::<Vec<_>>());
    row["verified"] = json!(true);
    Ok(())
}

fn record_row(
    bytes: &[u8],
    trust: Option<&(TrustConfig, TrustConfig)>,
    row: &mut Value,
) -> Result<(), String> {
    let record: TrustRecord = serde_json::from_slice::<SignedRecord>(bytes)
        .ok()
        .and_then(|e| serde_json::from_str(&e.body).ok())
        .ok_or("not a signed trust record")?;
    row["identity"] = json!(record.identity.to_string());
    row["issued_by"] = json!(record.node);
    row["action"] = json!(record.action);
    row["tier"] = json!(record.tier);
    row["reason"] = json!(record.reason.join("; "));
    row["issued_at_ms"] = json!(record.issued_at_ms);
    row["trace_head"] = json!(record.trace_head);
    let Some((nodes, operators)) = trust else { return Ok(()) };
    let v: Verified = SignedRecord::verify(bytes, nodes, operators).map_err(|e| e.to_string())?;
    row["issuer"] = json!(match v.issuer {
        Issuer::Node(_) => "node",
        Issuer::Operator(_) => "operator",
    });
    row["signers"] = json!(v.signers.iter().map(ToString::to_string).collect::<Vec<_>>());
    row["verified"] = json!(true);
    Ok(())
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("forge-fleet-history-{}-{}", std::process::id(), now_ms()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_839_598_982), "2026-11-28T04:19:58Z");
    }
}
