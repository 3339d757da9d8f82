//! A real C program compiled to WASI by Debian's clang and wasi-libc, run
//! as a signed capsule through the `forge` binary: it reads its config,
//! writes its output, talks to an allowed TCP peer, and tries a forbidden
//! file and a forbidden connect. The test checks the outcome, the denials,
//! the files and the peer, the signed trace, and an exact replay; and that
//! a tampered, under-signed or over-asking package runs nothing.

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use forge_tests::fail;
use libtest_mimic::Failed;
use serde_json::Value;

use crate::sigterm::forge_binary;

pub(crate) const CLANG: &str = "/usr/bin/clang";

const PROGRAM: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((import_module("forge"), import_name("sock_connect")))
int forge_sock_connect(const char *addr, size_t len, int *fd);

static int connect_to(const char *addr) {
    int fd = -1;
    int e = forge_sock_connect(addr, strlen(addr), &fd);
    return e ? -e : fd;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: report CONFIG OUTPUT PEER\n"); return 64; }
    FILE *c = fopen(argv[1], "r");
    if (!c) { printf("config: %s\n", strerror(errno)); return 2; }
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, c);
    buf[n] = 0;
    fclose(c);
    FILE *o = fopen(argv[2], "w");
    if (!o) { printf("output: %s\n", strerror(errno)); return 3; }
    fprintf(o, "processed %zu bytes: %s", n, buf);
    fclose(o);
    FILE *s = fopen("/etc/shadow", "r");
    printf("shadow: %s\n", s ? "OPENED" : strerror(errno));
    int bad = connect_to("10.0.0.1:443");
    printf("forbidden connect: %s\n", bad >= 0 ? "CONNECTED" : strerror(-bad == 2 ? EACCES : EIO));
    int fd = connect_to(argv[3]);
    if (fd < 0) { printf("peer: error %d\n", -fd); return 4; }
    if (write(fd, "ping\n", 5) != 5) { printf("peer: write failed\n"); return 5; }
    close(fd);
    const char *lang = getenv("LANG");
    printf("LANG=%s\n", lang ? lang : "(unset)");
    return 0;
}
"#;

pub(crate) fn run(dir: &Path, args: &[&str]) -> Result<Output, Failed> {
    Command::new(forge_binary()).current_dir(dir).args(args).env("LANG", "C.UTF-8").output().map_err(fail)
}

pub(crate) fn ok(dir: &Path, args: &[&str]) -> Result<String, Failed> {
    let out = run(dir, args)?;
    if !out.status.success() {
        return Err(format!(
            "forge {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn json(out: &Output) -> Result<Value, Failed> {
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .into()
    })
}

pub(crate) fn check(cond: bool, what: &str) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what.into()) }
}

