//! The deployment files: every flag they pass to `forge agent run` exists,
//! and the DaemonSet's policy ConfigMap is a valid policy set.

use std::process::Command;

fn forge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge")).args(args).output().expect("run forge")
}

fn root(rel: &str) -> String {
    format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// `--flag` words of a text.
/// The `--flags` a deployment file passes, outside its comments.
fn flags(text: &str) -> Vec<String> {
    let code: String =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(|l| [l, "\n"]).collect();
    code.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .filter_map(|w| w.strip_prefix("- ").or(Some(w)))
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

#[test]
fn deployment_files_use_real_flags() {
    let help = String::from_utf8(forge(&["agent", "run", "--help"]).stdout).unwrap();
    for file in ["deploy/forge.service", "deploy/daemonset.yaml"] {
        let text = std::fs::read_to_string(root(file)).unwrap();
        let start = text.find("agent run").or_else(|| text.find("- run")).expect("an agent command");
        let used = flags(&text[start..]);
        assert!(used.len() >= 4, "{file}: {used:?}");
        for f in used {
            assert!(help.contains(&f), "{file} passes {f}, which `forge agent run` does not take");
        }
    }
}

#[test]
fn daemonset_policy_configmap_validates() {
    let text = std::fs::read_to_string(root("deploy/daemonset.yaml")).unwrap();
    let start = text.find("  default.yaml: |\n").expect("the ConfigMap policy") + "  default.yaml: |\n".len();
    let policy: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.yaml"), &policy).unwrap();
    let o = forge(&["policy", "check", dir.path().to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{policy}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_agent_is_kept_out_of_the_oom_killers_way() {
    let unit = std::fs::read_to_string(root("deploy/forge.service")).unwrap();
    assert!(
        unit.lines().any(|l| l.trim() == "OOMScoreAdjust=-1000"),
        "forge.service: no OOMScoreAdjust=-1000"
    );
    let ds = std::fs::read_to_string(root("deploy/daemonset.yaml")).unwrap();
    assert!(
        ds.contains("priorityClassName: system-node-critical"),
        "daemonset.yaml: not system-node-critical"
    );
}
