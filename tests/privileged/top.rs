//! `forge top` (the real binary) in a real terminal: tmux runs it against a
//! daemon whose policy denies a loopback port; the test makes denied
//! connects in the governed cgroup and reads the screen until the cgroup's
//! row shows its tier, a non-zero denial rate and the denial count, then
//! presses q and checks that the program exited 0 and left the alternate
//! screen. `forge top --once --json` is checked against the same daemon.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
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

use crate::{listener, sigterm::forge_binary};

/// Debian's tmux (`cargo xtask setup` installs it).
pub(crate) const TMUX: &str = "/usr/bin/tmux";
/// Denied connects the test makes.
const DENIED: u64 = 6;

fn doc(deny_port: u16) -> Document {
    Document {
        name: "top.yaml".into(),
        text: format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: top}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: top-deny, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {deny_port}}}
"
        ),
    }
}

/// A tmux server of the test's own (its socket in the test's directory, no
/// config file), killed on drop whatever the test's outcome.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Result<Output, Failed> {
        Command::new(TMUX)
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .map_err(|e| format!("running {TMUX} {args:?}: {e}").into())
    }

    /// Like [`Self::run`]; fails unless tmux exits 0, and returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String, Failed> {
        let out = self.run(args)?;
        check!(
            out.status.success(),
            "tmux {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String, Failed> {
        self.ok(&["capture-pane", "-p", "-t", "top"])
    }

    /// A pane format variable, e.g. `#{pane_dead}`.
    fn pane(&self, format: &str) -> Result<String, Failed> {
        Ok(self.ok(&["display-message", "-p", "-t", "top", format])?.trim().to_string())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        // tmux leaves its socket file behind.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What the test has read off the screen so far.
#[derive(Default)]
struct Watch {
    screen: String,
    /// Whether the row ever showed a non-zero denial rate.
    rate_seen: bool,
}

impl Watch {
    /// Reads the screen; returns the words of the line showing `cgroup`:
    /// CGROUP TIER FROZEN GEN EVENTS/S DENIALS/S DECISIONS DENIED LOST TRACE.
    fn look(&mut self, tmux: &Tmux, cgroup: &str) -> Result<Option<Vec<String>>, Failed> {
        self.screen = tmux.screen()?;
        let words: Option<Vec<String>> = self
            .screen
            .lines()
            .find(|l| l.contains(cgroup))
            .map(|l| l.split_whitespace().map(String::from).collect());
        if let Some(w) = &words
            && w.len() == 10
            && w[5].parse::<f64>().is_ok_and(|r| r > 0.0)
        {
            self.rate_seen = true;
        }
        Ok(words)
    }
}

pub(crate) fn live_view_in_tmux() -> Result<(), Failed> {
    let denied = listener("127.0.0.1:0")?;
    let d = DaemonFixture::start(
        "top",
        vec![doc(denied.port())],
        Want { cgroup: Some(true), ..Want::default() },
        |_| {},
    )?;
    let status = call(&d.socket, &Request::Status).map_err(fail)?;
    let tier = status["governed"][0]["tier"].as_str().unwrap_or_default().to_string();
    let generation = status["governed"][0]["generation"].as_u64().unwrap_or_default();
    check!(!tier.is_empty() && generation > 0, "status {status}");
    let path = d.cgroup.path.display().to_string();
    let forge = forge_binary();

    let tmux = Tmux { socket: d.data_dir.with_file_name("tmux.sock") };
    // The shell records the exit status: tmux 3.3 does not always reap a
    // pane's process (`#{pane_dead_status}` then stays empty, even for
    // `sleep`). remain-on-exit keeps the pane, to read its terminal state.
    let exit_file = d.data_dir.with_file_name("top-exit-status");
    let command = format!(
        "'{}' top --socket '{}' --interval 0.5; echo $? > '{}'",
        forge.display(),
        d.socket.display(),
        exit_file.display()
    );
    let mut args: Vec<&str> =
        "start-server ; set-option -g remain-on-exit on ; new-session -d -s top -x 160 -y 40"
            .split(' ')
            .collect();
    args.push(&command);
    tmux.ok(&args)?;

    let exe = std::env::current_exe().map_err(fail)?;
    let mut watch = Watch::default();
    // Connects a quarter second apart, so that several polls see denials.
    for i in 0..DENIED {
        let got = run_action_in(&d.cgroup, &exe, &Action::Connect(denied)).map_err(fail)?;
        expect(&format!("denied connect {i}"), got, EPERM)?;
        std::thread::sleep(Duration::from_millis(250));
        watch.look(&tmux, &path)?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let words = loop {
        let words = watch.look(&tmux, &path)?;
        if let Some(w) = words
            && watch.rate_seen
            && w.get(7).is_some_and(|n| *n == DENIED.to_string())
        {
            break w;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no row with {DENIED} denials for {path} (a denial rate seen: {}):\n{}",
                watch.rate_seen, watch.screen
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    check!(
        words[0] == path && words[1] == tier && words[2] == "no" && words[3] == generation.to_string(),
        "row {words:?}, expected {path} at tier {tier}, generation {generation}:\n{}",
        watch.screen
    );
    let pid = std::process::id();
    check!(
        watch.screen.contains(&format!("agent pid {pid} · backends cgroup")),
        "no agent line for pid {pid}:\n{}",
        watch.screen
    );
    check!(tmux.pane("#{alternate_on}")? == "1", "forge top is not on the alternate screen");

    tmux.ok(&["send-keys", "-t", "top", "q"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Ok(exit) = std::fs::read_to_string(&exit_file)
            && exit.ends_with('\n')
        {
            break exit.trim().to_string();
        }
        check!(Instant::now() < deadline, "forge top still runs after q:\n{}", tmux.screen()?);
        std::thread::sleep(Duration::from_millis(100));
    };
    check!(exit == "0", "forge top exited {exit} after q:\n{}", tmux.screen()?);
    // The pane's terminal closed (its only process, the shell, exited too)
    // and was left on the normal screen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.pane("#{pane_dead}")? != "1" {
        check!(Instant::now() < deadline, "the pane is still alive:\n{}", tmux.screen()?);
        std::thread::sleep(Duration::from_millis(100));
    }
    check!(tmux.pane("#{alternate_on}")? == "0", "forge top left the terminal on the alternate screen");
    drop(tmux);

    once_json(&forge, &d, &path, &tier)
}

/// `forge top --once --json`: one object, the governed row with its totals.
fn once_json(forge: &Path, d: &DaemonFixture, path: &str, tier: &str) -> Result<(), Failed> {
    let out = Command::new(forge)
        .args(["top", "--once", "--json", "--interval", "0.2", "--socket"])
        .arg(&d.socket)
        .output()
        .map_err(fail)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check!(out.status.success(), "--once --json: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))?;
    let backends = v["backends"].as_array().cloned().unwrap_or_default();
    check!(v["pid"] == std::process::id() && backends.contains(&"cgroup".into()), "{v}");
    check!(v["seconds"].as_f64().is_some_and(|s| s >= 0.2), "seconds: {v}");
    let [w] = v["workloads"].as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(format!("expected one workload: {v}").into());
    };
    check!(w["cgroup"] == path && w["id"] == d.cgroup.id && w["tier"] == tier, "{w}");
    check!(w["denials"] == DENIED && w["decisions"].as_u64().is_some_and(|n| n >= DENIED), "{w}");
    check!(w["denials_per_s"] == 0.0 && w["frozen"] == false && w["lost_events"] == 0, "{w}");
    Ok(())
}
