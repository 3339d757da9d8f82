//! Fetch Debian cloud kernels: pick the newest package of a series with
//! `apt-cache`, `apt-get download` it, unpack it with `dpkg-deb -x`, and cache
//! the tree under `target/vm/kernels/<package>/`.
//!
//! Series known by a short name:
//!
//! | series | suite | package |
//! |---|---|---|
//! | `5.10` | bullseye (Debian 11) | `linux-image-5.10.0-<abi>-cloud-amd64` or `...-unsigned` (same image) |
//! | `6.1`  | the host's (bookworm) | `linux-image-6.1.0-<abi>-cloud-amd64` or `...-unsigned` |
//! | `6.12` | the host's (bookworm) | `linux-image-6.12.<patch>+deb12-cloud-amd64-unsigned` |
//!
//! Any full package name starting with `linux-image-` is accepted as is (from
//! the host's suites).
//!
//! The host's apt configuration is never changed. Bullseye packages are found
//! through a private apt state under `target/vm/kernels/apt-bullseye/`: a
//! `sources.list` naming the same mirrors as the host's own bookworm and
//! bookworm-security entries (read from `/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/`), with the suites renamed, and its own lists and
//! cache directories, passed to `apt-get`/`apt-cache` as `-o Dir::...`
//! options. Security mirrors may list a newer package than they still serve
//! (HTTP 404); the next older one is tried.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

/// Short names of the known series.
pub(crate) const SERIES: &[&str] = &["5.10", "6.1", "6.12"];

/// Packages tried per series, newest first, before giving up: mirrors may
/// list packages they no longer (or do not yet) serve.
const MAX_TRIES: usize = 6;

/// A kernel ready to boot.
pub(crate) struct Kernel {
    /// Debian package the image came from.
    pub(crate) package: String,
    /// `uname -r` the image should report, from `boot/vmlinuz-<release>`.
    pub(crate) release: String,
    pub(crate) vmlinuz: PathBuf,
    /// The unpacked package (`boot/`, `lib/modules/<release>/`).
    pub(crate) tree: PathBuf,
    /// Whether this run downloaded it (false: found in the cache).
    pub(crate) downloaded: bool,
}

impl Kernel {
    /// The value of `CONFIG_<option>` in the kernel's `boot/config-<release>`
    /// (`y`, `m`, a quoted string), if set.
    pub(crate) fn config(&self, option: &str) -> anyhow::Result<Option<String>> {
        let path = self.tree.join("boot").join(format!("config-{}", self.release));
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(config_value(&text, option))
    }
}

/// `CONFIG_<option>=value` from a kernel config text.
pub(super) fn config_value(text: &str, option: &str) -> Option<String> {
    let key = format!("CONFIG_{option}=");
    text.lines().find_map(|l| l.strip_prefix(&key)).map(|v| v.trim().to_owned())
}

