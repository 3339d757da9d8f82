//! The agent's `/metrics` scraped by a real Prometheus server: the daemon
//! serves the endpoint, the test makes denied connects in the governed
//! cgroup, starts `/usr/bin/prometheus` with its own config and data dir on a
//! free loopback port, and asks its query API for the agent's series.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use forge_agent::{
    api::{Request, client::call, protocol::Document},
    ebpf::Want,
    workload::{Action, run_action_in},
};
use forge_tests::{DaemonFixture, EPERM, check, expect, fail};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::{free_port, listener};

/// Debian's Prometheus server (`cargo xtask setup` installs it).
pub(crate) const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Denied connects the test makes.
const DENIED: u64 = 3;

fn doc(deny_port: u16) -> Document {
    Document {
        name: "metrics.yaml".into(),
        text: format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: metrics}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: metrics-deny, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {deny_port}}}
"
        ),
    }
}

/// One request, one answer: `(status, body)`. HTTP/1.0, so no chunking.
fn get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP head in {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server with its own config and data dir; killed and its
/// directory removed on drop, whatever the test's outcome.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Result<Self, Failed> {
        let dir = PathBuf::from(format!("/tmp/forge-test-{}-prometheus", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(fail)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: forge\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).map_err(fail)?;
        let log = std::fs::File::create(dir.join("prometheus.log")).map_err(fail)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1:0")?).parse().map_err(fail)?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(fail)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {PROMETHEUS}: {e}"))?;
        Ok(Self { child, dir, addr })
    }

    /// The last lines of the server's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The instant vector `query` evaluates to (empty until scraped).
    fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", url_encode(query)))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query {query}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `query` has at least one series; fails with the scrape
    /// state and the server's log if it never does.
    fn wait_for(&mut self, query: &str, deadline: Instant) -> Result<Vec<Value>, Failed> {
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("prometheus exited ({status}):\n{}", self.log_tail()).into());
            }
            match self.query(query) {
                Ok(r) if !r.is_empty() => return Ok(r),
                Ok(_) => last = "no series yet".into(),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let targets = get(self.addr, "/api/v1/targets").map(|(_, b)| b).unwrap_or_else(|e| e);
        Err(format!("no series for {query} ({last}); targets: {targets}\nlog:\n{}", self.log_tail()).into())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the one series in `result`.
fn value(query: &str, result: &[Value]) -> Result<f64, Failed> {
    let [one] = result else {
        return Err(format!("{query}: expected one series, got {}", Value::Array(result.to_vec())).into());
    };
    one["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{query}: no value in {one}").into())
}

pub(crate) fn scraped_by_prometheus() -> Result<(), Failed> {
    let denied = listener("127.0.0.1:0")?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let metrics_addr = metrics.local_addr().map_err(fail)?;
    let d = DaemonFixture::start(
        "metrics",
        vec![doc(denied.port())],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| d.metrics_listener = Some(metrics),
    )?;
    let exe = std::env::current_exe().map_err(fail)?;
    for i in 0..DENIED {
        let got = run_action_in(&d.cgroup, &exe, &Action::Connect(denied)).map_err(fail)?;
        expect(&format!("denied connect {i}"), got, EPERM)?;
    }
    let status = call(&d.socket, &Request::Status).map_err(fail)?;
    let tier = status["governed"][0]["tier"].as_str().unwrap_or_default().to_string();
    let generation = status["governed"][0]["generation"].as_u64().unwrap_or_default();
    check!(!tier.is_empty() && generation > 0, "status {status}");

    // The endpoint itself: the exposition, and errors for anything else.
    let (code, text) = get(metrics_addr, "/metrics").map_err(fail)?;
    check!(code == 200 && text.ends_with("# EOF\n"), "GET /metrics: {code}\n{text}");
    check!(get(metrics_addr, "/").map_err(fail)?.0 == 404, "GET / is not 404");

    let mut prom = Prometheus::start(metrics_addr)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = d.cgroup.id;
    let up = "up{job=\"forge\"}";
    let r = prom.wait_for(up, deadline)?;
    check!(value(up, &r)? == 1.0, "the scrape failed: {}", Value::Array(r));

    let deny = format!(
        "forge_decisions_total{{job=\"forge\",cgroup_id=\"{id}\",hook=\"cgroup/connect4\",verdict=\"deny\",mode=\"enforce\"}}"
    );
    let r = prom.wait_for(&deny, deadline)?;
    check!(value(&deny, &r)? == DENIED as f64, "{deny}: expected {DENIED}, got {}", Value::Array(r));

    let tier_q = format!("forge_workload_tier{{cgroup_id=\"{id}\"}}");
    let r = prom.wait_for(&tier_q, deadline)?;
    let level = forge_agent::policy::Tier::ALL.iter().position(|t| t.as_str() == tier).unwrap_or(99) as f64;
    check!(
        value(&tier_q, &r)? == level && r[0]["metric"]["tier"] == tier.as_str(),
        "{tier_q}: expected tier {tier} ({level}), got {}",
        Value::Array(r)
    );
    let cgroup_label = r[0]["metric"]["cgroup"].as_str().unwrap_or_default();
    check!(cgroup_label == d.cgroup.path.display().to_string(), "cgroup label {cgroup_label}");

    let gen_q = format!("forge_workload_policy_generation{{cgroup_id=\"{id}\"}}");
    let r = prom.wait_for(&gen_q, deadline)?;
    check!(
        value(&gen_q, &r)? == generation as f64,
        "{gen_q}: expected {generation}, got {}",
        Value::Array(r)
    );

    for (q, want) in [
        ("forge_ring_drops_total".to_string(), 0.0),
        (format!("forge_workload_frozen{{cgroup_id=\"{id}\"}}"), 0.0),
        (format!("forge_workload_lost_events_total{{cgroup_id=\"{id}\"}}"), 0.0),
        ("forge_quarantines_total".to_string(), 0.0),
        ("forge_workloads".to_string(), 1.0),
        ("forge_map_entries{map=\"cgroups\"}".to_string(), 1.0),
    ] {
        let r = prom.wait_for(&q, deadline)?;
        check!(value(&q, &r)? == want, "{q}: expected {want}, got {}", Value::Array(r));
    }
    let rss = "forge_process_resident_memory_bytes";
    let r = prom.wait_for(rss, deadline)?;
    check!(value(rss, &r)? > 0.0, "{rss}: {}", Value::Array(r));
    // The connects were read as events too (the scorer watches allowed and denied ones).
    let read = "forge_events_read_total{hook=\"cgroup/connect4\"}";
    let r = prom.wait_for(read, deadline)?;
    check!(value(read, &r)? >= DENIED as f64, "{read}: {}", Value::Array(r));
    drop(prom);
    drop(d);
    Ok(())
}
