//! Loading the kernel programs (or adopting a pinned set), attaching the
//! global hooks, and opening the maps.
//!
//! A fresh load attaches and pins everything, then drops its handles and
//! opens the pins like any later agent would: one code path for "just
//! loaded" and "adopted after a restart". Adopting holds a descriptor on
//! every global link ([`HeldLink`]) and attaches again, from the pinned
//! program, any link whose pin is missing: a link is never silently dropped.
//!
//! BPF LSM counts only where the kernel runs it: `bpf` must be in the active
//! LSM list ([`super::lsm_list`]); elsewhere the LSM programs are not
//! attached and the tracepoint fallbacks stay on.

use std::{
    fmt::Write as _,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, ProgramError, RawTracePoint,
        cgroup_sock::CgroupSockAttachType, cgroup_sock_addr::CgroupSockAddrAttachType, links::FdLink,
    },
};
use forge_common::{Config, CounterKey, Governor, LAYOUT_VERSION, PathKey, PathRule, PolicyRecord, map_name};
use serde::Serialize;

use super::{
    btf::{Btf, BtfError, KernelOffsets},
    helper_probe, kfunc,
    links::{HeldLink, LinkState},
    lsm_list,
    object::{
        BTF_TRACEPOINTS, CGROUP_PROGRAMS, LSM_OPTIONAL_PROGRAMS, LSM_PATH_PROGRAMS, LSM_PROGRAMS, OBJECT,
        SOCK_CREATE, SYS_ENTER,
    },
    pins::{Pins, ensure_bpffs},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("kernel BTF for aya: {0}")]
    AyaBtf(String),
    #[error("preparing bpffs pins at {path}: {source}")]
    Pins { path: PathBuf, source: io::Error },
    #[error("parsing the embedded eBPF object: {0}")]
    Object(String),
    #[error("program {name}: {message}")]
    Program { name: String, message: String },
    #[error("map {name} at {path}: {message}")]
    Map { name: String, path: PathBuf, message: String },
    #[error("no backend could be loaded: {0}")]
    NothingLoaded(String),
    #[error(
        "event ring size of {bytes} bytes is not a power-of-two multiple of the {page_size}-byte page size"
    )]
    RingBytes { bytes: u32, page_size: u64 },
    #[error(
        "the pinned state under {root} was made by another version of forge ({found}; this one writes map          layout {LAYOUT_VERSION}): it cannot be adopted. `forge reset --pin-root {root}` removes it          (enforcement ends until an agent starts again)"
    )]
    Layout { root: PathBuf, found: String },
    #[error("the embedded eBPF object: {0}")]
    Kfunc(#[from] kfunc::KfuncError),
    #[error("link {name} at {path}: {message}")]
    Link { name: String, path: PathBuf, message: String },
}

/// Which backends to use. `None` = whatever this kernel accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub lsm: Option<bool>,
    pub cgroup: Option<bool>,
    pub tracepoint: Option<bool>,
}

/// What one backend's load attempt found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: &'static str,
    pub available: bool,
    /// The kernel's exact error when not available (first failing program).
    pub error: Option<String>,
}

/// Backends in force for this agent.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Active {
    pub lsm: bool,
    /// The LSM exec and file-open hooks (kernel-resolved paths); needs `lsm`.
    pub lsm_paths: bool,
    /// The `userns_create` hook (kernels from 6.1), which refuses a user
    /// namespace made by a denied `unshare`, `clone` or `clone3`; needs `lsm`.
    pub lsm_userns: bool,
    pub cgroup: bool,
    pub tracepoint: bool,
}

/// Typed handles on the pinned maps.
pub struct Maps {
    pub cgroups: HashMap<MapData, u64, Governor>,
    pub policies: Array<MapData, PolicyRecord>,
    pub paths: LpmTrie<MapData, PathKey, PathRule>,
    pub events: Option<RingBuf<MapData>>,
    pub drops: PerCpuArray<MapData, u64>,
    pub counters: PerCpuHashMap<MapData, CounterKey, u64>,
    pub config: Array<MapData, Config>,
    pub tasks: HashMap<MapData, u32, u64>,
    pub doomed: HashMap<MapData, u32, u8>,
}