/// Finds (or downloads into `cache`) the newest kernel of `series`.
pub(crate) fn fetch(series: &str, cache: &Path) -> anyhow::Result<Kernel> {
    ensure!(
        series.starts_with("linux-image-") || SERIES.contains(&series),
        "unknown kernel series {series:?}: use {} or a linux-image-* package name",
        SERIES.join(", ")
    );
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = super::lock(&cache.join(".lock"), "vm kernels")?;
    let apt = if series == "5.10" { Apt::bullseye(&cache.join("apt-bullseye"))? } else { Apt::host() };

    let mut updated = false;
    if !apt.lists_present() {
        apt.update()?;
        updated = true;
    }
    let mut names = candidates(&apt, series)?;
    if names.is_empty() && !updated {
        apt.update()?;
        updated = true;
        names = candidates(&apt, series)?;
    }

    let mut last_err = None;
    for name in names.iter().take(MAX_TRIES) {
        // A cached package of the same image (the signed or unsigned twin) is as good.
        for twin in names.iter().filter(|n| image_key(series, n) == image_key(series, name)) {
            if let Some(kernel) = cached(cache, twin)? {
                return Ok(kernel);
            }
        }
        if apt_candidate(&apt, name)?.is_none() {
            continue;
        }
        match download(&apt, cache, name) {
            Ok(k) => return Ok(k),
            Err(err) if !updated => {
                // Stale package lists point at files the mirror no longer has.
                eprintln!("vm: download of {name} failed ({err:#}); running apt-get update");
                apt.update()?;
                updated = true;
                match download(&apt, cache, name) {
                    Ok(k) => return Ok(k),
                    Err(err) => last_err = Some(err),
                }
            }
            Err(err) => {
                eprintln!("vm: download of {name} failed ({err:#}); trying an older package");
                last_err = Some(err);
            }
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
fn candidates(apt: &Apt, series: &str) -> anyhow::Result<Vec<String>> {
    if series.starts_with("linux-image-") {
        return Ok(vec![series.to_owned()]);
    }
    let out = apt
        .command("apt-cache")
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
        "6.1" | "5.10" => {
            // linux-image-<series>.0-<abi>-cloud-amd64[-unsigned]
            let rest = name.strip_prefix(&format!("linux-image-{series}.0-"))?;
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

/// What identifies the kernel image of `name`: its sort key without the
/// signed/unsigned flag (both packages of an ABI carry the same image).
pub(super) fn image_key(series: &str, name: &str) -> Option<Vec<u64>> {
    let mut key = series_key(series, name)?;
    if matches!(series, "6.1" | "5.10") {
        key.pop();
    }
    Some(key)
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `Candidate:` version from `apt-cache policy <name>`, if installable.
fn apt_candidate(apt: &Apt, name: &str) -> anyhow::Result<Option<String>> {
    let out = apt.command("apt-cache").args(["policy", name]).output().context("running apt-cache policy")?;
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
    Ok(Some(Kernel { package: name.to_owned(), release, vmlinuz, tree: dir, downloaded: false }))
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
fn download(apt: &Apt, cache: &Path, name: &str) -> anyhow::Result<Kernel> {
    let work = cache.join(format!(".download-{name}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("vm: apt-get download {name}");
    let out = apt
        .command("apt-get")
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
    Ok(Kernel { package: name.to_owned(), release, vmlinuz, tree: dest, downloaded: true })
}

/// How apt is run: with the host's configuration, or with a private one.
struct Apt {
    /// `-o` options for every apt command.
    options: Vec<String>,
    lists: PathBuf,
    /// What `apt-get update` refreshes, for messages.
    what: &'static str,
}

impl Apt {
    fn host() -> Self {
        Self { options: Vec::new(), lists: PathBuf::from("/var/lib/apt/lists"), what: "the host's suites" }
    }

    /// A private apt state in `dir` for Debian 11 (bullseye), from the
    /// mirrors the host's own sources name.
    fn bullseye(dir: &Path) -> anyhow::Result<Self> {
        let host = HostSources::read()?;
        let list = host.renamed("bullseye").with_context(|| {
            format!(
                "no Debian {} entry with the main component in the host's apt sources to take the mirror from",
                host.codename
            )
        })?;
        let lists = dir.join("lists");
        for d in [lists.join("partial"), dir.join("cache/archives/partial"), dir.join("sources.list.d")] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(list.as_str()) {
            fs::write(&sources, &list).with_context(|| format!("writing {}", sources.display()))?;
            // Lists fetched for other mirrors would be stale.
            let _ = fs::remove_dir_all(&lists);
            fs::create_dir_all(lists.join("partial"))?;
        }
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        Ok(Self {
            options: vec![
                opt("Dir::Etc::SourceList", &sources),
                opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
                opt("Dir::State::Lists", &lists),
                opt("Dir::Cache", &dir.join("cache")),
                // Package lists only: no AppStream metadata.
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
                "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".to_owned(),
            ],
            lists,
            what: "Debian 11 (bullseye), private lists",
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd
    }

    fn lists_present(&self) -> bool {
        // Lists may be stored compressed (`..._Packages.lz4`).
        fs::read_dir(&self.lists).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    fn update(&self) -> anyhow::Result<()> {
        eprintln!("vm: apt-get update ({})", self.what);
        // Progress to stderr: vm-run's stdout is the guest command's.
        let status = self
            .command("apt-get")
            .arg("update")
            .stdout(std::io::stderr())
            .status()
            .context("running apt-get update")?;
        ensure!(status.success(), "apt-get update ({}) failed", self.what);
        Ok(())
    }
}

/// The Debian entries of the host's apt sources: the release's codename
/// and, per suite kind, a mirror URI and its keyring.
#[derive(Debug, Default, PartialEq)]
pub(super) struct HostSources {
    pub(super) codename: String,
    /// (suite suffix: "" or "-security", URI, Signed-By), in file order.
    pub(super) entries: Vec<(String, String, Option<String>)>,
}

impl HostSources {
    fn read() -> anyhow::Result<Self> {
        let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
        let codename = os_release
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
            .context("/etc/os-release has no VERSION_CODENAME")?;
        let mut texts = Vec::new();
        if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
            texts.push((false, t));
        }
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut paths: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let deb822 = match p.extension().and_then(|e| e.to_str()) {
                    Some("sources") => true,
                    Some("list") => false,
                    _ => continue,
                };
                if let Ok(t) = fs::read_to_string(&p) {
                    texts.push((deb822, t));
                }
            }
        }
        let mut s = Self { codename, entries: Vec::new() };
        for (deb822, text) in &texts {
            if *deb822 { s.add_deb822(text) } else { s.add_one_line(text) }
        }
        Ok(s)
    }

    fn add(&mut self, suite: &str, uri: &str, components: &[&str], signed_by: Option<&str>) {
        if !components.contains(&"main") {
            return;
        }
        let Some(kind) = suite.strip_prefix(self.codename.as_str()) else { return };
        if !matches!(kind, "" | "-security") {
            return;
        }
        let entry = (kind.to_owned(), uri.trim_end_matches('/').to_owned(), signed_by.map(str::to_owned));
        if !self.entries.iter().any(|e| e.0 == entry.0) {
            self.entries.push(entry);
        }
    }

    /// Adds the `deb` entries of a deb822 `.sources` text.
    pub(super) fn add_deb822(&mut self, text: &str) {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
            };
            let enabled = field("Enabled").is_none_or(|v| v != "no");
            let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else { continue };
            if !enabled || !is_deb {
                continue;
            }
            let components = field("Components").unwrap_or_default();
            let components: Vec<&str> = components.split_whitespace().collect();
            let signed_by = field("Signed-By");
            for uri in uris.split_whitespace() {
                for suite in suites.split_whitespace() {
                    self.add(suite, uri, &components, signed_by.as_deref());
                }
            }
        }
    }

    /// Adds the `deb` lines of a one-line-style `sources.list` text.
    pub(super) fn add_one_line(&mut self, text: &str) {
        for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
            let Some(rest) = line.strip_prefix("deb ") else { continue };
            let mut rest = rest.trim_start();
            let mut signed_by = None;
            if let Some(opts) = rest.strip_prefix('[') {
                let Some((opts, after)) = opts.split_once(']') else { continue };
                signed_by = opts.split_whitespace().find_map(|o| o.strip_prefix("signed-by="));
                rest = after.trim_start();
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [uri, suite, components @ ..] = words.as_slice() {
                self.add(suite, uri, components, signed_by);
            }
        }
    }

    /// A one-line `sources.list` for `codename` with the same mirrors, or
    /// `None` without a main-archive entry.
    pub(super) fn renamed(&self, codename: &str) -> Option<String> {
        self.entries.iter().any(|e| e.0.is_empty()).then(|| {
            self.entries
                .iter()
                .map(|(kind, uri, signed_by)| {
                    let opts = signed_by.as_ref().map(|k| format!("[signed-by={k}] ")).unwrap_or_default();
                    format!("deb {opts}{uri} {codename}{kind} main\n")
                })
                .collect()
        })
    }
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
    fn picks_newest_5_10_like_6_1() {
        let search = "linux-image-5.10.0-46-cloud-amd64-unsigned - Linux 5.10\n\
                      linux-image-5.10.0-43-cloud-amd64 - Linux 5.10 (signed)\n\
                      linux-image-5.10.0-43-cloud-amd64-unsigned - Linux 5.10\n\
                      linux-image-5.10.0-46-cloud-amd64-dbg - Debug symbols\n\
                      linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1\n";
        assert_eq!(
            newest_first("5.10", search_names(search)),
            [
                "linux-image-5.10.0-46-cloud-amd64-unsigned",
                "linux-image-5.10.0-43-cloud-amd64-unsigned",
                "linux-image-5.10.0-43-cloud-amd64",
            ]
        );
    }

    #[test]
    fn signed_and_unsigned_packages_share_an_image() {
        let key = |n: &str| image_key("5.10", n);
        assert_eq!(
            key("linux-image-5.10.0-46-cloud-amd64"),
            key("linux-image-5.10.0-46-cloud-amd64-unsigned")
        );
        assert_ne!(key("linux-image-5.10.0-46-cloud-amd64"), key("linux-image-5.10.0-43-cloud-amd64"));
        assert_ne!(
            image_key("6.12", "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            image_key("6.12", "linux-image-6.12.118+deb12-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn host_sources_give_the_mirrors_for_another_suite() {
        let mut s = HostSources { codename: "bookworm".to_owned(), entries: Vec::new() };
        s.add_deb822(
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: https://other.example/node\nSuites: nodistro\nComponents: main\n",
        );
        s.add_one_line(
            "deb [arch=amd64 signed-by=/k.gpg] http://third.example/debian bookworm contrib main\n",
        );
        assert_eq!(
            s.renamed("bullseye").unwrap(),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian-security bullseye-security main\n"
        );

        let mut s = HostSources { codename: "bookworm".to_owned(), entries: Vec::new() };
        s.add_one_line("# deb http://x/debian bookworm main\ndeb http://x/debian bookworm main # trailing\n");
        assert_eq!(s.renamed("bullseye").unwrap(), "deb http://x/debian bullseye main\n");

        let mut s = HostSources { codename: "bookworm".to_owned(), entries: Vec::new() };
        s.add_deb822(
            "Types: deb\nURIs: http://x/debian-security\nSuites: bookworm-security\nComponents: main\n",
        );
        s.add_deb822("Enabled: no\nTypes: deb\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n");
        assert_eq!(s.renamed("bullseye"), None, "a security mirror alone is not enough");
    }

    #[test]
    fn config_values() {
        let text = "# CONFIG_SECURITY_LANDLOCK is not set\nCONFIG_BPF_LSM=y\nCONFIG_LSM=\"lockdown,yama\"\n";
        assert_eq!(config_value(text, "BPF_LSM").as_deref(), Some("y"));
        assert_eq!(config_value(text, "LSM").as_deref(), Some("\"lockdown,yama\""));
        assert_eq!(config_value(text, "SECURITY_LANDLOCK"), None);
        assert_eq!(config_value(text, "BPF"), None);
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
