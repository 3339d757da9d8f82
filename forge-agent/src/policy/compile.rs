//! Compiles the policies that select a workload, at its trust tier, into the
//! kernel's per-cgroup record and path rules.
//!
//! Precedence (documented in docs/policy.md):
//! - network: an explicit deny wins over any allow; among denies (and among
//!   allows) the most specific CIDR, then the narrowest port range, is tried
//!   first. The kernel takes the first match.
//! - paths: the longest matching prefix wins (so an allow for `/etc/ssl/`
//!   carves an exception out of a deny for `/etc/`); an exact file beats any
//!   directory prefix.
//! - defaults: per operation class, a deny in any selected policy wins; a
//!   class no selected policy mentions is denied (zero trust).
//! - the same target both allowed and denied (same path, same CIDR and
//!   ports, same syscall) is a contradiction and an error.

use std::collections::BTreeMap;

use forge_common::{
    MAX_NET_RULES, PATH_KEY_PATH_LEN, PathRule, PolicyRecord, flags, mode, op, rule_id, verdict,
};
use marked_yaml::Spanned;
use serde::Serialize;

use super::{
    diag::{Diagnostic, Diagnostics, Place},
    model::{Policy, PolicyError, Rule},
    net::{Cidr, net_rule, parse_ports},
    set::{PolicySet, Workload},
    syscalls,
    tier::Tier,
};

/// One path rule for the LPM trie: the bytes to match (with a trailing `/`
/// for a directory, or a NUL for one exact file) under an op class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathEntry {
    pub op: u8,
    pub pattern: Vec<u8>,
    pub rule: PathRuleInfo,
}

/// [`PathRule`] in a serializable form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PathRuleInfo {
    pub action: u8,
    pub mode: u8,
    pub rule_id: u32,
}

impl PathEntry {
    pub fn kernel_rule(&self) -> PathRule {
        PathRule { action: self.rule.action, mode: self.rule.mode, _pad: [0; 2], rule_id: self.rule.rule_id }
    }
}

/// Where a rule id came from, for explanations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleInfo {
    pub id: u32,
    pub name: String,
    /// `file:line` of the rule.
    pub source: String,
    pub policy: String,
}

/// Everything the map writer needs to govern one workload.
#[derive(Clone, Debug)]
pub struct CompiledRecord {
    /// Names of the policies that selected the workload, joined with `+`.
    pub policy_name: String,
    pub tier: Tier,
    /// An escalation at this tier asks for quarantine: the record is the
    /// redzone (no exec, no network, no writes; reads as the policy says).
    pub quarantine: bool,
    /// The quarantine also freezes the cgroup (`quarantine: true` or
    /// `freeze`); `quarantine: redzone` lets it run inside the redzone.
    pub freeze: bool,
    pub record: PolicyRecord,
    pub paths: Vec<PathEntry>,
    /// Every rule of the set (ids are stable across workloads and tiers).
    pub rules: Vec<RuleInfo>,
    /// Ids of the rules in force for this workload at this tier.
    pub active_rules: Vec<u32>,
    /// Where each class's default came from (`None`: nobody said; zero trust).
    pub default_sources: [Option<String>; op::COUNT],
    /// The host-call gate of Wasm capsules: files and network are decided by
    /// `eval::evaluate` on this same record; the rest is here.
    pub capsule: CapsuleGate,
}

/// Capsule host facilities without a kernel operation class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CapsuleGate {
    /// Environment variables a capsule may read.
    pub env: std::collections::BTreeSet<String>,
    pub clock: bool,
    pub random: bool,
}

impl CompiledRecord {
    /// The rule behind `id`, if the set defined it.
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// Operation classes by name, as written in policies.
pub const CLASSES: [(&str, u8); 9] = [
    ("exec", op::EXEC),
    ("file.read", op::FILE_READ),
    ("file.write", op::FILE_WRITE),
    ("net.connect", op::NET_CONNECT),
    ("net.bind", op::NET_BIND),
    ("net.sendto", op::NET_SENDTO),
    ("syscall", op::SYSCALL),
    ("net.raw", op::NET_RAW),
    ("net.unix", op::NET_UNIX),
];

/// The class number of an operation class name.
pub fn class(name: &str) -> Option<u8> {
    CLASSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The name of a class number (`?` for none).
pub fn class_name(c: u8) -> &'static str {
    CLASSES.iter().find(|(_, v)| *v == c).map_or("?", |(n, _)| *n)
}

fn class_list() -> String {
    CLASSES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Encodes a path pattern for the trie. `/dir/` and `/dir/*` are prefixes;
/// anything else is one exact file.
pub fn encode_path(p: &str) -> Result<Vec<u8>, String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must be absolute"));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "path {p:?} must not contain . or .. components (paths are matched after the kernel resolves them)"
        ));
    }
    if p.contains('\0') {
        return Err(format!("path {p:?} contains a NUL byte"));
    }
    let bytes = if let Some(dir) = p.strip_suffix("/*") {
        format!("{dir}/").into_bytes()
    } else if p.ends_with('/') {
        p.as_bytes().to_vec()
    } else {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        b
    };
    if bytes.contains(&b'*') {
        return Err(format!("path {p:?}: only a trailing /* is supported as a wildcard"));
    }
    if bytes.len() > PATH_KEY_PATH_LEN - 1 {
        return Err(format!(
            "path {p:?} is longer than the {} bytes a kernel path key holds",
            PATH_KEY_PATH_LEN - 2
        ));
    }
    Ok(bytes)
}

/// Compiles one policy on its own, for any workload, at its initial tier.
pub fn compile(policy: &Policy, _source: &str, generation: u64) -> Result<CompiledRecord, PolicyError> {
    let set = PolicySet::from_docs(vec![policy.clone()]).map_err(PolicyError)?;
    let tier = set.initial_tier(&Workload::any()).map_err(PolicyError)?;
    set.compile_for(&Workload::any(), tier, generation)
}

/// A rule of the set with its stable id and the tier scope it came from.
pub(crate) struct FlatRule<'a> {
    pub(crate) id: u32,
    pub(crate) doc: &'a Policy,
    pub(crate) rule: &'a Rule,
    /// `Some(t)`: an escalation rule for tier `t` and below.
    pub(crate) escalation: Option<Tier>,
    pub(crate) name: String,
}