/// Everything the map writer needs from the kernel side.
pub struct Handles {
    pub pins: Pins,
    pub maps: Maps,
    pub cgroup_progs: Vec<(&'static str, CgroupProgram)>,
    pub sys_enter: Option<RawTracePoint>,
    /// The global links (LSM hooks, tracepoints), held open.
    pub links: Vec<HeldLink>,
    /// The `sys_enter` link while it is attached.
    pub sys_enter_link: Option<HeldLink>,
    /// Global links that were missing when this agent adopted the pins and
    /// were attached again.
    pub reattached: Vec<String>,
    /// Whether a hook can kill a task other than the current one here (the
    /// `bpf_send_signal_task` kfunc, kernels from 6.13): an escaped child is
    /// killed before it runs. Without it the caller is killed and the agent
    /// kills the child when it reads the event.
    pub signal_task: bool,
    pub active: Active,
    /// True when an existing pinned state was adopted instead of loaded.
    pub adopted: bool,
    /// Per-backend results of this start's load (empty when adopted).
    pub statuses: Vec<BackendStatus>,
    /// Size in bytes of the event ring buffer in force (as the kernel reports
    /// it for the pinned map).
    pub ring_bytes: u32,
}

/// The size of a memory page here.
pub fn page_size() -> u64 {
    // SAFETY: sysconf(3) only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// Checks an event ring size: the kernel wants a power-of-two multiple of
/// the page size.
pub fn check_ring_bytes(bytes: u32, page_size: u64) -> Result<(), LoadError> {
    let b = u64::from(bytes);
    if page_size > 0 && b >= page_size && b % page_size == 0 && (b / page_size).is_power_of_two() {
        Ok(())
    } else {
        Err(LoadError::RingBytes { bytes, page_size })
    }
}

/// Loads or adopts ForgeOne's kernel state under `pins`. `ring_bytes` sizes
/// the event ring buffer of a fresh load (default
/// [`forge_common::capacity::EVENT_RING_BYTES`]); an adopted state keeps the
/// size it was loaded with.
pub fn start(pins: Pins, want: Want, ring_bytes: Option<u32>) -> Result<Handles, LoadError> {
    if let Some(bytes) = ring_bytes {
        check_ring_bytes(bytes, page_size())?;
    }
    ensure_bpffs(pins.root())
        .map_err(|source| LoadError::Pins { path: pins.root().to_path_buf(), source })?;
    if pins.map(map_name::CONFIG).exists() {
        let mut h = adopt(pins)?;
        h.adopted = true;
        match ring_bytes {
            Some(asked) if asked != h.ring_bytes => tracing::warn!(
                root = %h.pins.root().display(),
                ring_bytes = h.ring_bytes,
                asked,
                "adopted pinned ForgeOne state; its event ring keeps its size (a new size takes effect after the pins are removed)"
            ),
            _ => tracing::info!(
                root = %h.pins.root().display(),
                ring_bytes = h.ring_bytes,
                "adopted pinned ForgeOne state"
            ),
        }
        return Ok(h);
    }
    // A partial state (an agent died mid-load) is cleared before loading.
    pins.remove_all().map_err(|source| LoadError::Pins { path: pins.root().to_path_buf(), source })?;
    pins.create_dirs().map_err(|source| LoadError::Pins { path: pins.root().to_path_buf(), source })?;
    let statuses = match load_and_pin(&pins, want, ring_bytes) {
        Ok(s) => s,
        Err(e) => {
            let _ = pins.remove_all();
            return Err(e);
        }
    };
    let mut h = adopt(pins)?;
    h.statuses = statuses;
    tracing::info!(ring_bytes = h.ring_bytes, "event ring buffer");
    Ok(h)
}

/// Loads every backend of the object into the kernel without attaching or
/// pinning anything, and reports what the kernel accepted: the probe behind
/// `forge doctor`.
pub fn probe() -> Result<Vec<BackendStatus>, LoadError> {
    probe_with_tags().map(|(statuses, _)| statuses)
}

/// Like [`probe`], and the kernel tag of every program that loaded: what
/// the embedded object's programs look like on this kernel (for `forge
/// doctor` to compare with the pinned ones).
pub fn probe_with_tags() -> Result<(Vec<BackendStatus>, ProgramTags), LoadError> {
    let mut ebpf = load_object(None)?;
    let aya_btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::AyaBtf(e.to_string()))?;
    let mut out = Vec::new();
    let lsm = load_lsm(&mut ebpf, &aya_btf, &LSM_PROGRAMS)
        .and_then(|()| load_lsm(&mut ebpf, &aya_btf, &optional_lsm_here()))
        .and_then(|()| lsm_inactive());
    let paths = match &lsm {
        Ok(()) => load_lsm(&mut ebpf, &aya_btf, &LSM_PATH_PROGRAMS),
        Err(_) => {
            Err(LoadError::Program { name: "lsm-paths".into(), message: "needs the lsm backend".into() })
        }
    };
    out.push(status("lsm", lsm));
    out.push(status("lsm-paths", paths));
    let cg = CGROUP_PROGRAMS.iter().try_for_each(|name| load_cgroup_program(&mut ebpf, name));
    out.push(status("cgroup", cg));
    let tp = BTF_TRACEPOINTS
        .iter()
        .try_for_each(|name| {
            let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
            p.load(name, &aya_btf).map_err(|e| fail(name, &e))
        })
        .and_then(|()| {
            let p: &mut RawTracePoint = program(&mut ebpf, SYS_ENTER)?;
            p.load().map_err(|e| fail(SYS_ENTER, &e))
        });
    out.push(status("tracepoint", tp));
    let mut tags = Vec::new();
    for name in program_names() {
        if let Some(Ok(info)) = ebpf.program(name).map(aya::programs::Program::info) {
            tags.push((name, info.tag()));
        }
    }
    Ok((out, tags))
}

/// Programs by name with their kernel tags.
pub type ProgramTags = Vec<(&'static str, u64)>;

/// Every program of the embedded object, by name.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    LSM_PROGRAMS
        .iter()
        .copied()
        .chain(LSM_OPTIONAL_PROGRAMS.iter().copied())
        .chain(LSM_PATH_PROGRAMS.iter().copied())
        .chain(CGROUP_PROGRAMS.iter().copied())
        .chain(BTF_TRACEPOINTS.iter().copied())
        .chain(std::iter::once(SYS_ENTER))
}

/// Loads (without attaching) the LSM programs `names`.
fn load_lsm(ebpf: &mut aya::Ebpf, btf: &aya::Btf, names: &[&str]) -> Result<(), LoadError> {
    names.iter().try_for_each(|name| {
        let p: &mut Lsm = program(ebpf, name)?;
        p.load(name, btf).map_err(|e| fail(name, &e))
    })
}

/// Whether the running kernel has LSM hook `name` (BPF LSM programs attach
/// to its `bpf_lsm_` stub).
pub fn kernel_has_lsm_hook(name: &str) -> bool {
    Btf::from_running_kernel().ok().and_then(|b| b.func_id(&format!("bpf_lsm_{name}"))).is_some()
}

/// The programs of [`LSM_OPTIONAL_PROGRAMS`] whose hook this kernel has
/// (the kernel's BTF read once per process, not at every load or probe).
fn optional_lsm_here() -> Vec<&'static str> {
    static HERE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    HERE.get_or_init(|| LSM_OPTIONAL_PROGRAMS.iter().copied().filter(|n| kernel_has_lsm_hook(n)).collect())
        .clone()
}

