//! Compiles a [`Policy`] into the kernel's per-cgroup record and path rules.
//!
//! Precedence in the kernel is "first matching rule wins" for network rules
//! and "longest path prefix wins" for paths; the compiler orders network
//! rules so that denies come before allows (an explicit deny wins) and more
//! specific CIDRs before broader ones.

use forge_common::{
    MAX_NET_RULES, PATH_KEY_PATH_LEN, PathRule, PolicyRecord, flags, mode, op, rule_id, verdict,
};
use serde::Serialize;

use super::{
    model::{ActionSpec, ModeSpec, Policy, PortSpec, Rule},
    net::{Cidr, NetError, net_rule, parse_ports},
    syscalls,
};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{source_name}: rule {rule:?}: {message}")]
    Rule { source_name: String, rule: String, message: String },
    #[error("{source_name}: defaults: {message}")]
    Defaults { source_name: String, message: String },
    #[error("{source_name}: {count} network rules; the kernel record holds at most {MAX_NET_RULES}")]
    TooManyNetRules { source_name: String, count: usize },
}

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    pub id: u32,
    pub name: String,
    pub source: String,
}

/// Everything the map writer needs to govern one cgroup.
#[derive(Clone, Debug)]
pub struct CompiledRecord {
    pub policy_name: String,
    pub record: PolicyRecord,
    pub paths: Vec<PathEntry>,
    pub rules: Vec<RuleInfo>,
}

impl CompiledRecord {
    /// The rule behind `id`, if this record defined it.
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.iter().find(|r| r.id == id)
    }
}

const CLASSES: [(&str, u8); 7] = [
    ("exec", op::EXEC),
    ("file.read", op::FILE_READ),
    ("file.write", op::FILE_WRITE),
    ("net.connect", op::NET_CONNECT),
    ("net.bind", op::NET_BIND),
    ("net.sendto", op::NET_SENDTO),
    ("syscall", op::SYSCALL),
];