fn args_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn traces(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("traces"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dna"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn c_program_under_the_gate() -> Result<(), Failed> {
    let t = PathBuf::from(format!("/tmp/forge-test-{}-capsule", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(t.join("keys")).map_err(fail)?;
    std::fs::create_dir_all(t.join("out")).map_err(fail)?;
    std::fs::create_dir_all(t.join("pol")).map_err(fail)?;
    let d = t.display().to_string();

    // The program, compiled to WASI.
    std::fs::write(t.join("report.c"), PROGRAM).map_err(fail)?;
    let cc = Command::new(CLANG)
        .current_dir(&t)
        .args(["--target=wasm32-wasi", "-O2", "-o", "report.wasm", "report.c"])
        .output()
        .map_err(fail)?;
    check(cc.status.success(), &format!("clang: {}", String::from_utf8_lossy(&cc.stderr)))?;

    let peer = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let peer_addr = peer.local_addr().map_err(fail)?;
    let received = std::thread::spawn(move || {
        let mut got = String::new();
        if let Ok((mut s, _)) = peer.accept() {
            let _ = s.read_to_string(&mut got);
        }
        got
    });

    std::fs::write(t.join("config.txt"), "threshold=7\n").map_err(fail)?;
    std::fs::write(
        t.join("capsule.toml"),
        format!(
            "name = \"report\"\nversion = 1\ndescription = \"reads a config, writes a report, tells a peer\"\n\
             [capabilities]\nfiles = [{{path = \"{d}/config.txt\", access = \"read\"}}, {{path = \"{d}/out/\", access = \"write\"}}]\n\
             connect = [\"{peer_addr}\"]\nenv = [\"LANG\"]\n[limits]\nmemory_mib = 32\ndeadline_ms = 20000\n"
        ),
    )
    .map_err(fail)?;
    let policy = |write_out: &str| {
        format!(
            "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: capsules}}\nspec:\n  trust: trusted\n  \
             defaults: {{file.read: allow, file.write: deny, net.connect: deny}}\n  rules:\n    \
             - {{name: report-out, op: file.write, action: {write_out}, paths: [{d}/out/]}}\n    \
             - {{name: no-shadow, op: file.read, action: deny, paths: [/etc/shadow]}}\n    \
             - {{name: report-peer, op: net.connect, action: allow, cidrs: [127.0.0.1/32]}}\n  \
             capsule: {{env: [LANG]}}\n"
        )
    };
    std::fs::write(t.join("pol/capsules.yaml"), policy("allow")).map_err(fail)?;
    let mut trust = String::from("threshold = 3\n");
    for k in ["a", "b", "c", "d", "e"] {
        ok(&t, &["key", "generate", "--out", "keys", "--name", k])?;
        trust.push_str(&format!("[[key]]\nfile = \"keys/{k}.pub\"\n"));
    }
    std::fs::write(t.join("trust.toml"), trust).map_err(fail)?;

    ok(
        &t,
        &["pkg", "build", "--manifest", "capsule.toml", "--module", "report.wasm", "-o", "report.forgepkg"],
    )?;
    ok(&t, &["pkg", "sign", "report.forgepkg", "--key", "keys/a.key"])?;
    ok(&t, &["pkg", "sign", "report.forgepkg", "--key", "keys/b.key"])?;
    let run_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "pkg",
            "run",
            "report.forgepkg",
            "--trust",
            "trust.toml",
            "--policy",
            "pol",
            "--data-dir",
            "data",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([
            "--".into(),
            format!("{d}/config.txt"),
            format!("{d}/out/report.txt"),
            peer_addr.to_string(),
        ]);
        v
    };

    // Two of three required signatures: refused, nothing ran.
    let out = run(&t, &args_of(&run_args(&[])))?;
    check(out.status.code() == Some(1), "an under-signed capsule is refused with exit 1")?;
    check(json(&out)?["error"]["code"] == "too_few_signatures", "refusal code too_few_signatures")?;
    check(traces(&t.join("data")).is_empty(), "nothing ran: no trace")?;

    ok(&t, &["pkg", "sign", "report.forgepkg", "--key", "keys/c.key"])?;
    let verified = ok(&t, &["pkg", "verify", "report.forgepkg", "--trust", "trust.toml"])?;
    check(verified.contains("3 of 3 required trusted signatures"), &verified)?;
    let inspect = ok(&t, &["pkg", "inspect", "report.forgepkg", "--trust", "trust.toml", "--policy", "pol"])?;
    check(inspect.contains(&format!("write {d}/out/: granted")), &inspect)?;

    // The real run.
    let out = run(&t, &args_of(&run_args(&[])))?;
    let capsule_out = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json(&out)?;
    check(out.status.code() == Some(0), &format!("exit 0: {report}\n{capsule_out}"))?;
    check(report["end"] == "exited" && report["code"] == 0, &format!("exited 0: {report}"))?;
    check(capsule_out.contains("shadow: Permission denied"), &capsule_out)?;
    check(capsule_out.contains("forbidden connect: Permission denied"), &capsule_out)?;
    check(capsule_out.contains("LANG=C.UTF-8"), &capsule_out)?;
    let written = std::fs::read_to_string(t.join("out/report.txt")).map_err(fail)?;
    check(written == "processed 12 bytes: threshold=7\n", &written)?;
    check(received.join().map_err(|_| "peer thread")? == "ping\n", "the allowed peer got the ping")?;
    let denied = report["denied"].as_array().cloned().unwrap_or_default();
    let facilities: Vec<&str> = denied.iter().filter_map(|d| d["facility"].as_str()).collect();
    check(facilities == ["read /etc/shadow", "connect 10.0.0.1:443"], &format!("denials: {facilities:?}"))?;
    check(denied.iter().all(|d| d["enforced"] == true && d["by"] == "manifest"), &format!("{denied:?}"))?;

    // The trace: signed, and the run replays exactly.
    let trace = report["trace"].as_str().ok_or("trace path")?.to_string();
    ok(&t, &["trace", "verify", &trace])?;
    let shown = ok(&t, &["trace", "show", &trace])?;
    check(
        shown.contains("host_call") && shown.contains("\"path\":\"/etc/shadow\""),
        "the trace shows the denied open",
    )?;
    let replay = run(&t, &["pkg", "replay", &trace, "--pkg", "report.forgepkg", "--json"])?;
    let r = json(&replay)?;
    check(replay.status.success() && r["identical"] == true, &format!("replay: {r}"))?;
    check(r["replayed"]["output_sha3"] == report["output_sha3"], "same output digest")?;
    check(r["replayed"]["host_calls"] == report["host_calls"], "same number of calls")?;

    // A second start uses the cached compiled module.
    let out = run(&t, &args_of(&run_args(&[])))?;
    let again = json(&out)?;
    check(again["module_source"] == "disk_cache", &format!("second start: {}", again["module_source"]))?;

    // A policy that does not grant the output directory: refused before running; monitor mode runs it.
    std::fs::write(t.join("pol/capsules.yaml"), policy("deny")).map_err(fail)?;
    let before = traces(&t.join("data")).len();
    let out = run(&t, &args_of(&run_args(&[])))?;
    check(json(&out)?["error"]["code"] == "not_granted", "not granted")?;
    check(traces(&t.join("data")).len() == before, "nothing ran")?;
    let out = run(&t, &args_of(&run_args(&["--monitor"])))?;
    let mon = json(&out)?;
    let would: Vec<&Value> = mon["denied"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["enforced"] == false).collect())
        .unwrap_or_default();
    check(
        would
            .iter()
            .any(|x| x["facility"] == format!("write {d}/out/report.txt") && x["rule"] == "report-out"),
        &format!("monitor mode records the would-deny with its rule: {}", mon["denied"]),
    )?;

    // One byte of the module changed after signing: refused, nothing ran.
    let mut bytes = std::fs::read(t.join("report.forgepkg")).map_err(fail)?;
    let at = bytes.windows(6).position(|w| w == b"shadow").ok_or("module string")?;
    bytes[at] = b'S';
    std::fs::write(t.join("report.forgepkg"), bytes).map_err(fail)?;
    let before = traces(&t.join("data")).len();
    let out = run(&t, &args_of(&run_args(&[])))?;
    check(out.status.code() == Some(1), "a tampered package is refused")?;
    check(json(&out)?["error"]["code"] == "digest_mismatch", "digest_mismatch")?;
    check(traces(&t.join("data")).len() == before, "nothing ran")?;
    let _ = std::fs::remove_dir_all(&t);
    Ok(())
}
