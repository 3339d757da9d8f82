//! A set of policy documents: loading, selecting the ones that govern a
//! workload, and checking the set as a whole.

use std::path::{Path, PathBuf};

use super::{
    compile::{flatten, parse_bool, parse_mode},
    diag::{Diagnostic, Diagnostics, Place},
    model::{Policy, PolicyError},
    tier::Tier,
};

/// What is known about a workload when choosing its policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// cgroup path relative to the cgroup v2 mount, e.g. `system.slice/nginx.service`.
    pub cgroup: Option<String>,
    pub exe: Option<String>,
    /// `sha3-256:<hex>`.
    pub digest: Option<String>,
    /// Key ids of the capsule's valid signers; a `signers` selector matches
    /// when any of them is listed.
    pub signers: Vec<String>,
    /// Matches every selector (compiling one policy on its own).
    pub any: bool,
}

impl Workload {
    pub fn any() -> Self {
        Self { any: true, ..Self::default() }
    }

    pub fn cgroup(path: &str) -> Self {
        Self { cgroup: Some(path.trim_matches('/').to_string()), ..Self::default() }
    }
}

/// Policy documents, in load order.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub docs: Vec<Policy>,
}

fn cgroup_matches(pattern: &str, cgroup: &str) -> bool {
    let pattern = pattern.trim_matches('/');
    match pattern.strip_suffix("/*") {
        Some(parent) => {
            cgroup.strip_prefix(parent).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        }
        None => pattern == cgroup,
    }
}

impl PolicySet {
    /// A set from parsed documents; rejects duplicate policy and rule names.
    pub fn from_docs(docs: Vec<Policy>) -> Result<Self, Diagnostics> {
        let set = Self { docs };
        let diags: Vec<Diagnostic> = set.name_clashes();
        if diags.is_empty() { Ok(set) } else { Err(Diagnostics(diags)) }
    }

    /// Loads `*.yaml`/`*.yml` files and directories of them. Reports every
    /// error of every file, not just the first.
    pub fn load(paths: &[PathBuf]) -> Result<Self, PolicyError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| io_error(p, &e))?
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
        let mut docs = Vec::new();
        let mut diags = Vec::new();
        for f in &files {
            let name = f.display().to_string();
            match std::fs::read_to_string(f) {
                Ok(text) => match Policy::parse_file(&text, &name) {
                    Ok(mut d) => docs.append(&mut d),
                    Err(PolicyError(Diagnostics(mut d))) => diags.append(&mut d),
                },
                Err(e) => diags.push(Place::new(&name, None, 0).error(e.to_string())),
            }
        }
        if !diags.is_empty() {
            return Err(PolicyError(Diagnostics(diags)));
        }
        Self::from_docs(docs).map_err(PolicyError)
    }

    fn name_clashes(&self) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        for (i, a) in self.docs.iter().enumerate() {
            if let Some(b) = self.docs[..i].iter().find(|b| b.name() == a.name()) {
                diags.push(a.place(&a.metadata.name).error(format!(
                    "policy name {:?} is already used at {}",
                    a.name(),
                    b.place(&b.metadata.name)
                )));
            }
        }
        let (flat, mut flat_diags) = flatten(&self.docs);
        diags.append(&mut flat_diags);
        for (i, r) in flat.iter().enumerate() {
            if let Some(prev) = flat[..i].iter().find(|p| p.name == r.name) {
                diags.push(r.doc.place(r.rule.anchor()).error(format!(
                    "rule name {:?} is already used at {}; rule names identify decisions and must be unique",
                    r.name,
                    prev.doc.place(prev.rule.anchor())
                )));
            }
        }
        diags
    }

    /// Whether `doc` governs `w`.
    pub fn selects(doc: &Policy, w: &Workload) -> bool {
        let Some(sel) = &doc.spec.selector else { return true };
        if w.any {
            return true;
        }
        let cat = |items: &[marked_yaml::Spanned<String>],
                   value: &Option<String>,
                   m: &dyn Fn(&str, &str) -> bool| {
            items.is_empty() || value.as_deref().is_some_and(|v| items.iter().any(|i| m(i, v)))
        };
        cat(&sel.cgroups, &w.cgroup, &cgroup_matches)
            && cat(&sel.executables, &w.exe, &|a, b| a == b)
            && cat(&sel.digests, &w.digest, &|a, b| a == b)
            && (sel.signers.is_empty() || sel.signers.iter().any(|s| w.signers.iter().any(|k| **s == *k)))
    }

    /// The documents governing `w`, in load order.
    pub fn selecting(&self, w: &Workload) -> Vec<&Policy> {
        self.docs.iter().filter(|d| Self::selects(d, w)).collect()
    }

    /// The initial trust tier of `w`: what its policies say (they must
    /// agree), `unknown` when none says.
    pub fn initial_tier(&self, w: &Workload) -> Result<Tier, Diagnostics> {
        let mut found: Option<(Tier, Place)> = None;
        let mut diags = Vec::new();
        for doc in self.selecting(w) {
            let Some(t) = &doc.spec.trust else { continue };
            let place = doc.place(t);
            match t.parse::<Tier>() {
                Ok(tier) => match &found {
                    Some((prev, prev_place)) if *prev != tier => diags.push(place.error(format!(
                        "trust {tier} conflicts with trust {prev} at {prev_place} for the same workload"
                    ))),
                    Some(_) => {}
                    None => found = Some((tier, place)),
                },
                Err(e) => diags.push(place.error(e)),
            }
        }
        if diags.is_empty() { Ok(found.map_or(Tier::Unknown, |(t, _)| t)) } else { Err(Diagnostics(diags)) }
    }

    /// Checks the whole set: every document at every tier (so escalation
    /// rules are checked too), and every group of documents that can govern
    /// the same workload together. Returns all findings.
    pub fn check(&self) -> Vec<Diagnostic> {
        let mut diags = self.name_clashes();
        for doc in &self.docs {
            if let Some(m) = &doc.spec.mode
                && let Err(d) = parse_mode(doc, m)
            {
                diags.push(d);
            }
            if let Some(sp) = &doc.spec.self_protect
                && let Err(d) = parse_bool(doc, sp)
            {
                diags.push(d);
            }
        }
        // Groups: each distinct selector together with every unselective policy.
        let mut groups: Vec<Vec<Policy>> = Vec::new();
        let baseline: Vec<Policy> = self.docs.iter().filter(|d| d.spec.selector.is_none()).cloned().collect();
        groups.push(baseline.clone());
        for d in self.docs.iter().filter(|d| d.spec.selector.is_some()) {
            let mut g = baseline.clone();
            g.push(d.clone());
            groups.push(g);
        }
        for g in groups.into_iter().filter(|g| !g.is_empty()) {
            let set = Self { docs: g };
            if let Err(mut d) = set.initial_tier(&Workload::any()) {
                diags.append(&mut d.0);
            }
            for tier in Tier::ALL {
                if let Err(PolicyError(mut d)) = set.compile_for(&Workload::any(), tier, 1) {
                    diags.append(&mut d.0);
                }
            }
        }
        diags.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        diags.dedup();
        diags
    }
}