fn class(name: &str) -> Option<u8> {
    CLASSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

fn class_list() -> String {
    CLASSES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

const fn action(a: ActionSpec) -> u8 {
    match a {
        ActionSpec::Allow => verdict::ALLOW,
        ActionSpec::Deny => verdict::DENY,
    }
}

const fn mode_of(m: ModeSpec) -> u8 {
    match m {
        ModeSpec::Enforce => mode::ENFORCE,
        ModeSpec::Monitor => mode::MONITOR,
    }
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
    let mut bytes = if let Some(dir) = p.strip_suffix("/*") {
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
    bytes.shrink_to_fit();
    Ok(bytes)
}

/// Compiles `policy` (read from `source_name`) into a record of `generation`.
pub fn compile(policy: &Policy, source_name: &str, generation: u64) -> Result<CompiledRecord, CompileError> {
    let spec = &policy.spec;
    let mut record = PolicyRecord::allow_all(generation);
    record.mode = mode_of(spec.mode);
    // Zero trust: every class defaults to deny unless the policy says otherwise.
    record.defaults = [verdict::DENY; op::COUNT];
    record.defaults[op::PROTECT as usize] = verdict::ALLOW;
    for (name, a) in &spec.defaults {
        let c = class(name).ok_or_else(|| CompileError::Defaults {
            source_name: source_name.to_string(),
            message: format!("unknown operation class {name:?}; expected one of {}", class_list()),
        })?;
        record.defaults[c as usize] = action(*a);
    }
    if spec.self_protect {
        record.flags |= flags::SELF_PROTECT;
    }

    let mut rules = Vec::new();
    let mut paths = Vec::new();
    let mut net: Vec<(forge_common::NetRule, u32)> = Vec::new();
    let syscall_default_deny = record.defaults[op::SYSCALL as usize] == verdict::DENY;
    let mut syscall_allows: Vec<usize> = Vec::new();

    for (i, rule) in spec.rules.iter().enumerate() {
        let id = rule_id::FIRST + i as u32;
        let name = rule.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
        let err = |message: String| CompileError::Rule {
            source_name: source_name.to_string(),
            rule: name.clone(),
            message,
        };
        let a = action(rule.action);
        let m = rule.mode.map_or(record.mode, mode_of);
        rules.push(RuleInfo { id, name: name.clone(), source: source_name.to_string() });
        let mut classes = Vec::new();
        for op_name in rule.op.items() {
            classes.push(
                class(op_name).ok_or_else(|| {
                    err(format!("unknown op {op_name:?}; expected one of {}", class_list()))
                })?,
            );
        }
        check_fields(rule, &classes).map_err(&err)?;
        for &c in &classes {
            match c {
                op::EXEC | op::FILE_READ | op::FILE_WRITE => {
                    for p in &rule.paths {
                        let pattern = encode_path(p).map_err(&err)?;
                        if let Some(prev) =
                            paths.iter().find(|e: &&PathEntry| e.op == c && e.pattern == pattern)
                        {
                            if prev.rule.action != a {
                                return Err(err(format!(
                                    "path {p:?} is both allowed and denied for the same operation (rule id {})",
                                    prev.rule.rule_id
                                )));
                            }
                            continue;
                        }
                        paths.push(PathEntry {
                            op: c,
                            pattern,
                            rule: PathRuleInfo { action: a, mode: m, rule_id: id },
                        });
                    }
                    record.flags |= flags::HAS_PATH_RULES;
                }
                op::NET_CONNECT | op::NET_BIND | op::NET_SENDTO => {
                    let ports = match &rule.ports {
                        None => (0, u16::MAX),
                        Some(PortSpec::Number(p)) => (*p, *p),
                        Some(PortSpec::Text(t)) => {
                            parse_ports(t).map_err(|e: NetError| err(e.to_string()))?
                        }
                    };
                    if rule.cidrs.is_empty() {
                        net.push((net_rule(None, ports, 1 << c, a, m, id), 0));
                    }
                    for cidr in &rule.cidrs {
                        let parsed = Cidr::parse(cidr).map_err(|e| err(e.to_string()))?;
                        let prefix = parsed.mask.iter().map(|w| w.count_ones()).sum::<u32>();
                        net.push((net_rule(Some(parsed), ports, 1 << c, a, m, id), prefix));
                    }
                }
                op::SYSCALL => {
                    for s in &rule.syscalls {
                        let nr = syscalls::number(s)
                            .ok_or_else(|| err(format!("unknown syscall {s:?} on this architecture")))?
                            as usize;
                        if a == verdict::DENY {
                            record.deny_syscall(nr, id, m == mode::MONITOR);
                        } else {
                            syscall_allows.push(nr);
                        }
                    }
                }
                _ => unreachable!("class() only returns listed classes"),
            }
        }
    }

    if syscall_default_deny {
        let default_rule = record.default_rule[op::SYSCALL as usize];
        for nr in 0..forge_common::MAX_SYSCALLS {
            if !syscall_allows.contains(&nr) && record.syscall_denied(nr).is_none() {
                record.deny_syscall(nr, default_rule, record.mode == mode::MONITOR);
            }
        }
    }

    if net.len() > MAX_NET_RULES {
        return Err(CompileError::TooManyNetRules { source_name: source_name.to_string(), count: net.len() });
    }
    // Denies first, then the most specific prefix, then the narrowest port range.
    net.sort_by_key(|(r, prefix)| {
        (r.action != verdict::DENY, std::cmp::Reverse(*prefix), u32::from(r.port_hi - r.port_lo))
    });
    record.net_count = net.len() as u32;
    for (slot, (r, _)) in record.net.iter_mut().zip(net) {
        *slot = r;
    }
    if record.defaults[op::EXEC as usize] != verdict::ALLOW
        || record.defaults[op::FILE_READ as usize] != verdict::ALLOW
        || record.defaults[op::FILE_WRITE as usize] != verdict::ALLOW
    {
        record.flags |= flags::HAS_PATH_RULES;
    }
    Ok(CompiledRecord { policy_name: policy.metadata.name.clone(), record, paths, rules })
}

fn check_fields(rule: &Rule, classes: &[u8]) -> Result<(), String> {
    let path_ops = classes.iter().any(|c| matches!(*c, op::EXEC | op::FILE_READ | op::FILE_WRITE));
    let net_ops = classes.iter().any(|c| matches!(*c, op::NET_CONNECT | op::NET_BIND | op::NET_SENDTO));
    let sys_ops = classes.contains(&op::SYSCALL);
    if path_ops && rule.paths.is_empty() {
        return Err("exec/file rules need `paths`".into());
    }
    if !path_ops && !rule.paths.is_empty() {
        return Err("`paths` only applies to exec and file rules".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn policy(rules: &str, defaults: &str) -> Policy {
        let text = format!(
            "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: t}}\nspec:\n  defaults: {defaults}\n  rules:\n{rules}"
        );
        Policy::from_yaml(&text, "t.yaml").expect("valid policy")
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
        let p = policy("    - {op: syscall, action: allow, syscalls: [read, write, exit_group]}\n", "{}");
        let c = compile(&p, "t.yaml", 7).unwrap();
        assert_eq!(c.record.generation, 7);
        assert!(c.record.defaults[..op::COUNT - 1].iter().all(|d| *d == verdict::DENY));
        assert_eq!(c.record.syscall_denied(0), None, "read is allowed");
        assert_eq!(c.record.syscall_denied(1), None, "write is allowed");
        assert!(c.record.syscall_denied(2).is_some(), "open is denied by default");
        assert!(c.record.syscall_denied(511).is_some());
        assert_ne!(
            c.record.flags & flags::HAS_PATH_RULES,
            0,
            "deny defaults for exec/files need the path hooks"
        );
    }

    #[test]
    fn net_rules_put_denies_and_narrow_prefixes_first() {
        let p = policy(
            "    - {name: a, op: net.connect, action: allow, cidrs: [10.0.0.0/8]}\n    - {name: b, op: net.connect, action: deny, cidrs: [10.0.0.0/8]}\n    - {name: c, op: net.connect, action: deny, cidrs: [10.1.2.3/32]}\n",
            "{net.connect: allow}",
        );
        let c = compile(&p, "t.yaml", 1).unwrap();
        let ids: Vec<u32> = c.record.net[..c.record.net_count as usize].iter().map(|r| r.rule_id).collect();
        assert_eq!(ids, vec![rule_id::FIRST + 2, rule_id::FIRST + 1, rule_id::FIRST]);
    }

    #[test]
    fn errors_name_the_rule_and_what_was_expected() {
        for (rules, needle) in [
            (
                "    - {name: x, op: syscall, action: deny, syscalls: [no_such]}\n",
                "unknown syscall \"no_such\"",
            ),
            ("    - {name: x, op: net.connect, action: deny, cidrs: [10.0.0.0/40]}\n", "bad prefix length"),
            ("    - {name: x, op: fly, action: deny, paths: [/x]}\n", "unknown op \"fly\""),
            ("    - {name: x, op: exec, action: deny}\n", "need `paths`"),
            (
                "    - {name: x, op: exec, action: deny, paths: [/a]}\n    - {name: y, op: exec, action: allow, paths: [/a]}\n",
                "both allowed and denied",
            ),
        ] {
            let err = compile(&policy(rules, "{}"), "t.yaml", 1).unwrap_err().to_string();
            assert!(err.starts_with("t.yaml: rule"), "{err}");
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let err =
            Policy::from_yaml("apiVersion: x\nkind: Policy\nmetadata: {name: a}\nspec: {}\n", "bad.yaml")
                .unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml: apiVersion"), "{err}");
        let err = Policy::from_yaml("apiVersion: [\n", "broken.yaml").unwrap_err().to_string();
        assert!(err.starts_with("broken.yaml:"), "{err}");
    }

    #[test]
    fn shipped_policies_parse_and_compile() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.display().to_string();
                let p = Policy::from_yaml(&text, &name).unwrap_or_else(|e| panic!("{e}"));
                compile(&p, &name, 1).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no policies found in {}", dir.display());
    }
}