/// Numbers every rule of the set, base rules then escalation rules per
/// document, in file order: ids are stable whatever workload or tier.
pub(crate) fn flatten(docs: &[Policy]) -> (Vec<FlatRule<'_>>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for doc in docs {
        let name_of = |rule: &Rule, escalation: Option<Tier>, n: usize| match (&rule.name, escalation) {
            (Some(name), _) => name.to_string(),
            (None, None) => format!("{}/rule-{}", doc.name(), n + 1),
            (None, Some(t)) => format!("{}/{t}-rule-{}", doc.name(), n + 1),
        };
        let mut local: Vec<(&Rule, Option<Tier>, String)> = Vec::new();
        for (i, r) in doc.spec.rules.iter().enumerate() {
            local.push((r, None, name_of(r, None, i)));
        }
        for (tier_name, esc) in &doc.spec.escalation {
            let tier = match tier_name.parse::<Tier>() {
                Ok(t) => t,
                Err(e) => {
                    diags.push(doc.place(&doc.metadata.name).error(format!("escalation: {e}")));
                    continue;
                }
            };
            for (i, r) in esc.rules.iter().enumerate() {
                local.push((r, Some(tier), name_of(r, Some(tier), i)));
            }
        }
        for (rule, escalation, name) in local {
            let id = rule_id::FIRST + out.len() as u32;
            out.push(FlatRule { id, doc, rule, escalation, name });
        }
    }
    (out, diags)
}

/// A path entry being built: rule, place, rule name, priority.
type PathSlot = (PathRuleInfo, Place, String, u8);
/// A rule's choice for one syscall slot (or the `net.raw` class): action,
/// mode, rule id, place, rule name, priority.
type SyscallChoice = (u8, u8, u32, Place, String, u8);

/// What the compiler accumulates for one workload.
struct Builder {
    record: PolicyRecord,
    diags: Vec<Diagnostic>,
    defaults: [Option<(u8, Place)>; op::COUNT],
    /// Values carry the rule's priority: 0 for base rules, higher for
    /// escalation rules of less trusted tiers, which override base rules.
    paths: BTreeMap<(u8, Vec<u8>), PathSlot>,
    net: Vec<(forge_common::NetRule, u32, Place, String, u8)>,
    syscalls: BTreeMap<usize, SyscallChoice>,
    /// A `net.raw` rule (it has no matchers: it decides the whole class).
    raw: Option<SyscallChoice>,
    active_rules: Vec<u32>,
}

fn parse_action(doc: &Policy, s: &Spanned<String>) -> Result<u8, Diagnostic> {
    match s.as_str() {
        "allow" => Ok(verdict::ALLOW),
        "deny" => Ok(verdict::DENY),
        other => Err(doc.place(s).error(format!("unknown action {other:?}; expected allow or deny"))),
    }
}

pub(crate) fn parse_mode(doc: &Policy, s: &Spanned<String>) -> Result<u8, Diagnostic> {
    match s.as_str() {
        "enforce" => Ok(mode::ENFORCE),
        "monitor" => Ok(mode::MONITOR),
        other => Err(doc.place(s).error(format!("unknown mode {other:?}; expected enforce or monitor"))),
    }
}

pub(crate) fn parse_bool(doc: &Policy, s: &Spanned<String>) -> Result<bool, Diagnostic> {
    match s.as_str() {
        "true" | "yes" => Ok(true),
        "false" | "no" => Ok(false),
        other => Err(doc.place(s).error(format!("expected true or false, found {other:?}"))),
    }
}

/// `quarantine:` — `true`/`freeze` (redzone and frozen), `redzone`
/// (redzone, keeps running), `false`. Returns (redzone, freeze).
fn parse_quarantine(doc: &Policy, s: &Spanned<String>) -> Result<(bool, bool), Diagnostic> {
    match s.as_str() {
        "true" | "yes" | "freeze" => Ok((true, true)),
        "redzone" => Ok((true, false)),
        "false" | "no" => Ok((false, false)),
        other => Err(doc.place(s).error(format!("expected freeze, redzone, true or false, found {other:?}"))),
    }
}

fn doc_mode(doc: &Policy) -> Result<u8, Diagnostic> {
    doc.spec.mode.as_ref().map_or(Ok(mode::ENFORCE), |m| parse_mode(doc, m))
}

impl Builder {
    /// The quarantine record: exec, network (unix sockets too) and writes
    /// are denied whatever the rules said; reads and syscalls stay as
    /// compiled.
    fn redzone(&mut self, place: &Place) {
        for c in [
            op::EXEC,
            op::FILE_WRITE,
            op::NET_CONNECT,
            op::NET_BIND,
            op::NET_SENDTO,
            op::NET_RAW,
            op::NET_UNIX,
        ] {
            self.defaults[c as usize] = Some((verdict::DENY, place.clone()));
        }
        self.net.clear();
        self.raw = None;
        self.paths.retain(|(op, _), _| !matches!(*op, op::EXEC | op::FILE_WRITE | op::NET_UNIX));
    }

    fn merge_defaults(&mut self, doc: &Policy, defaults: &BTreeMap<String, Spanned<String>>) {
        for (name, action) in defaults {
            let Some(c) = class(name) else {
                self.diags.push(doc.place(action).error(format!(
                    "defaults: unknown operation class {name:?}; expected one of {}",
                    class_list()
                )));
                continue;
            };
            match parse_action(doc, action) {
                Ok(a) => {
                    let slot = &mut self.defaults[c as usize];
                    // A deny anywhere wins.
                    if slot.as_ref().is_none_or(|(prev, _)| *prev == verdict::ALLOW) {
                        *slot = Some((a, doc.place(action)));
                    }
                }
                Err(d) => self.diags.push(d),
            }
        }
    }

