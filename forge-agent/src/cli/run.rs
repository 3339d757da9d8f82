//! `forge agent run`: the daemon.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use forge_agent::{
    agent::{Agent, AgentOptions},
    api::{
        self,
        daemon::{self, Daemon},
        protocol::Document,
        server,
    },
    explain::explain,
    telemetry::{Otlp, OtlpConfig, Protocol},
};
use tokio::signal::unix::{SignalKind, signal};

use super::{BackendArgs, PinArgs};

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Configuration file (`forge.toml`; every key documented in
    /// deploy/forge.toml). Flags given here win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
    #[command(flatten)]
    backends: BackendArgs,
    /// Policy files or directories (the initial policy set; `forge policy apply` replaces it).
    #[arg(long = "policy", value_name = "PATH")]
    policies: Vec<PathBuf>,
    /// Govern this cgroup (relative to the cgroup v2 mount, or absolute; created if missing)
    /// with what the policy set says for it, with its whole subtree; or `DIR/*`: every
    /// cgroup directly below DIR, now and as they appear. Repeatable.
    #[arg(long, value_name = "CGROUP")]
    govern: Vec<String>,
    /// Trust config (`trust.toml`: keys and threshold). With it the agent is in
    /// strict mode: policy changes are applied only from signed bundles.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// Where the trust domain's bundle version and the set of record (the
    /// latest bundle of each name) are kept: no rollback, across restarts
    /// too. Default: /var/lib/forge/applied.json.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Trust config for Wasm capsules run through the API (`forge pkg run`
    /// talking to the agent): k-of-n signers every capsule needs. Without
    /// it capsules are off. Each run gets its own governed cgroup under
    /// `forge-capsules/`.
    #[arg(long, value_name = "FILE")]
    capsule_trust: Option<PathBuf>,
    /// With --trust: also refuse bundles with rules no backend here can enforce.
    #[arg(long)]
    strict: bool,
    /// The API socket. Default: /run/forge/agent.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A group whose members may use the API besides root (the socket is
    /// then mode 0660, owned by root and this group). Callers inside a
    /// governed cgroup may only read, whoever they are (docs/api.md).
    #[arg(long, value_name = "GROUP")]
    api_group: Option<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, no
    /// authentication: bind to loopback or a protected network; see
    /// docs/metrics.md). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Export spans, decision log records and metrics over OTLP to this
    /// collector, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP; `/v1/traces` etc. are appended).
    /// Plain HTTP only. Off by default (docs/telemetry.md).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The OTLP transport: grpc (default) or http (protobuf bodies).
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// How often batched spans and log records are sent and metrics
    /// collected, in milliseconds (default 10000).
    #[arg(long, value_name = "MS")]
    otlp_interval_ms: Option<u64>,
    /// Print decision events as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// The data directory: execution traces go to `<DIR>/traces/cgroup-<id>.dna`.
    /// Default: /var/lib/forge.
    #[arg(long, env = "FORGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The agent's ed25519 key, which signs trace checkpoints. Created (with
    /// its `.pub`) if missing. Default: `<data-dir>/agent.key`.
    #[arg(long, value_name = "FILE")]
    agent_key: Option<PathBuf>,
    /// Keep no execution traces.
    #[arg(long)]
    no_traces: bool,
    /// Anomaly scoring weights, windows and tier thresholds (TOML; see
    /// docs/trust.md). Default: the documented defaults.
    #[arg(long, value_name = "FILE")]
    scoring: Option<PathBuf>,
    /// Event ring buffer size in bytes: a power-of-two multiple of the page
    /// size (default 1 MiB). Applies when the agent loads the programs; an
    /// agent adopting pinned state keeps the ring it finds.
    #[arg(long, value_name = "BYTES")]
    ring_bytes: Option<u32>,
    /// Routine allowed events recorded in full per workload per second (the
    /// rest are counted; decisions are always recorded). Default: 8.
    #[arg(long, value_name = "N")]
    trace_sample: Option<u32>,
    /// Join a fleet: watch signed policy bundles and trust records on this
    /// NATS server (JetStream), e.g. `nats://10.0.0.5:4222`, and publish
    /// this node's trust records there. Needs --trust (bundles and
    /// operator releases are verified against it) and --fleet-nodes.
    /// Losing the server never loosens enforcement (docs/fleet.md).
    #[arg(long, value_name = "URL")]
    fleet_nats: Option<String>,
    /// This node's name in the fleet (default: the host name).
    #[arg(long, value_name = "NAME")]
    fleet_node: Option<String>,
    /// Trust file of the fleet's node keys, each named after its node
    /// (`[[key]] name = "node-a"`, `file = "node-a.pub"`). Records signed
    /// by any other key, or by a key speaking for another node, are refused.
    #[arg(long, value_name = "FILE")]
    fleet_nodes: Option<PathBuf>,
    /// What an identity the fleet marks compromised gets here: quarantine
    /// (refuse new capsule runs and quarantine matching workloads; the
    /// default), refuse (new capsule runs only) or audit (record only).
    #[arg(long, value_enum, value_name = "RULE")]
    fleet_rule: Option<forge_agent::fleet::Rule>,
}

