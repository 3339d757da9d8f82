//! A fleet for the tests and the benchmark: three real agents (`forge agent run`, separate processes, data dirs,
//! pin roots and governed cgroups) joined through a real `nats-server`
//! with JetStream on loopback.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use forge_agent::{
    api::{Request, client},
    cgroup::Cgroup,
    ebpf::Pins,
    sign::{Bundle, Document, SigningKey, keys},
    workload::{Action, Outcome, run_action_in},
};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::fail;

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// A `nats-server -js` on loopback; killed when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
}

impl Nats {
    pub fn start(port: u16, store: &Path, log: &Path) -> Result<Self, Failed> {
        let mut n = Self { child: None, port, store: store.to_path_buf(), log: log.to_path_buf() };
        n.restart()?;
        Ok(n)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store).
    pub fn restart(&mut self) -> Result<(), Failed> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(fail)?;
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(fail)?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nats-server did not listen on {} (log {})",
                    self.port,
                    self.log.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL: the bus disappears mid-run.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Node {
    pub name: &'static str,
    pub socket: PathBuf,
    pub cgroup: Cgroup,
    pin_root: PathBuf,
    log: PathBuf,
    child: Child,
}

/// The fleet of one test.
pub struct Fleet {
    pub dir: PathBuf,
    pub nats: Nats,
    pub nodes: Vec<Node>,
    /// The first operator key (`ops.key`); it also signs capsules.
    pub ops: SigningKey,
    pub ops_id: String,
    /// The operator keys the agents' --trust lists: `ops`, `ops2`, `ops3`.
    pub operators: Vec<PathBuf>,
    /// The trust config's threshold: bundles get that many signatures.
    pub threshold: usize,
    parent: String,
    forge: PathBuf,
    /// Capsule run cgroups to remove afterwards.
    pub runs: Vec<PathBuf>,
}

const ALLOW: &str = "{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}";

/// Policy `name` for the nodes' cgroups: everything allowed but connects to
/// `deny_port` on loopback.
fn node_policy(parent: &str, name: &str, deny_port: Option<u16>) -> String {
    let rule = deny_port.map_or(String::new(), |p| {
        format!("  rules:\n    - {{name: {name}-no-{p}, op: net.connect, action: deny, cidrs: [127.0.0.0/8], ports: \"{p}\"}}\n")
    });
    format!(
        "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{cgroups: [{parent}/*]}}\n  trust: verified\n  defaults: {ALLOW}\n{rule}"
    )
}

fn policy(parent: &str, ops_id: &str, deny_port: Option<u16>) -> Vec<Document> {
    let base = node_policy(parent, "fleet-nodes", deny_port);
    let capsules = format!(
        "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: fleet-capsules}}\nspec:\n  selector: {{signers: [\"{ops_id}\"]}}\n  trust: trusted\n  defaults: {ALLOW}\n"
    );
    vec![
        Document { name: "nodes.yaml".into(), bytes: base.into_bytes() },
        Document { name: "capsules.yaml".into(), bytes: capsules.into_bytes() },
    ]
}

impl Fleet {
    /// Starts the bus and three agents running the `forge` binary at `forge`,
    /// trusting one operator key.
    pub fn start(tag: &str, forge: &Path) -> Result<Self, Failed> {
        Self::start_with(tag, forge, 1)
    }