/// Which kernel backends can carry each operation class.
pub fn enforceable(class: u8, active: &crate::ebpf::Active) -> bool {
    use forge_common::op;
    match class {
        op::EXEC => active.lsm_paths || active.tracepoint,
        op::FILE_READ | op::FILE_WRITE => active.lsm_paths,
        op::NET_CONNECT | op::NET_BIND => active.cgroup || active.lsm,
        op::NET_SENDTO => active.cgroup || active.lsm,
        op::NET_RAW => active.cgroup || active.lsm,
        op::NET_UNIX => active.lsm,
        op::SYSCALL => active.tracepoint,
        _ => true,
    }
}

/// What a `net.bind` deny leaves out where BPF LSM does not run.
const LISTEN_NOTE: &str = "on this host bind() is decided at cgroup/bind4/6, but a listen() on a socket without a port takes an ephemeral one undecided (that needs BPF LSM's socket_listen hook)";

/// The part of a deny of `class` that only BPF LSM decides, where the
/// cgroup hooks decide the rest and BPF LSM does not run.
fn lsm_only_part(class: Option<u8>, active: &crate::ebpf::Active) -> Option<&'static str> {
    if active.lsm || !active.cgroup {
        return None;
    }
    match class? {
        forge_common::op::NET_RAW => Some(PACKET_SOCKETS_NOTE),
        forge_common::op::NET_BIND => Some(LISTEN_NOTE),
        _ => None,
    }
}

/// What a `net.raw` deny leaves out where BPF LSM does not run.
const PACKET_SOCKETS_NOTE: &str = "on this host raw and ICMP inet sockets are denied at cgroup/sock_create, but packet sockets (AF_PACKET) are not decided (that needs BPF LSM's socket_create hook)";