/// Loads, attaches and pins the LSM programs `names`; on failure removes
/// what it pinned.
fn attach_lsm(ebpf: &mut aya::Ebpf, btf: &aya::Btf, pins: &Pins, names: &[&str]) -> Result<(), LoadError> {
    let r = load_lsm(ebpf, btf, names).and_then(|()| {
        names.iter().try_for_each(|name| {
            let p: &mut Lsm = program(ebpf, name)?;
            let id = p.attach().map_err(|e| fail(name, &e))?;
            let link = FdLink::from(p.take_link(id).map_err(|e| fail(name, &e))?);
            link.pin(pins.link(name)).map_err(|e| pin_err(pins.link(name), &e))?;
            p.pin(pins.prog(name)).map_err(|e| pin_err(pins.prog(name), &e))
        })
    });
    if r.is_err() {
        for name in names {
            let _ = std::fs::remove_file(pins.link(name));
            let _ = std::fs::remove_file(pins.prog(name));
        }
    }
    r
}

/// Every link the pinned state under `pins` should hold, with its state as
/// the kernel reports it: the global links of each backend that was loaded,
/// `sys_enter` while a governed record has syscall rules, and the sock_addr
/// links of each governed cgroup at the top of its subtree.
pub fn link_states(pins: &Pins) -> Vec<LinkState> {
    let mut out = Vec::new();
    let mut global = |name: &str| out.push(LinkState::of(name, &pins.link(name)));
    if pins.prog(LSM_PROGRAMS[0]).exists() {
        LSM_PROGRAMS.iter().for_each(|n| global(n));
        LSM_OPTIONAL_PROGRAMS.iter().filter(|n| pins.prog(n).exists()).for_each(|n| global(n));
    }
    if pins.prog(LSM_PATH_PROGRAMS[0]).exists() {
        LSM_PATH_PROGRAMS.iter().for_each(|n| global(n));
    }
    if pins.prog(BTF_TRACEPOINTS[0]).exists() {
        BTF_TRACEPOINTS.iter().for_each(|n| global(n));
    }
    let Ok(cgroups) = typed::<HashMap<MapData, u64, Governor>>(pins, map_name::CGROUPS) else { return out };
    let Ok(policies) = typed::<Array<MapData, PolicyRecord>>(pins, map_name::POLICIES) else { return out };
    let entries: Vec<(u64, Governor)> = cgroups.iter().filter_map(Result::ok).collect();
    let syscalls = entries.iter().any(|(_, g)| {
        policies.get(&g.slot, 0).is_ok_and(|r| r.flags & forge_common::flags::HAS_SYSCALL_RULES != 0)
    });
    if syscalls || pins.link(SYS_ENTER).exists() {
        global(SYS_ENTER);
    }
    if pins.prog(CGROUP_PROGRAMS[0]).exists() {
        let paths: Vec<(u64, PathBuf)> = entries
            .iter()
            .filter_map(|(id, _)| crate::cgroup::Cgroup::open_by_id(*id).ok().map(|c| (*id, c.path)))
            .collect();
        for (id, path) in &paths {
            if super::writer::has_governed_ancestor(path, paths.iter().map(|(i, p)| (*i, p.as_path())), *id) {
                continue;
            }
            for name in CGROUP_PROGRAMS {
                let mut state = LinkState::of(name, &pins.cgroup_dir(*id).join(name));
                state.name = format!("{name} of {}", path.display());
                out.push(state);
            }
        }
    }
    out
}

