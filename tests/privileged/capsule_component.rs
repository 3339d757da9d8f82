//! The same kind of C program, built by Debian's clang for WASI preview1
//! and made a WASI 0.2 component by `forge pkg build --component`: it runs
//! against the component host, through the same gate. The test checks the
//! outcome, the denial, the files, the signed trace, an exact replay with
//! the inputs gone, and the compiled-component cache.

use std::{path::PathBuf, process::Command};

use forge_tests::fail;
use libtest_mimic::Failed;

use crate::capsule::{CLANG, check, json, ok, run, traces};

const PROGRAM: &str = r#"
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: tally CONFIG OUTPUT DIR\n"); return 64; }
    FILE *c = fopen(argv[1], "r");
    if (!c) { printf("config: %s\n", strerror(errno)); return 2; }
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, c);
    buf[n] = 0;
    fclose(c);
    int entries = 0;
    DIR *d = opendir(argv[3]);
    if (!d) { printf("dir: %s\n", strerror(errno)); return 3; }
    for (struct dirent *e; (e = readdir(d)); ) if (e->d_name[0] != '.') entries++;
    closedir(d);
    FILE *o = fopen(argv[2], "w");
    if (!o) { printf("output: %s\n", strerror(errno)); return 4; }
    fprintf(o, "%d entries, config %s", entries, buf);
    fclose(o);
    FILE *s = fopen("/etc/shadow", "r");
    printf("shadow: %s\n", s ? "OPENED" : strerror(errno));
    const char *lang = getenv("LANG");
    printf("LANG=%s\n", lang ? lang : "(unset)");
    return 0;
}
"#;

pub(crate) fn c_component_under_the_gate() -> Result<(), Failed> {
    let t = PathBuf::from(format!("/tmp/forge-test-{}-component", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    for sub in ["keys", "out", "pol", "in"] {
        std::fs::create_dir_all(t.join(sub)).map_err(fail)?;
    }
    let d = t.display().to_string();
    std::fs::write(t.join("tally.c"), PROGRAM).map_err(fail)?;
    let cc = Command::new(CLANG)
        .current_dir(&t)
        .args(["--target=wasm32-wasi", "-O2", "-o", "tally.wasm", "tally.c"])
        .output()
        .map_err(fail)?;
    check(cc.status.success(), &format!("clang: {}", String::from_utf8_lossy(&cc.stderr)))?;

    std::fs::write(t.join("config.txt"), "mode=fast\n").map_err(fail)?;
    for f in ["a", "b", "c"] {
        std::fs::write(t.join("in").join(f), f).map_err(fail)?;
    }
    std::fs::write(
        t.join("capsule.toml"),
        format!(
            "name = \"tally\"\nversion = 1\n[capabilities]\n\
             files = [{{path = \"{d}/config.txt\", access = \"read\"}}, {{path = \"{d}/in/\", access = \"read\"}}, \
             {{path = \"{d}/out/\", access = \"write\"}}]\nenv = [\"LANG\"]\n[limits]\nmemory_mib = 32\ndeadline_ms = 20000\n"
        ),
    )
    .map_err(fail)?;
    std::fs::write(
        t.join("pol/capsules.yaml"),
        format!(
            "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: capsules}}\nspec:\n  trust: trusted\n  \
             defaults: {{file.read: allow, file.write: deny, net.connect: deny}}\n  rules:\n    \
             - {{name: tally-out, op: file.write, action: allow, paths: [{d}/out/]}}\n    \
             - {{name: no-shadow, op: file.read, action: deny, paths: [/etc/shadow]}}\n  \
             capsule: {{env: [LANG]}}\n"
        ),
    )
    .map_err(fail)?;
    let mut trust = String::from("threshold = 2\n");
    for k in ["a", "b", "c"] {
        ok(&t, &["key", "generate", "--out", "keys", "--name", k])?;
        trust.push_str(&format!("[[key]]\nfile = \"keys/{k}.pub\"\n"));
    }
    std::fs::write(t.join("trust.toml"), trust).map_err(fail)?;

    let build =
        ["pkg", "build", "--manifest", "capsule.toml", "--module", "tally.wasm", "-o", "tally.forgepkg"];
    ok(&t, &[&build[..], &["--component"]].concat())?;
    ok(&t, &["pkg", "sign", "tally.forgepkg", "--key", "keys/a.key"])?;
    ok(&t, &["pkg", "sign", "tally.forgepkg", "--key", "keys/b.key"])?;
    let inspect = ok(&t, &["pkg", "inspect", "tally.forgepkg", "--trust", "trust.toml", "--policy", "pol"])?;
    check(inspect.contains("WASI 0.2 component"), &format!("inspect names the module kind: {inspect}"))?;

    let config = format!("{d}/config.txt");
    let output = format!("{d}/out/tally.txt");
    let input = format!("{d}/in");
    let run_args = [
        "pkg",
        "run",
        "tally.forgepkg",
        "--trust",
        "trust.toml",
        "--policy",
        "pol",
        "--data-dir",
        "data",
        "--json",
        "--",
        &config,
        &output,
        &input,
    ];
    let out = run(&t, &run_args)?;
    let capsule_out = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json(&out)?;
    check(out.status.code() == Some(0), &format!("exit 0: {report}\n{capsule_out}"))?;
    check(report["module_source"] == "compiled", &format!("first start compiles: {report}"))?;
    check(capsule_out.contains("shadow: Permission denied"), &capsule_out)?;
    check(capsule_out.contains("LANG=C.UTF-8"), &capsule_out)?;
    let written = std::fs::read_to_string(t.join("out/tally.txt")).map_err(fail)?;
    check(written == "3 entries, config mode=fast\n", &written)?;
    let denied = report["denied"].as_array().cloned().unwrap_or_default();
    let facilities: Vec<&str> = denied.iter().filter_map(|d| d["facility"].as_str()).collect();
    check(facilities == ["read /etc/shadow"], &format!("denials: {facilities:?}"))?;
    check(denied[0]["name"] == "descriptor.open-at", &format!("{denied:?}"))?;

    let trace = report["trace"].as_str().ok_or("trace path")?.to_string();
    ok(&t, &["trace", "verify", &trace])?;
    let shown = ok(&t, &["trace", "show", &trace])?;
    check(shown.contains("descriptor.read-directory"), "the trace holds the component's calls")?;
    // The inputs are gone: the replay answers every call from the trace.
    std::fs::remove_dir_all(t.join("in")).map_err(fail)?;
    std::fs::remove_file(t.join("config.txt")).map_err(fail)?;
    let replay = run(&t, &["pkg", "replay", &trace, "--pkg", "tally.forgepkg", "--json"])?;
    let r = json(&replay)?;
    check(replay.status.success() && r["identical"] == true, &format!("replay: {r}"))?;
    check(r["replayed"]["output_sha3"] == report["output_sha3"], "same output digest")?;
    check(r["replayed"]["host_calls"] == report["host_calls"], "same number of calls")?;

    // Live again without the inputs: the component reports it and exits 1
    // (WASI 0.2's exit carries success or failure, not the C code).
    let before = traces(&t.join("data")).len();
    let out = run(&t, &run_args)?;
    let again = json(&out)?;
    check(again["module_source"] == "disk_cache", &format!("second start: {}", again["module_source"]))?;
    check(again["end"] == "exited" && again["code"] == 1, &format!("{again}"))?;
    check(String::from_utf8_lossy(&out.stderr).contains("config: No such file"), "the missing config")?;
    check(traces(&t.join("data")).len() == before + 1, "the second run has its own trace")?;
    let _ = std::fs::remove_dir_all(&t);
    Ok(())
}
