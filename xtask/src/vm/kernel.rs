//! Fetch Debian cloud kernels: pick the newest package of a series with
//! `apt-cache`, `apt-get download` it, unpack it with `dpkg-deb -x`, and cache
//! the tree under `target/vm/kernels/<package>/`.
//!
//! Series known by a short name:
//!
//! | series | package |
//! |---|---|
//! | `6.1`  | `linux-image-6.1.0-<abi>-cloud-amd64` or `...-unsigned` (same image) |
//! | `6.12` | `linux-image-6.12.<patch>+deb12-cloud-amd64-unsigned` |
//!
//! Any full package name starting with `linux-image-` is accepted as is.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

/// A kernel ready to boot.
pub(crate) struct Kernel {
    /// Debian package the image came from.
    pub(crate) package: String,
    /// `uname -r` the image should report, from `boot/vmlinuz-<release>`.
    pub(crate) release: String,
    pub(crate) vmlinuz: PathBuf,
    /// Whether this run downloaded it (false: found in the cache).
    pub(crate) downloaded: bool,
}

/// Finds (or downloads into `cache`) the newest kernel of `series`.
pub(crate) fn fetch(series: &str, cache: &Path) -> anyhow::Result<Kernel> {
    ensure!(
        series.starts_with("linux-image-") || matches!(series, "6.1" | "6.12"),
        "unknown kernel series {series:?}: use 6.1, 6.12 or a linux-image-* package name"
    );
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = super::lock(&cache.join(".lock"), "vm kernels")?;

    let mut updated = false;
    if !apt_lists_present() {
        apt_update()?;
        updated = true;
    }
    let mut names = candidates(series)?;
    if names.is_empty() && !updated {
        apt_update()?;
        updated = true;
        names = candidates(series)?;
    }

    let mut last_err = None;
    for name in names.iter().take(3) {
        if let Some(kernel) = cached(cache, name)? {
            return Ok(kernel);
        }
        if apt_candidate(name)?.is_none() {
            continue;
        }
        match download(cache, name) {
            Ok(k) => return Ok(k),
            Err(err) if !updated => {
                // Stale package lists point at files the mirror no longer has.
                eprintln!("vm: download of {name} failed ({err:#}); running apt-get update");
                apt_update()?;
                updated = true;
                match download(cache, name) {
                    Ok(k) => return Ok(k),
                    Err(err) => last_err = Some(err),
                }
            }
            Err(err) => last_err = Some(err),
        }
    }

    // Offline or mirror trouble: fall back to the newest kernel of the series
    // already in the cache.
    let mut cached_names: Vec<String> = fs::read_dir(cache)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    cached_names = newest_first(series, cached_names.drain(..));
    for name in &cached_names {
        if let Some(kernel) = cached(cache, name)? {
            eprintln!("vm: using cached {name}: newest package could not be fetched");
            return Ok(kernel);
        }
    }
    match last_err {
        Some(err) => Err(err.context(format!("fetching a {series} kernel"))),
        None => bail!(
            "no installable package for kernel series {series} (apt-cache search found: {})",
            if names.is_empty() { "nothing".to_owned() } else { names.join(", ") }
        ),
    }
}

/// Package names of `series` known to apt, newest first.
fn candidates(series: &str) -> anyhow::Result<Vec<String>> {
    if series.starts_with("linux-image-") {
        return Ok(vec![series.to_owned()]);
    }
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-.*cloud-amd64"])
        .output()
        .context("running apt-cache search")?;
    ensure!(out.status.success(), "apt-cache search failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(newest_first(series, search_names(&text)))
}

/// Package names from `apt-cache search` output (`name - description`).
fn search_names(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// Keeps the names that belong to `series`, newest first.
pub(super) fn newest_first(series: &str, names: impl Iterator<Item = String>) -> Vec<String> {
    let mut keyed: Vec<(Vec<u64>, String)> =
        names.filter_map(|n| series_key(series, &n).map(|k| (k, n))).collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, n)| n).collect()
}

/// Sort key of `name` within `series` (bigger is newer), or `None` when the
/// name is not a package of that series.
pub(super) fn series_key(series: &str, name: &str) -> Option<Vec<u64>> {
    match series {
        "6.1" => {
            // linux-image-6.1.0-<abi>-cloud-amd64[-unsigned]
            let rest = name.strip_prefix("linux-image-6.1.0-")?;
            let (abi, flavour) = rest.split_once('-')?;
            let unsigned = match flavour {
                "cloud-amd64" => 0,
                "cloud-amd64-unsigned" => 1,
                _ => return None,
            };
            Some(vec![number(abi)?, unsigned])
        }
        "6.12" => {
            // linux-image-6.12.<patch>+deb12-cloud-amd64-unsigned
            let rest = name.strip_prefix("linux-image-6.12.")?;
            let patch = rest.strip_suffix("+deb12-cloud-amd64-unsigned")?;
            Some(vec![number(patch)?])
        }
        exact => (exact == name).then(Vec::new),
    }
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `Candidate:` version from `apt-cache policy <name>`, if installable.
fn apt_candidate(name: &str) -> anyhow::Result<Option<String>> {
    let out =
        Command::new("apt-cache").args(["policy", name]).output().context("running apt-cache policy")?;
    Ok(policy_candidate(&String::from_utf8_lossy(&out.stdout)))
}

pub(super) fn policy_candidate(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_owned)
}