/// `Err` (why) when BPF LSM would not run here although its programs load.
fn lsm_inactive() -> Result<(), LoadError> {
    lsm_list::bpf_active().map_err(|message| LoadError::Program { name: "lsm".into(), message })
}

/// Whether the running kernel has `bpf_send_signal_task`, and its BTF id.
fn signal_task_kfunc(btf: &Btf) -> Option<u32> {
    btf.func_id(forge_common::kfunc::SIGNAL_TASK)
}

/// The kernel tag of each pinned program under `pins` (`None`: not pinned
/// or unreadable).
pub fn pinned_tags(pins: &Pins) -> Vec<(&'static str, Option<u64>)> {
    program_names()
        .map(|name| (name, aya::programs::ProgramInfo::from_pin(pins.prog(name)).ok().map(|i| i.tag())))
        .collect()
}

fn status(backend: &'static str, r: Result<(), LoadError>) -> BackendStatus {
    match r {
        Ok(()) => BackendStatus { backend, available: true, error: None },
        Err(e) => BackendStatus { backend, available: false, error: Some(e.to_string()) },
    }
}

/// The embedded object as the agent loads it: the running kernel's BTF
/// offsets set, kfunc calls rewritten; no program loaded yet.
pub fn load_object(ring_bytes: Option<u32>) -> Result<aya::Ebpf, LoadError> {
    let btf = Btf::from_running_kernel()?;
    let offsets = KernelOffsets::from_btf(&btf)?;
    let globals = offsets.globals();
    let object = kfunc::patch(OBJECT, forge_common::kfunc::SIGNAL_TASK_CALL, signal_task_kfunc(&btf))?;
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    let ancestor_helper =
        u32::from(helper_probe::tracing_helper(helper_probe::GET_CURRENT_ANCESTOR_CGROUP_ID));
    loader.override_global("TRACING_ANCESTOR_HELPER", &ancestor_helper, true);
    // The hook lost its `attr` parameter in later kernels: its return value
    // sits after however many it has here.
    let perf_params = btf.func_params("bpf_lsm_perf_event_open").unwrap_or(2);
    loader.override_global("PERF_EVENT_OPEN_PARAMS", &perf_params, true);
    if let Some(bytes) = ring_bytes {
        // For a ring buffer, max_entries is its size in bytes.
        loader.map_max_entries(map_name::EVENTS, bytes);
    }
    loader.load(object.bytes()).map_err(|e| LoadError::Object(chain(&e)))
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| LoadError::Program {
        name: name.to_string(),
        message: "missing from the object".into(),
    })?;
    p.try_into().map_err(|e: ProgramError| fail(name, &e))
}