impl RunArgs {
    /// The flags over the `--config` file over the defaults.
    fn merged(&self) -> anyhow::Result<Self> {
        let mut a = self.clone();
        if let Some(path) = &self.config {
            let c = forge_agent::config::AgentConfig::load(path)?;
            if a.pins.pin_root.as_os_str() == forge_agent::ebpf::pins::DEFAULT_ROOT
                && let Some(p) = c.pin_root
            {
                a.pins.pin_root = p;
            }
            if a.backends.backends.is_empty() {
                for b in &c.backends {
                    a.backends.backends.push(
                        <super::Backend as clap::ValueEnum>::from_str(b, true).map_err(anyhow::Error::msg)?,
                    );
                }
            }
            if a.policies.is_empty() {
                a.policies = c.policies;
            }
            if a.govern.is_empty() {
                a.govern = c.govern;
            }
            a.trust = a.trust.or(c.trust);
            a.capsule_trust = a.capsule_trust.or(c.capsule_trust);
            a.state = a.state.or(c.state);
            a.strict |= c.strict.unwrap_or(false);
            a.socket = a.socket.or(c.socket);
            a.api_group = a.api_group.or(c.api_group);
            if a.metrics_addr.is_none()
                && let Some(m) = c.metrics_addr
            {
                a.metrics_addr =
                    Some(m.parse().with_context(|| format!("{}: metrics_addr {m:?}", path.display()))?);
            }
            a.otlp_endpoint = a.otlp_endpoint.or(c.otlp_endpoint);
            a.otlp_protocol = a.otlp_protocol.or(c.otlp_protocol);
            a.otlp_interval_ms = a.otlp_interval_ms.or(c.otlp_interval_ms);
            a.json |= c.json.unwrap_or(false);
            a.data_dir = a.data_dir.or(c.data_dir);
            a.agent_key = a.agent_key.or(c.agent_key);
            a.no_traces |= c.traces == Some(false);
            a.scoring = a.scoring.or(c.scoring);
            a.ring_bytes = a.ring_bytes.or(c.ring_bytes);
            a.trace_sample = a.trace_sample.or(c.trace_sample);
            a.fleet_nats = a.fleet_nats.or(c.fleet_nats);
            a.fleet_node = a.fleet_node.or(c.fleet_node);
            a.fleet_nodes = a.fleet_nodes.or(c.fleet_nodes);
            a.fleet_rule = a.fleet_rule.or(c.fleet_rule);
        }
        a.state.get_or_insert_with(|| PathBuf::from("/var/lib/forge/applied.json"));
        a.socket.get_or_insert_with(|| PathBuf::from(api::DEFAULT_SOCKET));
        a.data_dir.get_or_insert_with(|| PathBuf::from(forge_agent::dna::DEFAULT_DATA_DIR));
        a.trace_sample.get_or_insert(8);
        Ok(a)
    }