    /// Like [`Fleet::start`], with three operator keys (`ops`, `ops2`,
    /// `ops3`) of which the agents' --trust needs `threshold` (bundles and
    /// operator releases). Capsules are signed by `ops` alone.
    pub fn start_with(tag: &str, forge: &Path, threshold: usize) -> Result<Self, Failed> {
        let id = std::process::id();
        let dir = PathBuf::from(format!("/tmp/forge-test-{id}-fleet-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let ops = keys::generate_files(&dir, "ops").map_err(fail)?;
        let ops_id = ops.key_id.to_string();
        let mut operators = vec![ops.private_path.clone()];
        let mut trust = format!("threshold = {threshold}\n[[key]]\nfile = \"ops.pub\"\n");
        for n in ["ops2", "ops3"] {
            operators.push(keys::generate_files(&dir, n).map_err(fail)?.private_path);
            trust.push_str(&format!("[[key]]\nfile = \"{n}.pub\"\n"));
        }
        std::fs::write(dir.join("trust.toml"), trust).map_err(fail)?;
        std::fs::write(dir.join("capsule-trust.toml"), "threshold = 1\n[[key]]\nfile = \"ops.pub\"\n")
            .map_err(fail)?;
        let mut nodes_toml = String::from("threshold = 1\n");
        for n in NODES {
            keys::generate_files(&dir, n).map_err(fail)?;
            nodes_toml.push_str(&format!("[[key]]\nname = \"{n}\"\nfile = \"{n}.pub\"\n"));
        }
        std::fs::write(dir.join("nodes.toml"), nodes_toml).map_err(fail)?;
        let parent = format!("forge-fleet-{id}-{tag}");
        for d in policy(&parent, &ops_id, None) {
            std::fs::write(dir.join(&d.name), &d.bytes).map_err(fail)?;
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(fail)?.port();
        let nats = Nats::start(port, &dir.join("js"), &dir.join("nats.log"))?;
        let mut fleet = Self {
            ops: SigningKey::load(&ops.private_path).map_err(fail)?,
            ops_id,
            operators,
            threshold,
            dir,
            nats,
            nodes: Vec::new(),
            parent,
            forge: forge.to_path_buf(),
            runs: Vec::new(),
        };
        for n in NODES {
            let node = fleet.spawn_node(n, tag)?;
            fleet.nodes.push(node);
        }
        // Every node is on the bus before the test starts.
        fleet
            .wait_all("connected to the bus", Duration::from_secs(20), |s| s["fleet"]["connected"] == true)?;
        Ok(fleet)
    }

    fn spawn_node(&self, name: &'static str, tag: &str) -> Result<Node, Failed> {
        let d = &self.dir;
        let data = d.join(name);
        let socket = d.join(format!("{name}.sock"));
        let pin_root =
            PathBuf::from(format!("/sys/fs/bpf/forge-test-{}-fleet-{tag}-{name}", std::process::id()));
        let cg = format!("{}/{name}", self.parent);
        let log = d.join(format!("{name}.log"));
        let child = Command::new(&self.forge)
            .args(["--log-level", "info", "agent", "run", "--backends", "cgroup", "--pin-root"])
            .arg(&pin_root)
            .arg("--policy")
            .arg(d.join("nodes.yaml"))
            .arg("--policy")
            .arg(d.join("capsules.yaml"))
            .args(["--govern", &cg, "--socket"])
            .arg(&socket)
            .arg("--data-dir")
            .arg(&data)
            .arg("--agent-key")
            .arg(d.join(format!("{name}.key")))
            .arg("--trust")
            .arg(d.join("trust.toml"))
            .arg("--state")
            .arg(data.join("applied.json"))
            .arg("--capsule-trust")
            .arg(d.join("capsule-trust.toml"))
            .args(["--fleet-nats", &self.nats.url(), "--fleet-node", name, "--fleet-nodes"])
            .arg(d.join("nodes.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(fail)?)
            .spawn()
            .map_err(fail)?;
        let mut node =
            Node { name, socket, cgroup: Cgroup { id: 0, path: PathBuf::new() }, pin_root, log, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while client::call(&node.socket, &Request::Status).is_err() {
            if Instant::now() > deadline || node.child.try_wait().map_err(fail)?.is_some() {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                return Err(format!("agent {name} did not start: {log}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        node.cgroup = Cgroup::resolve(&cg).map_err(fail)?;
        Ok(node)
    }

    /// Stops node `i`'s agent (SIGTERM: enforcement stays pinned).
    pub fn stop_node(&mut self, i: usize) -> Result<(), Failed> {
        let n = &mut self.nodes[i];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(n.child.id() as i32), nix::sys::signal::SIGTERM)
            .map_err(fail)?;
        n.child.wait().map_err(fail)?;
        Ok(())
    }

    /// Starts node `i`'s agent again (same data dir, key, pins and files).
    pub fn start_node(&mut self, i: usize, tag: &str) -> Result<(), Failed> {
        let node = self.spawn_node(self.nodes[i].name, tag)?;
        self.nodes[i] = node;
        Ok(())
    }

    pub fn call(&self, i: usize, req: &Request) -> Result<Value, Failed> {
        client::call(&self.nodes[i].socket, req).map_err(|e| format!("{}: {e}", self.nodes[i].name).into())
    }

    pub fn status(&self, i: usize) -> Result<Value, Failed> {
        self.call(i, &Request::Status)
    }

    pub fn audit(&self, i: usize) -> Result<Vec<Value>, Failed> {
        Ok(self.call(i, &Request::Audit)?.as_array().cloned().unwrap_or_default())
    }

    /// Waits until `pred` holds for every node's status; returns how long.
    pub fn wait_all(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Duration, Failed> {
        let started = Instant::now();
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                if !pred(&self.status(i)?) {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > timeout {
                let names: Vec<&str> = pending.iter().map(|i| self.nodes[*i].name).collect();
                let last = self.status(pending[0])?;
                let log = self.log(pending[0]);
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                return Err(format!(
                    "{what}: not on {names:?} after {timeout:?}; {}: {}; log tail: {tail:?}",
                    names[0], last["fleet"]
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(started.elapsed())
    }

    /// A bundle of the fleet's policies at `version`, denying connects to
    /// `deny_port` on loopback; signed by the operators (as many as the
    /// threshold) unless `unsigned`.
    pub fn bundle(&self, version: u64, deny_port: Option<u16>, signed: bool) -> Result<PathBuf, Failed> {
        let out = self.dir.join(format!("bundle-v{version}-{}", if signed { "signed" } else { "unsigned" }));
        self.make_bundle(&out, "fleet", version, policy(&self.parent, &self.ops_id, deny_port), signed)
    }

    /// A signed bundle named `name` at `version` with one policy (`fleet-<name>`)
    /// for the nodes' cgroups that denies connects to `deny_port` on loopback.
    pub fn named_bundle(&self, name: &str, version: u64, deny_port: u16) -> Result<PathBuf, Failed> {
        let out = self.dir.join(format!("bundle-{name}-v{version}"));
        let text = node_policy(&self.parent, &format!("fleet-{name}"), Some(deny_port));
        let docs = vec![Document { name: format!("{name}.yaml"), bytes: text.into_bytes() }];
        self.make_bundle(&out, name, version, docs, true)
    }

    fn make_bundle(
        &self,
        out: &Path,
        name: &str,
        version: u64,
        docs: Vec<Document>,
        signed: bool,
    ) -> Result<PathBuf, Failed> {
        let _ = std::fs::remove_dir_all(out);
        Bundle::create(out, name, version, docs).map_err(fail)?;
        if signed {
            for k in &self.operators[..self.threshold] {
                Bundle::sign(out, &SigningKey::load(k).map_err(fail)?).map_err(fail)?;
            }
        }
        Ok(out.to_path_buf())
    }

    /// `forge <args>` with the fleet's bus; its JSON answer.
    pub fn forge(&self, args: &[&str]) -> Result<Value, Failed> {
        self.forge_json(&[args, &["--nats", &self.nats.url()]].concat())
    }

    /// `forge <args> --json` (a command that does not use the bus); its JSON answer.
    pub fn forge_json(&self, args: &[&str]) -> Result<Value, Failed> {
        let out = Command::new(&self.forge).args(args).arg("--json").output().map_err(fail)?;
        if !out.status.success() {
            return Err(format!("forge {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        serde_json::from_slice(&out.stdout).map_err(fail)
    }

    pub fn publish(&self, bundle: &Path) -> Result<Value, Failed> {
        self.forge(&["fleet", "publish", &bundle.display().to_string()])
    }

    /// A connect to 127.0.0.1:`port` from node `i`'s governed cgroup.
    pub fn connect(&self, i: usize, port: u16) -> Result<Outcome, Failed> {
        let exe = std::env::current_exe().map_err(fail)?;
        let target = format!("127.0.0.1:{port}").parse().map_err(fail)?;
        run_action_in(&self.nodes[i].cgroup, &exe, &Action::Connect(target)).map_err(fail)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(n.child.id() as i32),
                nix::sys::signal::SIGTERM,
            );
        }
        for n in &mut self.nodes {
            let _ = n.child.wait();
            let _ = Pins::new(&n.pin_root).remove_all();
            let _ = n.cgroup.destroy();
        }
        for r in &self.runs {
            if let Ok(cg) = Cgroup::resolve(&r.display().to_string()) {
                let _ = cg.destroy();
            }
        }
        if let Ok(cg) = Cgroup::resolve(&self.parent) {
            let _ = cg.destroy();
        }
        self.nats.kill();
        if std::env::var_os("FORGE_KEEP_TEST_DIRS").is_none_or(|v| v != "1") {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