fn fail(name: &str, e: &dyn std::error::Error) -> LoadError {
    let message = chain(e);
    let message = match verifier_verdict(&message) {
        Some(verdict) => format!("{verdict}; {message}"),
        None => message,
    };
    LoadError::Program { name: name.to_string(), message }
}

/// The verifier's reason for refusing a program: the last line of its log
/// that is neither an instruction, a source line, a register state nor a
/// statistic (the log starts with notes that are not the reason, such as
/// "arg#0 type is not a struct").
fn verifier_verdict(message: &str) -> Option<&str> {
    let log = &message[message.find("Verifier output:")? + "Verifier output:".len()..];
    let noise = |l: &str| {
        l.is_empty()
            || l.starts_with(';')
            || l.starts_with("verification time")
            || l.starts_with("processed ")
            || l.starts_with("stack depth")
            || l.starts_with("last_idx")
            || l.starts_with("regs=")
            || l.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    log.lines().map(str::trim).rev().find(|l| !noise(l))
}

/// An error with its sources, e.g. "the BPF_PROG_LOAD syscall failed: Operation not permitted".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        cur = src.source();
    }
    // aya words an empty verifier log as "Verifier output: : <errno>".
    let s = s.replace("Verifier output: : ", "no verifier output: ");
    // Verifier logs can be long; the first lines and the last carry the cause
    // (FORGE_VERIFIER_LOG=full keeps them whole).
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() > 12 && std::env::var_os("FORGE_VERIFIER_LOG").is_none_or(|v| v != "full") {
        let mut short = lines[..6].join("\n");
        let _ =
            write!(short, "\n... ({} lines) ...\n{}", lines.len() - 10, lines[lines.len() - 4..].join("\n"));
        return short;
    }
    s
}

fn pin_err(path: PathBuf, e: &dyn std::error::Error) -> LoadError {
    LoadError::Pins { path, source: io::Error::other(chain(e)) }
}