    /// The OTLP settings, if export is on.
    fn otlp(&self) -> anyhow::Result<Option<OtlpConfig>> {
        let protocol = self.otlp_protocol.as_deref().map(str::parse::<Protocol>).transpose()?;
        let Some(endpoint) = &self.otlp_endpoint else {
            anyhow::ensure!(
                protocol.is_none() && self.otlp_interval_ms.is_none(),
                "--otlp-protocol and --otlp-interval-ms need --otlp-endpoint"
            );
            return Ok(None);
        };
        Ok(Some(OtlpConfig::new(endpoint, protocol.unwrap_or_default(), self.otlp_interval_ms)?))
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(forge_agent::dna::DEFAULT_DATA_DIR))
    }

    fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| PathBuf::from(api::DEFAULT_SOCKET))
    }
}

/// Loads the agent key, creating it on first start.
fn agent_key(a: &RunArgs) -> anyhow::Result<forge_agent::sign::SigningKey> {
    agent_key_at(a.agent_key.clone(), &a.data_dir())
}

/// Loads the agent key (`key`, or `agent.key` in `data_dir`), creating it if missing.
pub(crate) fn agent_key_at(
    key: Option<PathBuf>,
    data_dir: &std::path::Path,
) -> anyhow::Result<forge_agent::sign::SigningKey> {
    use forge_agent::sign::{SigningKey, keys};
    let path = key.unwrap_or_else(|| data_dir.join("agent.key"));
    if !path.exists() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| path.extension().is_some_and(|e| e == "key"))
            .with_context(|| format!("--agent-key {}: the file name must end in .key", path.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let made = keys::generate_files(dir, name)?;
        tracing::info!(key = %made.private_path.display(), id = %made.key_id, "created the agent key");
    }
    Ok(SigningKey::load(&path)?)
}

pub(crate) fn run(a: &RunArgs) -> anyhow::Result<ExitCode> {
    let a = a.merged()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(agent(&a))
}

/// Reads policy files (and directories of `*.yaml`) as API documents.
pub(crate) fn read_documents(paths: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            Ok(Document { name: f.display().to_string(), text })
        })
        .collect()
}

/// Joins the fleet at `nats` (the connection itself is made in the background).
/// `operators`: the agent's trust config (bundles and operator records are verified against it).
async fn fleet(
    a: &RunArgs,
    nats: &str,
    operators: Option<forge_agent::sign::TrustConfig>,
) -> anyhow::Result<forge_agent::fleet::FleetLink> {
    let operators = operators.context(
        "--fleet-nats needs --trust: bundles from the bus are applied only when signed k-of-n by those keys",
    )?;
    let nodes = a.fleet_nodes.clone().context("--fleet-nats needs --fleet-nodes (the fleet's node keys)")?;
    let node = match &a.fleet_node {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("the host name (or give --fleet-node)")?
            .to_string_lossy()
            .into_owned(),
    };
    let config = forge_agent::fleet::FleetConfig {
        nats: nats.to_string(),
        node,
        nodes,
        rule: a.fleet_rule.unwrap_or_default(),
        refuse_at: forge_agent::policy::Tier::Compromised,
        dir: a.data_dir().join("fleet"),
    };
    let key = std::sync::Arc::new(agent_key(a)?);
    forge_agent::fleet::FleetLink::start(config, key, operators)
        .await
        .map_err(|e| anyhow::anyhow!("--fleet-nats: {e}"))
}

/// Keeps this process out of the OOM killer's way (the units set it too;
/// this covers a plain start). Best effort: said when refused.
fn shield_from_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "could not set oom_score_adj to -1000: the OOM killer may pick the agent");
    }
}