/// A complete unpacked kernel in the cache, if there is one.
fn cached(cache: &Path, name: &str) -> anyhow::Result<Option<Kernel>> {
    let dir = cache.join(name);
    if !dir.join("boot").is_dir() {
        return Ok(None);
    }
    let (release, vmlinuz) = find_vmlinuz(&dir)?;
    Ok(Some(Kernel { package: name.to_owned(), release, vmlinuz, downloaded: false }))
}

fn find_vmlinuz(tree: &Path) -> anyhow::Result<(String, PathBuf)> {
    let boot = tree.join("boot");
    for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let entry = entry?;
        let file = entry.file_name();
        if let Some(release) = file.to_str().and_then(|f| f.strip_prefix("vmlinuz-")) {
            return Ok((release.to_owned(), entry.path()));
        }
    }
    bail!("no boot/vmlinuz-* in {}", tree.display())
}

/// Downloads and unpacks `name`; the cache entry appears atomically (rename).
fn download(cache: &Path, name: &str) -> anyhow::Result<Kernel> {
    let work = cache.join(format!(".download-{name}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("vm: apt-get download {name}");
    let out = Command::new("apt-get")
        .args(["download", name])
        .current_dir(&work)
        .output()
        .context("running apt-get download")?;
    ensure!(
        out.status.success(),
        "apt-get download {name} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let deb = fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let tree = work.join("tree");
    let status =
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree).status().context("running dpkg-deb -x")?;
    ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    find_vmlinuz(&tree)?;
    let dest = cache.join(name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tree, &dest).with_context(|| format!("moving {} to {}", tree.display(), dest.display()))?;
    let _ = fs::remove_dir_all(&work);
    let (release, vmlinuz) = find_vmlinuz(&dest)?;
    Ok(Kernel { package: name.to_owned(), release, vmlinuz, downloaded: true })
}

fn apt_lists_present() -> bool {
    // Lists may be stored compressed (`..._Packages.lz4`).
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|d| {
        d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

fn apt_update() -> anyhow::Result<()> {
    eprintln!("vm: apt-get update");
    let status = Command::new("apt-get").arg("update").status().context("running apt-get update")?;
    ensure!(status.success(), "apt-get update failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-47-cloud-amd64
linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-100-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.12.99+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.117+deb12-cloud-amd64-dbg - Debug symbols
linux-image-6.12.120+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)
";

    #[test]
    fn picks_newest_6_1_numerically_and_prefers_unsigned_on_ties() {
        let got = newest_first("6.1", search_names(SEARCH));
        assert_eq!(
            got,
            [
                "linux-image-6.1.0-100-cloud-amd64",
                "linux-image-6.1.0-56-cloud-amd64-unsigned",
                "linux-image-6.1.0-56-cloud-amd64",
                "linux-image-6.1.0-9-cloud-amd64-unsigned",
            ]
        );
    }

    #[test]
    fn picks_newest_6_12_unsigned_cloud_only() {
        let got = newest_first("6.12", search_names(SEARCH));
        assert_eq!(
            got,
            [
                "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
                "linux-image-6.12.99+deb12-cloud-amd64-unsigned",
            ]
        );
    }

    #[test]
    fn series_key_rejects_other_flavours() {
        assert_eq!(series_key("6.1", "linux-image-6.1.0-56-amd64"), None);
        assert_eq!(series_key("6.1", "linux-image-6.1.0-x-cloud-amd64"), None);
        assert_eq!(series_key("6.12", "linux-image-6.12.1+deb13-cloud-amd64-unsigned"), None);
        assert_eq!(series_key("6.12", "linux-image-6.1.0-56-cloud-amd64"), None);
        assert!(series_key("linux-image-foo", "linux-image-foo").is_some());
    }

    #[test]
    fn policy_candidate_parses_version_or_none() {
        let ok = "linux-image-6.1.0-56-cloud-amd64-unsigned:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n     6.1.192-2 500\n";
        assert_eq!(policy_candidate(ok).as_deref(), Some("6.1.192-2"));
        let none = "foo:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(policy_candidate(none), None);
        assert_eq!(policy_candidate(""), None);
    }
}