impl PolicySet {
    /// Rules (and deny defaults) that no backend available here can enforce:
    /// warnings, or errors when `strict`. Notes (never errors) say where a
    /// deny is enforced only after the fact here: a syscall deny is a kill
    /// at syscall entry, after which the call still runs.
    pub fn check_backends(&self, active: &crate::ebpf::Active, strict: bool) -> Vec<Diagnostic> {
        let (flat, _) = flatten(&self.docs);
        let mut out = Vec::new();
        let report = |place: Place, msg: String| if strict { place.error(msg) } else { place.warning(msg) };
        for f in &flat {
            for o in f.rule.op_list() {
                if super::compile::class(o) == Some(forge_common::op::SYSCALL)
                    && f.rule.action.as_str() == "deny"
                    && active.tracepoint
                {
                    // Calls whose effect an LSM hook refuses first, where BPF LSM runs.
                    let on = |h: &forge_common::syscall_effect::Hooked| {
                        active.lsm
                            && (h.hook != forge_common::syscall_effect::USERNS_HOOK || active.lsm_userns)
                    };
                    let effects: Vec<(&str, super::syscalls::DenyEffect)> = f
                        .rule
                        .syscalls
                        .iter()
                        .map(|s| (s.as_str(), super::syscalls::DenyEffect::of(s, on)))
                        .collect();
                    let after: Vec<&str> =
                        effects.iter().filter(|(_, e)| !e.refused()).map(|(s, _)| *s).collect();
                    if !after.is_empty() {
                        out.push(f.doc.place(o).note(format!(
                            "rule {:?}: on this host a deny of {} is a SIGKILL at syscall entry; the call itself still runs (its effect happens) before the caller dies",
                            f.name,
                            after.join(", ")
                        )));
                    }
                    for (name, e) in effects.iter().filter(|(_, e)| !e.refused() && !e.parts.is_empty()) {
                        out.push(f.doc.place(o).note(format!(
                            "rule {:?}: on this host {} for {name}",
                            f.name,
                            e.parts_text()
                        )));
                    }
                }
                if let Some(c) = super::compile::class(o)
                    && !enforceable(c, active)
                {
                    out.push(report(
                        f.doc.place(o),
                        format!(
                            "rule {:?}: no backend available on this host enforces {} (see `forge doctor`)",
                            f.name,
                            o.as_str()
                        ),
                    ));
                }
                if let Some(note) = lsm_only_part(super::compile::class(o), active)
                    && f.rule.action.as_str() == "deny"
                {
                    out.push(f.doc.place(o).note(format!("rule {:?}: {note}", f.name)));
                }
            }
        }
        for doc in &self.docs {
            for (name, action) in &doc.spec.defaults {
                let class = super::compile::class(name);
                if action.as_str() == "deny"
                    && let Some(c) = class
                    && !enforceable(c, active)
                {
                    out.push(report(
                        doc.place(action),
                        format!("default deny for {name} cannot be enforced on this host"),
                    ));
                }
                if let Some(note) = lsm_only_part(class, active)
                    && action.as_str() == "deny"
                {
                    out.push(doc.place(action).note(format!("default deny for {name}: {note}")));
                }
            }
        }
        out
    }
}

