//! The real `forge agent run` binary as a fixture: started with its own pin
//! root, socket, data directory and policy files, asked through its API,
//! stopped (SIGTERM) or killed (SIGKILL), started again on the same state.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use forge_agent::api::{Request, client};
use libtest_mimic::Failed;

use crate::fail;

/// The `forge` binary next to the test binaries (`target/<profile>/forge`).
pub fn forge_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("forge")))
        .unwrap_or_else(|| PathBuf::from("target/debug/forge"))
}

/// One agent's files: `/tmp/forge-test-<pid>-<name>/` (socket, data,
/// policies) and `/sys/fs/bpf/forge-test-<pid>-<name>`. Removed on drop,
/// with the pins (enforcement ends) and any agent still running.
pub struct AgentProcess {
    pub dir: PathBuf,
    pub pin_root: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// Prepares the directories and writes `policy` as `policy.yaml`.
    pub fn new(name: &str, policy: &str) -> Result<Self, Failed> {
        let id = std::process::id();
        let dir = PathBuf::from(format!("/tmp/forge-test-{id}-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(fail)?;
        std::fs::write(dir.join("policy.yaml"), policy).map_err(fail)?;
        Ok(Self {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/forge-test-{id}-{}", name.replace('.', "-"))),
            socket: dir.join("agent.sock"),
            data_dir: dir.join("data"),
            dir,
            child: None,
        })
    }

    /// Replaces the policy file.
    pub fn write_policy(&self, policy: &str) -> Result<(), Failed> {
        std::fs::write(self.dir.join("policy.yaml"), policy).map_err(fail)
    }

    /// Starts `forge agent run` with this agent's files and `extra`
    /// arguments; waits until it serves its API.
    pub fn start(&mut self, extra: &[&str]) -> Result<(), Failed> {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(forge_binary());
        cmd.args(["agent", "run", "--backends", "cgroup,tracepoint", "--pin-root"])
            .arg(&self.pin_root)
            .arg("--policy")
            .arg(self.dir.join("policy.yaml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).map_err(fail)?);
        let mut child = cmd.spawn().map_err(fail)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() && Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(fail)? {
                return Err(format!("the agent exited ({status}) before serving: {}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.socket.exists() {
            let _ = child.kill();
            return Err(format!("the agent did not serve its API in 30 s: {}", self.log()).into());
        }
        self.child = Some(child);
        Ok(())
    }

    /// What the agent wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Calls the API.
    pub fn call(&self, req: &Request) -> Result<serde_json::Value, client::ClientError> {
        client::call(&self.socket, req)
    }

    /// Calls the API; an error is a test failure.
    pub fn ask(&self, req: &Request) -> Result<serde_json::Value, Failed> {
        self.call(req).map_err(|e| format!("{}: {e}", req.method()).into())
    }

    /// Polls `status` until `pred` holds or `timeout` passes; the last status.
    pub fn status_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.ask(&Request::Status)?;
            if pred(&s) || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the agent with `signal` and waits for it.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> Result<(), Failed> {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(fail)?);
            nix::sys::signal::kill(pid, signal).map_err(fail)?;
            child.wait().map_err(fail)?;
        }
        Ok(())
    }

    /// The pid of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The state file the agent keeps.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join(forge_agent::api::daemon::STATE_FILE)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.stop_with(nix::sys::signal::SIGKILL);
        let _ = forge_agent::ebpf::Pins::new(&self.pin_root).remove_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `path` holds a cgroup v2 directory.
pub fn is_cgroup(path: &Path) -> bool {
    path.join("cgroup.procs").exists()
}