    fn add_rule(&mut self, f: &FlatRule<'_>) {
        let doc = f.doc;
        let rule = f.rule;
        let here = doc.place(rule.anchor());
        let prio: u8 = f.escalation.map_or(0, |t| t as u8 + 1);
        let err = |place: &Place, m: String| place.error(format!("rule {:?}: {m}", f.name));
        let action = match parse_action(doc, &rule.action) {
            Ok(a) => a,
            Err(d) => return self.diags.push(d),
        };
        let m = match rule.mode.as_ref().map_or_else(|| doc_mode(doc), |m| parse_mode(doc, m)) {
            Ok(m) => m,
            Err(d) => return self.diags.push(d),
        };
        let ops = rule.op_list();
        if ops.is_empty() {
            return self.diags.push(err(&here, "needs `op` (or `ops`)".into()));
        }
        let mut classes = Vec::new();
        for o in ops {
            match class(o) {
                Some(c) => classes.push(c),
                None => {
                    return self.diags.push(err(
                        &doc.place(o),
                        format!("unknown op {:?}; expected one of {}", o.as_str(), class_list()),
                    ));
                }
            }
        }
        if let Err(m) = check_fields(rule, &classes) {
            return self.diags.push(err(&here, m));
        }
        self.active_rules.push(f.id);
        for &c in &classes {
            match c {
                op::EXEC | op::FILE_READ | op::FILE_WRITE | op::NET_UNIX => {
                    for p in &rule.paths {
                        let place = doc.place(p);
                        let encoded = if p.as_str() == ANONYMOUS {
                            if c == op::EXEC {
                                Ok(forge_common::ANON_KEY_PATH.to_vec())
                            } else {
                                Err(format!(
                                    "{ANONYMOUS} names anonymous executables (memfd, deleted files): only exec rules may use it"
                                ))
                            }
                        } else {
                            encode_path(p)
                        };
                        let pattern = match encoded {
                            Ok(b) => b,
                            Err(m) => {
                                self.diags.push(err(&place, m));
                                continue;
                            }
                        };
                        let info = PathRuleInfo { action, mode: m, rule_id: f.id };
                        match self.paths.get(&(c, pattern.clone())) {
                            Some((_, _, _, prev_prio)) if *prev_prio < prio => {
                                self.paths.insert((c, pattern), (info, place, f.name.clone(), prio));
                            }
                            Some((prev, prev_place, prev_name, prev_prio))
                                if prev.action != action && *prev_prio == prio =>
                            {
                                self.diags.push(err(
                                    &place,
                                    format!(
                                        "{} {:?} contradicts rule {prev_name:?} at {prev_place}: the same path is both allowed and denied",
                                        class_name(c),
                                        p.as_str()
                                    ),
                                ));
                            }
                            Some(_) => {}
                            None => {
                                self.paths.insert((c, pattern), (info, place, f.name.clone(), prio));
                            }
                        }
                    }
                    self.record.flags |=
                        if c == op::NET_UNIX { flags::UNIX_RULES } else { flags::HAS_PATH_RULES };
                }
                op::NET_CONNECT | op::NET_BIND | op::NET_SENDTO => {
                    let ports = match &rule.ports {
                        None => (0, u16::MAX),
                        Some(p) => match parse_ports(p) {
                            Ok(r) => r,
                            Err(e) => {
                                self.diags.push(err(&doc.place(p), e.to_string()));
                                continue;
                            }
                        },
                    };
                    let mut targets: Vec<(Option<Cidr>, u32, Place)> = Vec::new();
                    if rule.cidrs.is_empty() {
                        targets.push((None, 0, here.clone()));
                    }
                    for cidr in &rule.cidrs {
                        match Cidr::parse(cidr) {
                            Ok(parsed) => {
                                let prefix = parsed.mask.iter().map(|w| w.count_ones()).sum::<u32>();
                                targets.push((Some(parsed), prefix, doc.place(cidr)));
                            }
                            Err(e) => self.diags.push(err(&doc.place(cidr), e.to_string())),
                        }
                    }
                    for (cidr, prefix, place) in targets {
                        let r = net_rule(cidr, ports, 1 << c, action, m, f.id);
                        let same = |o: &forge_common::NetRule| {
                            o.ops == r.ops
                                && o.family == r.family
                                && o.addr == r.addr
                                && o.mask == r.mask
                                && (o.port_lo, o.port_hi) == (r.port_lo, r.port_hi)
                        };
                        // An escalation rule replaces a base rule for the same target.
                        self.net.retain(|(o, _, _, _, p)| !(same(o) && *p < prio));
                        let clash = self
                            .net
                            .iter()
                            .find(|(o, _, _, _, p)| same(o) && o.action != r.action && *p == prio);
                        if let Some((_, _, prev_place, prev_name, _)) = clash {
                            self.diags.push(err(
                                &place,
                                format!("{} contradicts rule {prev_name:?} at {prev_place}: the same address and ports are both allowed and denied", class_name(c)),
                            ));
                            continue;
                        }
                        self.net.push((r, prefix, place, f.name.clone(), prio));
                    }
                }
                op::NET_RAW => match &self.raw {
                    Some((_, _, _, _, _, p)) if *p < prio => {
                        self.raw = Some((action, m, f.id, here.clone(), f.name.clone(), prio));
                    }
                    Some((a, _, _, prev_place, prev_name, p)) if *a != action && *p == prio => {
                        self.diags.push(err(
                            &here,
                            format!("net.raw contradicts rule {prev_name:?} at {prev_place}: both allowed and denied"),
                        ));
                    }
                    Some(_) => {}
                    None => self.raw = Some((action, m, f.id, here.clone(), f.name.clone(), prio)),
                },
                op::SYSCALL => {
                    for s in &rule.syscalls {
                        let place = doc.place(s);
                        let slots = match syscalls::rule_slots(s) {
                            Ok(slots) => slots,
                            Err(e) => {
                                self.diags.push(err(&place, e.to_string()));
                                continue;
                            }
                        };
                        for slot in slots {
                            match self.syscalls.get(&slot) {
                                Some((_, _, _, _, _, p)) if *p < prio => {
                                    self.syscalls
                                        .insert(slot, (action, m, f.id, place.clone(), f.name.clone(), prio));
                                }
                                Some((a, _, _, prev_place, prev_name, p)) if *a != action && *p == prio => {
                                    self.diags.push(err(
                                        &place,
                                        format!(
                                            "syscall {:?} contradicts rule {prev_name:?} at {prev_place}: {} is both allowed and denied",
                                            s.as_str(),
                                            syscalls::slot_name(slot)
                                        ),
                                    ));
                                    break;
                                }
                                Some(_) => {}
                                None => {
                                    self.syscalls
                                        .insert(slot, (action, m, f.id, place.clone(), f.name.clone(), prio));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl PolicySet {
    /// Compiles the policies selecting `workload`, at `tier`.
    pub fn compile_for(
        &self,
        workload: &Workload,
        tier: Tier,
        generation: u64,
    ) -> Result<CompiledRecord, PolicyError> {
        let selected = self.selecting(workload);
        let (flat, mut flat_diags) = flatten(&self.docs);
        let mut b = Builder {
            record: PolicyRecord::allow_all(generation),
            diags: Vec::new(),
            defaults: Default::default(),
            paths: BTreeMap::new(),
            net: Vec::new(),
            syscalls: BTreeMap::new(),
            raw: None,
            active_rules: Vec::new(),
        };
        b.diags.append(&mut flat_diags);
        let mut modes = Vec::new();
        let mut capsule = CapsuleGate::default();
        let (mut clock, mut random): (Option<bool>, Option<bool>) = (None, None);
        let mut self_protect = true;
        let mut quarantine = false;
        let mut freeze = false;
        let mut quarantine_place = None;
        for doc in &selected {
            match doc_mode(doc) {
                Ok(m) => modes.push(m),
                Err(d) => b.diags.push(d),
            }
            if let Some(sp) = &doc.spec.self_protect {
                match parse_bool(doc, sp) {
                    Ok(v) => self_protect &= v,
                    Err(d) => b.diags.push(d),
                }
            }
            b.merge_defaults(doc, &doc.spec.defaults);
            if let Some(cap) = &doc.spec.capsule {
                capsule.env.extend(cap.env.iter().map(|e| e.to_string()));
                for (field, slot) in [(&cap.clock, &mut clock), (&cap.random, &mut random)] {
                    if let Some(v) = field {
                        match parse_action(doc, v) {
                            // A deny anywhere wins.
                            Ok(a) => *slot = Some(slot.unwrap_or(true) && a == verdict::ALLOW),
                            Err(d) => b.diags.push(d),
                        }
                    }
                }
            }
            for (tier_name, esc) in &doc.spec.escalation {
                let Ok(t) = tier_name.parse::<Tier>() else { continue };
                if tier.at_or_below(t) {
                    b.merge_defaults(doc, &esc.defaults);
                    if let Some(q) = &esc.quarantine {
                        match parse_quarantine(doc, q) {
                            Ok((isolate, frozen)) => {
                                if isolate {
                                    quarantine_place.get_or_insert_with(|| doc.place(q));
                                }
                                quarantine |= isolate;
                                freeze |= frozen;
                            }
                            Err(d) => b.diags.push(d),
                        }
                    }
                }
            }
        }
        for f in &flat {
            if !selected.iter().any(|d| std::ptr::eq(*d, f.doc)) {
                continue;
            }
            let applies = match f.escalation {
                Some(t) => tier.at_or_below(t),
                None => f.rule.tiers.is_empty() || f.rule.tiers.iter().any(|t| t.as_str() == tier.as_str()),
            };
            for t in &f.rule.tiers {
                if let Err(e) = t.parse::<Tier>() {
                    b.diags.push(f.doc.place(t).error(format!("rule {:?}: {e}", f.name)));
                }
            }
            if applies {
                b.add_rule(f);
            }
        }

        if let Some(place) = &quarantine_place {
            b.redzone(place);
        }
        let mut record = b.record;
        record.mode = if !modes.is_empty() && modes.iter().all(|m| *m == mode::MONITOR) {
            mode::MONITOR
        } else {
            mode::ENFORCE
        };
        let mut default_sources: [Option<String>; op::COUNT] = Default::default();
        for (i, d) in b.defaults.iter().enumerate() {
            record.defaults[i] = match d {
                Some((a, place)) => {
                    default_sources[i] = Some(place.to_string());
                    *a
                }
                None => verdict::DENY,
            };
        }
        record.defaults[op::PROTECT as usize] = verdict::ALLOW;
        if self_protect {
            record.flags |= flags::SELF_PROTECT;
        }
        let mut syscall_allows = Vec::new();
        for (slot, (action, m, id, _, _, _)) in &b.syscalls {
            if *action == verdict::DENY {
                record.deny_syscall(*slot, *id, *m == mode::MONITOR);
            } else {
                syscall_allows.push(*slot);
            }
        }
        if record.defaults[op::SYSCALL as usize] == verdict::DENY {
            let default_rule = record.default_rule[op::SYSCALL as usize];
            for slot in syscalls::slots() {
                if !syscall_allows.contains(&slot) && record.syscall_denied(slot).is_none() {
                    record.deny_syscall(slot, default_rule, record.mode == mode::MONITOR);
                }
            }
            record.flags |= flags::SYSCALL_DEFAULT_DENY;
        }
        deny_multiplexers(&mut record, &b.syscalls);
        deny_mount_family(&mut record, &b.syscalls);
        if let Some((action, m, id, place, _, _)) = &b.raw {
            record.defaults[op::NET_RAW as usize] = *action;
            record.default_rule[op::NET_RAW as usize] = *id;
            default_sources[op::NET_RAW as usize] = Some(place.to_string());
            if *m == mode::MONITOR {
                record.flags |= flags::NET_RAW_MONITOR;
            }
        }
        if b.net.len() > MAX_NET_RULES {
            let place = b.net[MAX_NET_RULES].2.clone();
            b.diags.push(place.error(format!(
                "{} network rules apply to this workload; the kernel record holds at most {MAX_NET_RULES}",
                b.net.len()
            )));
        }
        let mut net = b.net;
        net.sort_by_key(|(r, prefix, _, _, _)| {
            (r.action != verdict::DENY, std::cmp::Reverse(*prefix), u32::from(r.port_hi - r.port_lo))
        });
        record.net_count = net.len().min(MAX_NET_RULES) as u32;
        for (slot, (r, _, _, _, _)) in record.net.iter_mut().zip(net) {
            *slot = r;
        }
        if [op::EXEC, op::FILE_READ, op::FILE_WRITE]
            .iter()
            .any(|c| record.defaults[*c as usize] != verdict::ALLOW)
        {
            record.flags |= flags::HAS_PATH_RULES;
        }
        if record.defaults[op::NET_UNIX as usize] != verdict::ALLOW {
            record.flags |= flags::UNIX_RULES;
        }
        if record.flags & flags::HAS_PATH_RULES != 0 {
            path_guards(&mut record, &b.syscalls, &mut b.diags);
            deny_anonymous_exec(&record, &mut b.paths);
        }
        if b.diags.iter().any(|d| d.severity == super::diag::Severity::Error) {
            let mut diags = b.diags;
            diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            diags.dedup();
            return Err(PolicyError(Diagnostics(diags)));
        }
        let rules = flat
            .iter()
            .map(|f| RuleInfo {
                id: f.id,
                name: f.name.clone(),
                source: f.doc.place(f.rule.anchor()).to_string(),
                policy: f.doc.name().to_string(),
            })
            .collect();
        let paths = b
            .paths
            .into_iter()
            .map(|((op, pattern), (rule, _, _, _))| PathEntry { op, pattern, rule })
            .collect();
        Ok(CompiledRecord {
            policy_name: selected.iter().map(|d| d.name()).collect::<Vec<_>>().join("+"),
            tier,
            quarantine,
            freeze,
            record,
            paths,
            rules,
            active_rules: b.active_rules,
            default_sources,
            capsule: CapsuleGate {
                clock: clock.unwrap_or(false),
                random: random.unwrap_or(false),
                ..capsule
            },
        })
    }
}

fn check_fields(rule: &Rule, classes: &[u8]) -> Result<(), String> {
    let path_ops =
        classes.iter().any(|c| matches!(*c, op::EXEC | op::FILE_READ | op::FILE_WRITE | op::NET_UNIX));
    let net_ops = classes.iter().any(|c| matches!(*c, op::NET_CONNECT | op::NET_BIND | op::NET_SENDTO));
    let sys_ops = classes.contains(&op::SYSCALL);
    if path_ops && rule.paths.is_empty() {
        return Err("exec, file and net.unix rules need `paths`".into());
    }
    if !path_ops && !rule.paths.is_empty() {
        return Err("`paths` only applies to exec, file and net.unix rules".into());
    }
    if !net_ops && (!rule.cidrs.is_empty() || rule.ports.is_some()) {
        return Err("`cidrs`/`ports` only apply to net rules".into());
    }
    if sys_ops && rule.syscalls.is_empty() {
        return Err("syscall rules need `syscalls`".into());
    }
    if !sys_ops && !rule.syscalls.is_empty() {
        return Err("`syscalls` only applies to syscall rules".into());
    }
    Ok(())
}

/// An i386 multiplexer (`socketcall`, `ipc`) reaches the calls behind it
/// with its own number: unless a rule names it, it is denied as soon as
/// one of those calls is (by the first such deny's rule), so that a denied
/// `connect` cannot be made as `socketcall(SYS_CONNECT, …)`.
fn deny_multiplexers(record: &mut PolicyRecord, named: &BTreeMap<usize, SyscallChoice>) {
    for (mux, families) in syscalls::I386_MULTIPLEXERS {
        let Ok(mux_slots) = syscalls::rule_slots(&format!("i386:{mux}")) else { continue };
        let mux_slot = mux_slots[0];
        if named.contains_key(&mux_slot) || record.syscall_denied(mux_slot).is_some() {
            continue;
        }
        let first_deny = families
            .iter()
            .filter_map(|f| syscalls::rule_slots(f).ok())
            .flatten()
            .find_map(|slot| record.syscall_denied(slot));
        if let Some((monitor, rule_id)) = first_deny {
            record.deny_syscall(mux_slot, rule_id, monitor);
        }
    }
}

/// The exec pattern that names anonymous executables (memfd, deleted and
/// `O_TMPFILE` files), which no path can name.
pub const ANONYMOUS: &str = "<anonymous>";

/// Where exec is allowed by default but some exec is denied by a rule, and
/// no rule names [`ANONYMOUS`], anonymous executables are denied (built-in
/// rule `ANONYMOUS_EXEC`): otherwise a copy of a denied program run from a
/// memfd would pass. Monitored when every exec deny rule is. (Where the
/// default denies exec, it denies them too.)
fn deny_anonymous_exec(record: &PolicyRecord, paths: &mut BTreeMap<(u8, Vec<u8>), PathSlot>) {
    let key = (op::EXEC, forge_common::ANON_KEY_PATH.to_vec());
    if paths.contains_key(&key) {
        return;
    }
    if record.defaults[op::EXEC as usize] != verdict::ALLOW {
        // The default denies them already.
        return;
    }
    let denies: Vec<u8> = paths
        .iter()
        .filter(|((o, _), (info, ..))| *o == op::EXEC && info.action == verdict::DENY)
        .map(|(_, (info, ..))| info.mode)
        .collect();
    if denies.is_empty() {
        return;
    }
    let monitor = denies.iter().all(|m| *m == mode::MONITOR);
    let info = PathRuleInfo {
        action: verdict::DENY,
        mode: if monitor { mode::MONITOR } else { mode::ENFORCE },
        rule_id: rule_id::ANONYMOUS_EXEC,
    };
    paths.insert(key, (info, Place::new("built-in", None, 0), "anonymous-exec".to_string(), 0));
}

/// The rule allowing x86_64 syscall `name` by name, if one does.
fn allowed_by_name<'a>(named: &'a BTreeMap<usize, SyscallChoice>, name: &str) -> Option<&'a SyscallChoice> {
    let nr = syscalls::number(name)?;
    named.get(&forge_common::syscall_slot(false, u64::from(nr))?).filter(|c| c.0 == verdict::ALLOW)
}

/// A `mount` deny also denies the new mount API ([`syscalls::MOUNT_API`]:
/// `fsopen`, `fsmount`, `open_tree`, `move_mount`, …, on every ABI) by the
/// same rule, unless a rule names the call: otherwise a `mount` binary that
/// uses the new API (util-linux from 2.39) would mount past the rule.
fn deny_mount_family(record: &mut PolicyRecord, named: &BTreeMap<usize, SyscallChoice>) {
    let Some(slot) =
        syscalls::number("mount").and_then(|nr| forge_common::syscall_slot(false, u64::from(nr)))
    else {
        return;
    };
    let Some((monitor, rule_id)) = record.syscall_denied(slot) else {
        return;
    };
    for call in syscalls::MOUNT_API {
        let Ok(slots) = syscalls::rule_slots(call) else { continue };
        if slots.iter().any(|s| named.contains_key(s)) {
            continue;
        }
        for slot in slots {
            if record.syscall_denied(slot).is_none() {
                record.deny_syscall(slot, rule_id, monitor);
            }
        }
    }
}

/// The path guard of a record with path rules ([`forge_common::path_guard`]):
/// each guarded call is refused at its LSM hooks unless a rule allows it by
/// name. Allowing `chroot` is an error: under a new root the kernel reports
/// every path relative to it, so no path rule means what it says.
fn path_guards(
    record: &mut PolicyRecord,
    named: &BTreeMap<usize, SyscallChoice>,
    diags: &mut Vec<Diagnostic>,
) {
    for g in forge_common::path_guard::GUARDS {
        match allowed_by_name(named, g.syscall) {
            Some((_, _, _, place, rule, _)) if !g.allowable => diags.push(place.error(format!(
                "rule {rule:?} allows {} for a workload with exec or file rules: inside a new root the kernel \
                 reports every path relative to it, so no path rule would mean what it says; remove the allow \
                 or the path rules",
                g.syscall
            ))),
            Some(_) => {}
            None => record.flags |= g.flag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, PolicySet, Workload};

    fn doc(name: &str, body: &str) -> String {
        format!("apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n{body}")
    }

    fn one(body: &str) -> Policy {
        Policy::from_yaml(&doc("t", body), "t.yaml").expect("valid policy")
    }

    fn set(docs: &[(&str, &str)]) -> PolicySet {
        let docs = docs
            .iter()
            .enumerate()
            .map(|(i, (n, b))| Policy::from_yaml(&doc(n, b), &format!("p{i}.yaml")).unwrap())
            .collect();
        PolicySet::from_docs(docs).unwrap()
    }

    fn errors(p: &Policy) -> String {
        compile(p, "t.yaml", 1).unwrap_err().to_string()
    }

    #[test]
    fn path_patterns_encode_prefixes_and_exact_files() {
        assert_eq!(encode_path("/usr/bin/curl").unwrap(), b"/usr/bin/curl\0");
        assert_eq!(encode_path("/etc/").unwrap(), b"/etc/");
        assert_eq!(encode_path("/tmp/*").unwrap(), b"/tmp/");
        assert!(encode_path("relative/path").is_err());
        assert!(encode_path("/a/../b").is_err());
        assert!(encode_path("/a/./b").is_err());
        assert!(encode_path("/a*b").is_err());
        // 249 characters plus the NUL fill the 250 bytes a pattern may use.
        assert!(encode_path(&format!("/{}", "x".repeat(248))).is_ok());
        assert!(encode_path(&format!("/{}", "x".repeat(249))).is_err());
    }

    #[test]
    fn zero_trust_defaults_and_syscall_allow_list() {
        let c = compile(
            &one("  rules:\n    - {op: syscall, action: allow, syscalls: [read, write, exit_group]}\n"),
            "t",
            7,
        )
        .unwrap();
        assert_eq!(c.record.generation, 7);
        assert!(CLASSES.iter().all(|(_, class)| c.record.defaults[*class as usize] == verdict::DENY));
        assert_eq!(c.record.syscall_denied(0), None, "read is allowed");
        assert_eq!(c.record.syscall_denied(1), None, "write is allowed");
        assert!(c.record.syscall_denied(2).is_some(), "open is denied by default");
        assert!(c.record.syscall_denied(511).is_some());
        assert_ne!(
            c.record.flags & flags::HAS_PATH_RULES,
            0,
            "deny defaults for exec/files need the path hooks"
        );
        assert!(c.default_sources.iter().all(Option::is_none));
    }

    #[test]
    fn net_rules_put_denies_and_narrow_prefixes_first() {
        let c = compile(
            &one("  defaults: {net.connect: allow}\n  rules:\n    - {name: a, op: net.connect, action: allow, cidrs: [10.0.0.0/8]}\n    - {name: b, op: net.connect, action: deny, cidrs: [10.0.0.0/16]}\n    - {name: c, op: net.connect, action: deny, cidrs: [10.1.2.3/32]}\n"),
            "t",
            1,
        )
        .unwrap();
        let ids: Vec<u32> = c.record.net[..c.record.net_count as usize].iter().map(|r| r.rule_id).collect();
        assert_eq!(ids, vec![rule_id::FIRST + 2, rule_id::FIRST + 1, rule_id::FIRST]);
    }

    #[test]
    fn every_error_names_file_line_and_column() {
        let p = one(
            "  rules:\n    - {name: x, op: syscall, action: deny, syscalls: [no_such]}\n    - {name: y, op: net.connect, action: deny, cidrs: [10.0.0.0/40]}\n    - {name: z, op: fly, action: deny, paths: [/x]}\n    - {name: w, op: exec, action: deny}\n",
        );
        let e = errors(&p);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 4, "{e}");
        assert!(lines[0].starts_with("t.yaml:6:") && lines[0].contains("unknown syscall \"no_such\""), "{e}");
        assert!(lines[1].starts_with("t.yaml:7:") && lines[1].contains("bad prefix length"), "{e}");
        assert!(lines[2].starts_with("t.yaml:8:") && lines[2].contains("unknown op \"fly\""), "{e}");
        assert!(lines[3].starts_with("t.yaml:9:") && lines[3].contains("need `paths`"), "{e}");
    }

    #[test]
    fn contradictions_are_errors_naming_both_places() {
        let p = one(
            "  rules:\n    - {name: a, op: exec, action: deny, paths: [/bin/sh]}\n    - {name: b, op: exec, action: allow, paths: [/bin/sh]}\n",
        );
        let e = errors(&p);
        assert!(e.starts_with("t.yaml:7:") && e.contains("contradicts rule \"a\" at t.yaml:6"), "{e}");
        let p = one(
            "  rules:\n    - {name: a, op: net.bind, action: deny, cidrs: [0.0.0.0/0], ports: 22}\n    - {name: b, op: net.bind, action: allow, cidrs: [0.0.0.0/0], ports: '22'}\n",
        );
        assert!(errors(&p).contains("contradicts rule \"a\""));
        let p = one(
            "  rules:\n    - {name: a, op: syscall, action: deny, syscalls: [ptrace]}\n    - {name: b, op: syscall, action: allow, syscalls: [ptrace]}\n",
        );
        assert!(errors(&p).contains("both allowed and denied"));
    }

    #[test]
    fn composition_deny_wins_and_unmentioned_classes_are_denied() {
        let s = set(&[
            ("base", "  defaults: {exec: allow, net.connect: allow}\n"),
            ("web", "  selector: {cgroups: [web/*]}\n  defaults: {net.connect: deny, file.read: allow}\n"),
        ]);
        let web = s.compile_for(&Workload::cgroup("web/nginx"), Tier::Unknown, 1).unwrap();
        assert_eq!(web.policy_name, "base+web");
        assert_eq!(web.record.defaults[op::NET_CONNECT as usize], verdict::DENY);
        assert_eq!(web.record.defaults[op::EXEC as usize], verdict::ALLOW);
        assert_eq!(web.record.defaults[op::FILE_READ as usize], verdict::ALLOW);
        assert_eq!(web.record.defaults[op::FILE_WRITE as usize], verdict::DENY);
        let other = s.compile_for(&Workload::cgroup("batch/job"), Tier::Unknown, 1).unwrap();
        assert_eq!(other.policy_name, "base");
        assert_eq!(other.record.defaults[op::NET_CONNECT as usize], verdict::ALLOW);
    }

    #[test]
    fn tiers_and_escalation() {
        let s = set(&[(
            "svc",
            "  trust: verified\n  defaults: {net.connect: allow, exec: allow}\n  rules:\n    - {name: admin-port, op: net.connect, action: allow, cidrs: [10.0.0.1], ports: 22, tiers: [trusted]}\n  escalation:\n    suspicious:\n      rules:\n        - {name: no-tmp-exec, op: exec, action: deny, paths: [/tmp/]}\n      defaults: {net.connect: deny}\n    compromised:\n      quarantine: true\n",
        )]);
        let w = Workload::any();
        assert_eq!(s.initial_tier(&w).unwrap(), Tier::Verified);
        let trusted = s.compile_for(&w, Tier::Trusted, 1).unwrap();
        assert_eq!(trusted.record.net_count, 1);
        let verified = s.compile_for(&w, Tier::Verified, 1).unwrap();
        assert_eq!(verified.record.net_count, 0);
        assert!(verified.paths.is_empty());
        let suspicious = s.compile_for(&w, Tier::Suspicious, 1).unwrap();
        assert_eq!(suspicious.record.defaults[op::NET_CONNECT as usize], verdict::DENY);
        // The escalation's exec deny (and the built-in deny of anonymous
        // executables where exec is allowed by default).
        let by_path = suspicious.paths.iter().filter(|e| e.pattern.first() == Some(&b'/')).count();
        assert_eq!(by_path, 1);
        assert!(!suspicious.quarantine);
        let compromised = s.compile_for(&w, Tier::Compromised, 1).unwrap();
        assert!(compromised.quarantine && compromised.freeze);
        // The redzone: no exec, no network, no writes, whatever the rules said.
        for c in [op::EXEC, op::FILE_WRITE, op::NET_CONNECT, op::NET_BIND, op::NET_SENDTO] {
            assert_eq!(compromised.record.defaults[c as usize], verdict::DENY, "class {c}");
        }
        assert_eq!(compromised.record.net_count, 0);
        assert!(compromised.paths.is_empty(), "the exec deny rule is subsumed by the default");
        assert_ne!(compromised.record.flags & flags::HAS_PATH_RULES, 0);
    }

    #[test]
    fn quarantine_redzone_keeps_running_and_bad_values_are_named() {
        let spec = |q: &str| {
            format!(
                "  defaults: {{exec: allow, file.read: allow}}\n  escalation:\n    compromised:\n      quarantine: {q}\n"
            )
        };
        let s = set(&[("svc", &spec("redzone"))]);
        let c = s.compile_for(&Workload::any(), Tier::Compromised, 1).unwrap();
        assert!(c.quarantine && !c.freeze);
        assert_eq!(c.record.defaults[op::EXEC as usize], verdict::DENY);
        assert_eq!(c.record.defaults[op::FILE_READ as usize], verdict::ALLOW, "reads stay as compiled");
        let s = set(&[("svc", &spec("maybe"))]);
        let e = s.compile_for(&Workload::any(), Tier::Compromised, 1).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("expected freeze, redzone, true or false, found \"maybe\""), "{text}");
    }

    #[test]
    fn capsule_gate_composes_with_deny_winning() {
        let s = set(&[
            ("a", "  capsule: {env: [LANG], clock: allow, random: allow}\n"),
            ("b", "  capsule: {env: [HOME], random: deny}\n"),
        ]);
        let c = s.compile_for(&Workload::any(), Tier::Unknown, 1).unwrap();
        assert_eq!(c.capsule.env.iter().map(String::as_str).collect::<Vec<_>>(), vec!["HOME", "LANG"]);
        assert!(c.capsule.clock);
        assert!(!c.capsule.random, "a deny anywhere wins");
        let none = set(&[("c", "  defaults: {}\n")]).compile_for(&Workload::any(), Tier::Unknown, 1).unwrap();
        assert_eq!(none.capsule, CapsuleGate::default(), "zero trust: nothing unless allowed");
    }

    #[test]
    fn set_level_clashes() {
        let docs = vec![
            Policy::from_yaml(
                &doc(
                    "a",
                    "  trust: trusted\n  rules:\n    - {name: r, op: exec, action: deny, paths: [/x]}\n",
                ),
                "a.yaml",
            )
            .unwrap(),
            Policy::from_yaml(
                &doc(
                    "a",
                    "  trust: suspicious\n  rules:\n    - {name: r, op: exec, action: deny, paths: [/y]}\n",
                ),
                "b.yaml",
            )
            .unwrap(),
        ];
        let e = PolicySet::from_docs(docs.clone()).unwrap_err().to_string();
        assert!(
            e.contains("b.yaml:3:") && e.contains("policy name \"a\" is already used at a.yaml:3"),
            "{e}"
        );
        assert!(e.contains("rule name \"r\" is already used at a.yaml:7"), "{e}");
        let s = PolicySet { docs };
        let tier_err = s.initial_tier(&Workload::any()).unwrap_err().to_string();
        assert!(tier_err.contains("conflicts with trust trusted"), "{tier_err}");
    }

    #[test]
    fn shipped_policies_parse_and_check_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = PolicySet::load(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.docs.len() >= 4, "expected the shipped profiles in {}", dir.display());
        let findings = set.check();
        assert!(findings.is_empty(), "{}", Diagnostics(findings));
        for d in &set.docs {
            compile(d, "", 1).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    const OPEN: &str = "  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}\n  rules:\n";

    fn slot_of(name: &str) -> usize {
        syscalls::rule_slots(&format!("x86_64:{name}")).unwrap()[0]
    }

    #[test]
    fn a_mount_deny_covers_the_new_mount_api_unless_a_rule_names_a_call() {
        let c = compile(
            &one(&format!(
                "{OPEN}    - {{name: no-mount, op: syscall, action: deny, syscalls: [mount]}}\n    - {{name: may-pick, op: syscall, action: allow, syscalls: [fspick]}}\n"
            )),
            "t.yaml",
            1,
        )
        .unwrap();
        let r = &c.record;
        let id = c.rules.iter().find(|r| r.name == "no-mount").unwrap().id;
        for call in ["fsopen", "fsconfig", "fsmount", "open_tree", "move_mount", "mount_setattr"] {
            for slot in syscalls::rule_slots(call).unwrap() {
                assert_eq!(r.syscall_denied(slot), Some((false, id)), "{call} slot {slot}");
            }
        }
        assert_eq!(r.syscall_denied(slot_of("fspick")), None, "a call a rule names keeps its rule");
        // Without a mount deny, nothing is added.
        let c = compile(
            &one(&format!("{OPEN}    - {{name: r, op: syscall, action: deny, syscalls: [unshare]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(c.record.syscall_denied(slot_of("fsopen")), None);
    }

    #[test]
    fn path_rules_guard_mounts_chroot_and_user_namespaces() {
        let all_guards =
            flags::GUARD_MOUNT | flags::GUARD_PIVOT_ROOT | flags::GUARD_CHROOT | flags::GUARD_USERNS;
        let read = "    - {name: no-secret, op: file.read, action: deny, paths: [/srv/secret]}\n";
        let c = compile(&one(&format!("{OPEN}{read}")), "t.yaml", 1).unwrap();
        assert_eq!(c.record.flags & all_guards, all_guards);
        assert_eq!(c.record.flags & flags::HAS_SYSCALL_RULES, 0, "the guard is no syscall rule");
        // No path rules, no guard.
        let c = compile(
            &one(&format!("{OPEN}    - {{name: r, op: syscall, action: deny, syscalls: [bpf]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(c.record.flags & all_guards, 0);
        // A default that is not allow is a path rule too.
        let c = compile(&one("  defaults: {exec: deny, syscall: allow}\n"), "t.yaml", 1).unwrap();
        assert_eq!(c.record.flags & all_guards, all_guards);
        // Allowing a call by name lifts its guard, and only its own.
        let c = compile(
            &one(&format!(
                "{OPEN}{read}    - {{name: may, op: syscall, action: allow, syscalls: [mount, unshare]}}\n"
            )),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(c.record.flags & all_guards, flags::GUARD_PIVOT_ROOT | flags::GUARD_CHROOT);
        // chroot cannot be allowed together with path rules.
        let e = errors(&one(&format!(
            "{OPEN}{read}    - name: may-chroot\n      op: syscall\n      action: allow\n      syscalls: [chroot]\n"
        )));
        assert!(e.contains("t.yaml:11:18:") && e.contains("rule \"may-chroot\" allows chroot"), "{e}");
    }

    #[test]
    fn net_unix_rules_are_path_rules_of_their_own_class() {
        let c = compile(
            &one(&format!("{OPEN}    - {{name: no-docker, op: net.unix, action: deny, paths: [/run/docker.sock, /run/x/]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_ne!(c.record.flags & flags::UNIX_RULES, 0);
        assert_eq!(
            c.record.flags & flags::HAS_PATH_RULES,
            0,
            "no file rule, so no file hook work and no path guard"
        );
        let unix: Vec<_> =
            c.paths.iter().filter(|e| e.op == op::NET_UNIX).map(|e| e.pattern.clone()).collect();
        assert_eq!(unix, [b"/run/docker.sock\0".to_vec(), b"/run/x/".to_vec()]);
        // Not mentioned: denied (zero trust), so decided.
        let c = compile(&one("  defaults: {exec: allow}\n"), "t.yaml", 1).unwrap();
        assert_eq!(c.record.defaults[op::NET_UNIX as usize], verdict::DENY);
        assert_ne!(c.record.flags & flags::UNIX_RULES, 0);
        // Allowed without rules: the hooks have nothing to do.
        let c = compile(&one(OPEN), "t.yaml", 1).unwrap();
        assert_eq!(c.record.flags & flags::UNIX_RULES, 0);
        // `paths` is required, and only paths.
        let e = errors(&one(&format!("{OPEN}    - {{name: u, op: net.unix, action: deny}}\n")));
        assert!(e.contains("need `paths`"), "{e}");
        let e = errors(&one(&format!(
            "{OPEN}    - {{name: u, op: net.unix, action: deny, paths: [/a], ports: 80}}\n"
        )));
        assert!(e.contains("only apply to net rules"), "{e}");
    }

    #[test]
    fn anonymous_executables_are_an_exec_target_of_their_own() {
        let anon = |c: &CompiledRecord| {
            c.paths
                .iter()
                .find(|e| e.op == op::EXEC && e.pattern == forge_common::ANON_KEY_PATH)
                .map(|e| (e.rule.action, e.rule.mode, e.rule.rule_id))
        };
        // A deny-list of programs: a memfd copy of one must not run.
        let c = compile(
            &one(&format!("{OPEN}    - {{name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(anon(&c), Some((verdict::DENY, mode::ENFORCE, rule_id::ANONYMOUS_EXEC)));
        // Monitored when every exec deny is.
        let c = compile(
            &one(&format!("{OPEN}    - {{name: no-curl, op: exec, action: deny, mode: monitor, paths: [/usr/bin/curl]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(anon(&c).map(|a| a.1), Some(mode::MONITOR));
        // A rule naming <anonymous> decides.
        let c = compile(
            &one(&format!(
                "{OPEN}    - {{name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}}\n    - {{name: runc, op: exec, action: allow, paths: [\"<anonymous>\"]}}\n"
            )),
            "t.yaml",
            1,
        )
        .unwrap();
        let runc = c.rules.iter().find(|r| r.name == "runc").unwrap().id;
        assert_eq!(anon(&c), Some((verdict::ALLOW, mode::ENFORCE, runc)));
        // No exec deny at all: nothing to bypass, no entry.
        let c = compile(
            &one(&format!("{OPEN}    - {{name: r, op: file.read, action: deny, paths: [/etc/shadow]}}\n")),
            "t.yaml",
            1,
        )
        .unwrap();
        assert_eq!(anon(&c), None);
        // Only exec rules may name it.
        let e = errors(&one(&format!(
            "{OPEN}    - {{name: r, op: file.read, action: deny, paths: [\"<anonymous>\"]}}\n"
        )));
        assert!(e.contains("only exec rules may use it"), "{e}");
    }
}