fn io_error(p: &Path, e: &std::io::Error) -> PolicyError {
    PolicyError(Diagnostics(vec![Place::new(&p.display().to_string(), None, 0).error(e.to_string())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Severity;

    #[test]
    fn selectors_combine_categories_with_and_items_with_or() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: s}\nspec:\n  selector:\n    executables: [/usr/sbin/nginx, /usr/bin/nginx]\n    digests: [\"sha3-256:ab\"]\n    signers: [k1]\n";
        let doc = Policy::from_yaml(text, "s.yaml").unwrap();
        let w = |exe: &str, digest: &str, signer: &str| Workload {
            exe: Some(exe.into()),
            digest: Some(digest.into()),
            signers: vec!["k0".into(), signer.into()],
            ..Workload::default()
        };
        assert!(PolicySet::selects(&doc, &w("/usr/bin/nginx", "sha3-256:ab", "k1")));
        assert!(
            !PolicySet::selects(&doc, &w("/usr/bin/nginx", "sha3-256:cd", "k1")),
            "digest must match too"
        );
        assert!(!PolicySet::selects(&doc, &w("/bin/sh", "sha3-256:ab", "k1")));
        assert!(!PolicySet::selects(&doc, &w("/usr/bin/nginx", "sha3-256:ab", "k2")));
        assert!(!PolicySet::selects(&doc, &Workload::cgroup("web/x")), "an unknown identity is not selected");
        assert!(PolicySet::selects(&doc, &Workload::any()));
    }

    #[test]
    fn host_check_says_when_a_deny_is_a_kill_after_the_call() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: s}\nspec:\n  rules:\n    - {name: no-mount, op: syscall, action: deny, syscalls: [mount]}\n    - {name: reads, op: file.read, action: deny, paths: [/etc/shadow]}\n";
        let set = PolicySet::from_docs(vec![Policy::from_yaml(text, "s.yaml").unwrap()]).unwrap();
        let tracepoints_only = crate::ebpf::Active {
            lsm: false,
            lsm_paths: false,
            lsm_userns: false,
            cgroup: true,
            tracepoint: true,
        };
        let found = set.check_backends(&tracepoints_only, true);
        let note = found.iter().find(|d| d.severity == Severity::Note).expect("a note for the syscall deny");
        assert!(note.message.contains("\"no-mount\"") && note.message.contains("still runs"), "{note}");
        assert_eq!(note.line, 6);
        // The file rule cannot be enforced without the LSM path hooks: an error under strict.
        let errors: Vec<_> = found.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{found:?}");
        assert!(errors[0].message.contains("\"reads\""));
    }

    #[test]
    fn host_check_says_packet_sockets_need_lsm() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: s}\nspec:\n  defaults: {net.raw: deny}\n  rules:\n    - {name: no-raw, op: net.raw, action: deny}\n";
        let set = PolicySet::from_docs(vec![Policy::from_yaml(text, "s.yaml").unwrap()]).unwrap();
        let cgroup_only = crate::ebpf::Active {
            lsm: false,
            lsm_paths: false,
            lsm_userns: false,
            cgroup: true,
            tracepoint: true,
        };
        let found = set.check_backends(&cgroup_only, true);
        let notes: Vec<_> = found.iter().filter(|d| d.severity == Severity::Note).collect();
        assert_eq!(notes.len(), 2, "{found:?}");
        assert!(notes.iter().all(|n| n.message.contains("packet sockets (AF_PACKET) are not decided")));
        assert!(found.iter().all(|d| d.severity == Severity::Note), "{found:?}");
        let with_lsm = crate::ebpf::Active { lsm: true, lsm_paths: true, lsm_userns: true, ..cgroup_only };
        assert!(set.check_backends(&with_lsm, true).is_empty());
    }

    #[test]
    fn host_check_says_net_unix_needs_bpf_lsm() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: s}\nspec:\n  defaults: {net.unix: deny}\n  rules:\n    - {name: no-docker, op: net.unix, action: deny, paths: [/run/docker.sock]}\n";
        let set = PolicySet::from_docs(vec![Policy::from_yaml(text, "s.yaml").unwrap()]).unwrap();
        let no_lsm = crate::ebpf::Active {
            lsm: false,
            lsm_paths: false,
            lsm_userns: false,
            cgroup: true,
            tracepoint: true,
        };
        let strict = set.check_backends(&no_lsm, true);
        let errors: Vec<_> = strict.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 2, "{strict:?}");
        assert!(errors.iter().any(|d| d.message.contains("\"no-docker\"") && d.message.contains("net.unix")));
        assert!(errors.iter().any(|d| d.message.contains("default deny for net.unix")));
        assert!(set.check_backends(&no_lsm, false).iter().all(|d| d.severity == Severity::Warning));
        let lsm = crate::ebpf::Active { lsm: true, ..no_lsm };
        assert!(set.check_backends(&lsm, true).is_empty());
    }

    #[test]
    fn host_check_names_the_part_an_effect_hook_refuses() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: s}\nspec:\n  rules:\n    - {name: no-ns, op: syscall, action: deny, syscalls: [mount, unshare]}\n";
        let set = PolicySet::from_docs(vec![Policy::from_yaml(text, "s.yaml").unwrap()]).unwrap();
        let notes = |active: &crate::ebpf::Active| -> Vec<String> {
            set.check_backends(active, true)
                .into_iter()
                .filter(|d| d.severity == Severity::Note)
                .map(|d| d.message)
                .collect()
        };
        let lsm = crate::ebpf::Active {
            lsm: true,
            lsm_paths: true,
            lsm_userns: true,
            cgroup: true,
            tracepoint: true,
        };
        // mount is refused whole; unshare is killed after, its user namespace refused first.
        let found = notes(&lsm);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("a deny of unshare is a SIGKILL") && !found[0].contains("mount"),
            "{found:?}"
        );
        assert!(found[1].contains("refuses user-namespace creation first for unshare"), "{found:?}");
        // A kernel without the userns hook (before 6.1): no part is refused.
        let found = notes(&crate::ebpf::Active { lsm_userns: false, ..lsm });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a deny of unshare is a SIGKILL"), "{found:?}");
    }

    #[test]
    fn cgroup_patterns() {
        assert!(cgroup_matches("system.slice/nginx.service", "system.slice/nginx.service"));
        assert!(cgroup_matches("/kubepods/*", "kubepods/pod1"));
        assert!(cgroup_matches("kubepods/*", "kubepods/pod1/ctr"));
        assert!(!cgroup_matches("kubepods/*", "kubepods"));
        assert!(!cgroup_matches("kubepods/*", "kubepodsx/a"));
        assert!(!cgroup_matches("a", "a/b"));
    }
}