fn load_and_pin(pins: &Pins, want: Want, ring_bytes: Option<u32>) -> Result<Vec<BackendStatus>, LoadError> {
    let mut ebpf = load_object(ring_bytes)?;
    let aya_btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::AyaBtf(e.to_string()))?;
    let mut statuses = Vec::new();

    if want.lsm != Some(false) {
        let names: Vec<&str> = LSM_PROGRAMS.iter().copied().chain(optional_lsm_here()).collect();
        let r = lsm_inactive().and_then(|()| attach_lsm(&mut ebpf, &aya_btf, pins, &names));
        required(want.lsm, "lsm", &r)?;
        let paths = match &r {
            Ok(()) => attach_lsm(&mut ebpf, &aya_btf, pins, &LSM_PATH_PROGRAMS),
            Err(_) => {
                Err(LoadError::Program { name: "lsm-paths".into(), message: "needs the lsm backend".into() })
            }
        };
        if let Err(e) = &paths
            && r.is_ok()
        {
            tracing::warn!(error = %e, "BPF LSM path hooks refused: exec is decided by the tracepoint fallback, file rules are not enforced");
        }
        statuses.push(status("lsm", r));
        statuses.push(status("lsm-paths", paths));
    }

    if want.cgroup != Some(false) {
        let r = CGROUP_PROGRAMS.iter().try_for_each(|name| {
            load_cgroup_program(&mut ebpf, name)?;
            let p = ebpf.program_mut(name).ok_or_else(|| LoadError::Program {
                name: name.to_string(),
                message: "missing from the object".into(),
            })?;
            p.pin(pins.prog(name)).map_err(|e| pin_err(pins.prog(name), &e))
        });
        if r.is_err() {
            for name in CGROUP_PROGRAMS {
                let _ = std::fs::remove_file(pins.prog(name));
            }
        }
        required(want.cgroup, "cgroup", &r)?;
        statuses.push(status("cgroup", r));
    }

    if want.tracepoint != Some(false) {
        let r = (|| -> Result<(), LoadError> {
            for name in BTF_TRACEPOINTS {
                let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
                p.load(name, &aya_btf).map_err(|e| fail(name, &e))?;
                let id = p.attach().map_err(|e| fail(name, &e))?;
                let link = FdLink::from(p.take_link(id).map_err(|e| fail(name, &e))?);
                link.pin(pins.link(name)).map_err(|e| pin_err(pins.link(name), &e))?;
                p.pin(pins.prog(name)).map_err(|e| pin_err(pins.prog(name), &e))?;
            }
            let p: &mut RawTracePoint = program(&mut ebpf, SYS_ENTER)?;
            p.load().map_err(|e| fail(SYS_ENTER, &e))?;
            p.pin(pins.prog(SYS_ENTER)).map_err(|e| pin_err(pins.prog(SYS_ENTER), &e))
        })();
        if r.is_err() {
            for name in BTF_TRACEPOINTS {
                let _ = std::fs::remove_file(pins.link(name));
                let _ = std::fs::remove_file(pins.prog(name));
            }
            let _ = std::fs::remove_file(pins.prog(SYS_ENTER));
        }
        required(want.tracepoint, "tracepoint", &r)?;
        statuses.push(status("tracepoint", r));
    }

    if !statuses.iter().any(|s| s.available) {
        let why = statuses
            .iter()
            .map(|s| format!("{}: {}", s.backend, s.error.as_deref().unwrap_or("disabled")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(LoadError::NothingLoaded(why));
    }

    // Maps last, CONFIG the very last: its pin marks a complete state.
    let mut names: Vec<&str> = map_name::ALL.iter().copied().filter(|n| *n != map_name::CONFIG).collect();
    names.push(map_name::CONFIG);
    for name in names {
        let map = ebpf.map(name).ok_or_else(|| LoadError::Map {
            name: name.into(),
            path: pins.map(name),
            message: "missing from the object".into(),
        })?;
        map.pin(pins.map(name)).map_err(|e| pin_err(pins.map(name), &e))?;
    }
    Ok(statuses)
}

/// A backend explicitly asked for must load.
fn required(want: Option<bool>, backend: &str, r: &Result<(), LoadError>) -> Result<(), LoadError> {
    match (want, r) {
        (Some(true), Err(e)) => Err(LoadError::Program {
            name: backend.to_string(),
            message: format!("required backend failed: {e}"),
        }),
        _ => Ok(()),
    }
}

/// Opens a pinned map; also returns its `max_entries` as the kernel reports it.
fn open_map(pins: &Pins, name: &str) -> Result<(Map, u32), LoadError> {
    let path = pins.map(name);
    let err = |m: &dyn std::error::Error| LoadError::Map {
        name: name.into(),
        path: path.clone(),
        message: chain(m),
    };
    let data = MapData::from_pin(&path).map_err(|e| err(&e))?;
    let max_entries = data.info().map_err(|e| err(&e))?.max_entries();
    Ok((Map::from_map_data(data).map_err(|e| err(&e))?, max_entries))
}

fn typed_sized<T: TryFrom<Map, Error = MapError>>(pins: &Pins, name: &str) -> Result<(T, u32), LoadError> {
    let (map, max_entries) = open_map(pins, name)?;
    let typed = T::try_from(map).map_err(|e| LoadError::Map {
        name: name.into(),
        path: pins.map(name),
        message: chain(&e),
    })?;
    Ok((typed, max_entries))
}

fn typed<T: TryFrom<Map, Error = MapError>>(pins: &Pins, name: &str) -> Result<T, LoadError> {
    typed_sized(pins, name).map(|(t, _)| t)
}

/// Opens the pinned state under `pins`: maps (checking their layout),
/// programs, and every global link, held open (a missing link is attached
/// again from its pinned program and named in `reattached`).
fn adopt(pins: Pins) -> Result<Handles, LoadError> {
    let mut reattached = Vec::new();
    let reattached = &mut reattached;
    let layout = |found: String| LoadError::Layout { root: pins.root().to_path_buf(), found };
    let config: Array<MapData, Config> = typed(&pins, map_name::CONFIG)
        .map_err(|e| layout(format!("its CONFIG map does not open as this version's: {e}")))?;
    match config.get(&0, 0).map(|c| c.layout) {
        // 0: loaded, but the loading agent died before registering.
        Ok(0 | LAYOUT_VERSION) => {}
        Ok(other) => return Err(layout(format!("map layout {other}"))),
        Err(e) => return Err(layout(format!("its CONFIG map is unreadable: {}", chain(&e)))),
    }
    for name in [map_name::TASKS, map_name::DOOMED] {
        if !pins.map(name).exists() {
            return Err(layout(format!("no {name} map")));
        }
    }
    let (events, ring_bytes) = typed_sized(&pins, map_name::EVENTS)?;
    let maps = Maps {
        cgroups: typed(&pins, map_name::CGROUPS).map_err(|e| layout(e.to_string()))?,
        policies: typed(&pins, map_name::POLICIES)?,
        paths: typed(&pins, map_name::PATHS)?,
        events: Some(events),
        drops: typed(&pins, map_name::DROPS)?,
        counters: typed(&pins, map_name::COUNTERS)?,
        config,
        tasks: typed(&pins, map_name::TASKS)?,
        doomed: typed(&pins, map_name::DOOMED)?,
    };
    let mut cgroup_progs = Vec::new();
    for name in CGROUP_PROGRAMS {
        let path = pins.prog(name);
        if !path.exists() {
            continue;
        }
        let p = CgroupProgram::from_pin(name, &path).map_err(|e| fail(name, &e))?;
        cgroup_progs.push((name, p));
    }
    let sys_enter_path = pins.prog(SYS_ENTER);
    let sys_enter = if sys_enter_path.exists() {
        Some(RawTracePoint::from_pin(&sys_enter_path).map_err(|e| fail(SYS_ENTER, &e))?)
    } else {
        None
    };
    let sys_enter_link = if pins.link(SYS_ENTER).exists() {
        Some(HeldLink::open(SYS_ENTER, &pins.link(SYS_ENTER)).map_err(|e| link_err(&pins, SYS_ENTER, &e))?)
    } else {
        None
    };
    let lsm_loaded = pins.prog(LSM_PROGRAMS[0]).exists();
    let paths_loaded = pins.prog(LSM_PATH_PROGRAMS[0]).exists();
    let tracepoint_loaded = pins.prog(BTF_TRACEPOINTS[0]).exists();
    let mut links = Vec::new();
    let userns_loaded = lsm_loaded && pins.prog(LSM_OPTIONAL_PROGRAMS[0]).exists();
    let lsm_names = LSM_PROGRAMS
        .iter()
        .filter(|_| lsm_loaded)
        .chain(LSM_OPTIONAL_PROGRAMS.iter().filter(|n| lsm_loaded && pins.prog(n).exists()))
        .chain(LSM_PATH_PROGRAMS.iter().filter(|_| paths_loaded));
    for name in lsm_names {
        links.push(hold(&pins, name, reattached, || {
            let mut p = Lsm::from_pin(pins.prog(name)).map_err(|e| fail(name, &e))?;
            let id = p.attach().map_err(|e| fail(name, &e))?;
            Ok(FdLink::from(p.take_link(id).map_err(|e| fail(name, &e))?))
        })?);
    }
    if tracepoint_loaded {
        for name in BTF_TRACEPOINTS {
            links.push(hold(&pins, name, reattached, || {
                let mut p = BtfTracePoint::from_pin(pins.prog(name)).map_err(|e| fail(name, &e))?;
                let id = p.attach().map_err(|e| fail(name, &e))?;
                Ok(FdLink::from(p.take_link(id).map_err(|e| fail(name, &e))?))
            })?);
        }
    }
    let lsm_active = lsm_loaded && lsm_list::bpf_active().is_ok();
    let active = Active {
        lsm: lsm_active,
        lsm_paths: lsm_active && paths_loaded,
        lsm_userns: lsm_active && userns_loaded,
        cgroup: cgroup_progs.len() == CGROUP_PROGRAMS.len(),
        tracepoint: tracepoint_loaded,
    };
    let signal_task = Btf::from_running_kernel().ok().as_ref().and_then(signal_task_kfunc).is_some();
    Ok(Handles {
        pins,
        maps,
        cgroup_progs,
        sys_enter,
        links,
        sys_enter_link,
        reattached: std::mem::take(reattached),
        signal_task,
        active,
        adopted: false,
        statuses: Vec::new(),
        ring_bytes,
    })
}

fn link_err(pins: &Pins, name: &str, e: &dyn std::error::Error) -> LoadError {
    LoadError::Link { name: name.to_string(), path: pins.link(name), message: chain(e) }
}

/// Holds the global link `name`, attaching it again (with `attach`) and
/// pinning it when its pin is missing.
fn hold(
    pins: &Pins,
    name: &str,
    reattached: &mut Vec<String>,
    attach: impl FnOnce() -> Result<FdLink, LoadError>,
) -> Result<HeldLink, LoadError> {
    let path = pins.link(name);
    if !path.exists() {
        tracing::warn!(link = name, pin = %path.display(), "a global link was missing from the pins; attaching it again");
        attach()?.pin(&path).map_err(|e| pin_err(path.clone(), &e))?;
        reattached.push(name.to_string());
    }
    HeldLink::open(name, &path).map_err(|e| link_err(pins, name, &e))
}

/// A per-cgroup program: a sock_addr hook or the sock_create hook.
pub enum CgroupProgram {
    SockAddr(CgroupSockAddr),
    Sock(CgroupSock),
}

impl CgroupProgram {
    fn from_pin(name: &str, path: &Path) -> Result<Self, ProgramError> {
        Ok(if name == SOCK_CREATE {
            Self::Sock(CgroupSock::from_pin(path, CgroupSockAttachType::SockCreate)?)
        } else {
            Self::SockAddr(CgroupSockAddr::from_pin(path, attach_type(name))?)
        })
    }

    /// Attaches the program to the cgroup open at `cgroup` and returns the link.
    pub fn attach_link(&mut self, cgroup: &File) -> Result<FdLink, Box<dyn std::error::Error + Send + Sync>> {
        // With bpf_link (kernel >= 5.7) attachments always coexist; the
        // link API rejects the ALLOW_MULTI flag, so ask for the default.
        Ok(match self {
            Self::SockAddr(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                FdLink::try_from(p.take_link(id)?)?
            }
            Self::Sock(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                FdLink::try_from(p.take_link(id)?)?
            }
        })
    }
}

/// Loads the per-cgroup program `name` (not attached).
fn load_cgroup_program(ebpf: &mut aya::Ebpf, name: &str) -> Result<(), LoadError> {
    if name == SOCK_CREATE {
        let p: &mut CgroupSock = program(ebpf, name)?;
        p.load().map_err(|e| fail(name, &e))
    } else {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.load().map_err(|e| fail(name, &e))
    }
}

fn attach_type(name: &str) -> CgroupSockAddrAttachType {
    match name {
        "connect4" => CgroupSockAddrAttachType::Connect4,
        "connect6" => CgroupSockAddrAttachType::Connect6,
        "bind4" => CgroupSockAddrAttachType::Bind4,
        "bind6" => CgroupSockAddrAttachType::Bind6,
        "sendmsg4" => CgroupSockAddrAttachType::UDPSendMsg4,
        _ => CgroupSockAddrAttachType::UDPSendMsg6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_is_the_last_line_that_is_not_an_instruction_or_a_statistic() {
        let log = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: \
                   arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n; let f = x;\n\
                   12: (85) call bpf_d_path#147\nhelper call is not allowed in probe\n\
                   verification time 12 usec\nstack depth 8\nprocessed 13 insns (limit 1000000)\n";
        assert_eq!(verifier_verdict(log), Some("helper call is not allowed in probe"));
        assert_eq!(verifier_verdict("the BPF_PROG_LOAD syscall failed: Operation not permitted"), None);
    }

    #[test]
    fn ring_sizes_are_power_of_two_multiples_of_the_page() {
        for (bytes, page) in [(4096, 4096), (8192, 4096), (1 << 20, 4096), (1 << 31, 4096), (16384, 16384)] {
            assert!(check_ring_bytes(bytes, page).is_ok(), "{bytes} with {page}-byte pages");
        }
        for (bytes, page) in [(0, 4096), (2048, 4096), (4095, 4096), (12288, 4096), (8192, 16384), (4096, 0)]
        {
            match check_ring_bytes(bytes, page) {
                Err(LoadError::RingBytes { bytes: b, page_size }) => {
                    assert_eq!((b, page_size), (bytes, page))
                }
                other => panic!("{bytes} with {page}-byte pages: {other:?}"),
            }
        }
        let msg = check_ring_bytes(12288, 4096).unwrap_err().to_string();
        assert!(msg.contains("12288") && msg.contains("4096"), "{msg}");
        assert!(check_ring_bytes(forge_common::capacity::EVENT_RING_BYTES, page_size()).is_ok());
    }
}