async fn agent(a: &RunArgs) -> anyhow::Result<ExitCode> {
    shield_from_oom_killer();
    let api_group = a
        .api_group
        .as_deref()
        .map(|g| api::caller::group_id(g).map_err(|e| anyhow::anyhow!("--api-group: {e}")))
        .transpose()?;
    let documents = read_documents(&a.policies)?;
    let start_documents = documents.clone();
    let otlp = a.otlp()?;
    let scoring = a.scoring.as_deref().map(forge_agent::trust::config::load).transpose()?;
    let agent = Agent::start(&AgentOptions {
        pin_root: a.pins.pin_root.clone(),
        want: a.backends.want(),
        ring_bytes: a.ring_bytes,
    })?;
    let h = agent.writer.handles();
    tracing::info!(
        adopted = h.adopted,
        lsm = h.active.lsm,
        cgroup = h.active.cgroup,
        tracepoint = h.active.tracepoint,
        "agent started"
    );
    let mut daemon = Daemon::new(agent, documents).map_err(|e| {
        anyhow::anyhow!("{}\n{}", e.message, e.details.map(|d| d.to_string()).unwrap_or_default())
    })?;
    if let Some(trust) = &a.trust {
        let trust = forge_agent::sign::trust::TrustConfig::load(trust)?;
        daemon.signing = Some(daemon::Signing {
            trust,
            state: a.state.clone().unwrap_or_default(),
            require_enforceable: a.strict,
        });
    }
    if let Some(trust) = &a.capsule_trust {
        let forge = std::env::current_exe().context("the path of this forge binary (capsule runs use it)")?;
        let runner = api::capsules::CapsuleRunner::new(forge, trust.clone(), a.data_dir())
            .map_err(|e| anyhow::anyhow!("--capsule-trust {}: {e}", trust.display()))?;
        daemon.capsules = Some(runner);
    }
    if let Some((config, thresholds)) = scoring {
        daemon.scorer.set_config(config);
        daemon.trust.thresholds = thresholds;
    }
    if !a.no_traces {
        let key = std::sync::Arc::new(agent_key(a)?);
        let mut settings = api::traces::TraceSettings::new(a.data_dir(), key);
        settings.sample_per_sec = a.trace_sample.unwrap_or(8);
        daemon.traces = Some(api::traces::Traces::new(settings));
    }
    if let Some(nats) = &a.fleet_nats {
        daemon.fleet = Some(fleet(a, nats, daemon.signing.as_ref().map(|s| s.trust.clone())).await?);
    }
    if let Some(config) = otlp {
        daemon.telemetry = Some(Otlp::start(config).context("starting OTLP export")?);
    }
    daemon.api_group = api_group;
    daemon.state_file = Some(a.data_dir().join(daemon::STATE_FILE));
    let resumed = daemon.restore(&start_documents)?;
    tracing::info!(resumed = %resumed, "resumed what the agent governed");
    for cg in &a.govern {
        daemon.govern(cg).map_err(|e| anyhow::anyhow!("--govern {cg}: {}", e.message))?;
    }
    if let Some(addr) = a.metrics_addr {
        let l =
            std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}: binding"))?;
        tracing::info!(addr = %l.local_addr().unwrap_or(addr), "metrics at /metrics");
        daemon.metrics_listener = Some(l);
    }
    let socket = a.socket();
    let listener =
        server::bind(&socket, api_group).with_context(|| format!("binding {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "API listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let json = a.json;
    daemon::run(&mut daemon, listener, shutdown, |d, ev| {
        let e = explain(&ev, d.compiled_for(ev.cgroup_id));
        tracing::debug!(event = %ev, "decision");
        let line = if json { serde_json::to_string(&e).unwrap_or_default() } else { e.to_string() };
        println!("{line}");
    })
    .await
    .context("reading events")?;
    let _ = std::fs::remove_file(&socket);
    eprintln!(
        "forge: stopping; enforcement stays pinned under {} (fail-closed). `forge reset` removes it.",
        a.pins.pin_root.display()
    );
    Ok(ExitCode::SUCCESS)
}
