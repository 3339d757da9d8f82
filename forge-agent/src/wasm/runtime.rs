//! Wasmtime: one engine for the process, modules compiled once per digest
//! (memory, then the disk cache), and runs held to their limits.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use wasmtime::{
    Config, Engine, InstancePre, Module, Store, Trap,
    component::{self, Component, ComponentExportIndex},
};

use super::{
    cache::ModuleCache,
    host::{
        self, Ctx, Denied, Exit, Live, MemoryLimit, StoreLimits,
        journal::{Divergence, Journal, RecordFailed},
    },
    is_component,
    manifest::Limits,
};
use crate::sign::{Digest, sha3_256_tree};

/// How often the engine's epoch advances (the deadline's resolution).
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The process's engine: fuel metering and epoch interruption on, and a
/// thread that advances the epoch.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = Config::new();
        // Linear memory is initialized by copying the data segments, not
        // from a copy-on-write image: an image is a memfd made per module,
        // which costs a module loaded from the disk cache more (about 20 µs
        // on a warm start) than copying a capsule's data does at each run.
        c.consume_fuel(true).epoch_interruption(true).memory_init_cow(false);
        let engine =
            Engine::new(&c).unwrap_or_else(|e| panic!("the Wasm engine's fixed configuration: {e:#}"));
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("forge-wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .unwrap_or_else(|e| panic!("starting the Wasm epoch thread: {e}"));
        engine
    })
}

/// Why a module could not be prepared to run.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("the component exports no wasi:cli/run@0.2 (a component capsule is a WASI 0.2 command)")]
    NoRun,
    #[error("the module fails validation: {0}")]
    Invalid(String),
    #[error("{0}")]
    Link(#[from] host::LinkError),
}

/// Where a prepared module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Compiled,
    DiskCache,
    Memory,
}

/// A module or component ready to instantiate.
#[derive(Clone)]
pub struct Prepared {
    pub digest: Digest,
    pub source: Source,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Core(InstancePre<Ctx>),
    /// A component and its `wasi:cli/run` function.
    Component(component::InstancePre<Ctx>, ComponentExportIndex),
}

impl Prepared {
    /// Whether this is a component (WASI 0.2) rather than a core module.
    pub fn is_component(&self) -> bool {
        matches!(self.kind, Kind::Component(..))
    }
}

/// Compiles and runs capsules.
pub struct Runtime {
    cache: Option<ModuleCache>,
    prepared: Mutex<HashMap<Digest, Prepared>>,
}

/// Checks that `bytes` is a valid core module or component this engine
/// can run (a component must import only what the host provides and
/// export `wasi:cli/run`). Nothing is compiled: preparing the module
/// compiles it, or takes it from the cache.
pub fn validate(bytes: &[u8]) -> Result<(), PrepareError> {
    if is_component(bytes) {
        return validate_component(bytes);
    }
    Module::validate(engine(), bytes).map_err(|e| PrepareError::Invalid(format!("{e:#}")))
}

/// [`validate`] for a component, with the parser Wasmtime uses; the names
/// of its own (top-level) imports and exports are checked here, the types
/// of `wasi:cli/run` when it is prepared ([`check_component`]).
fn validate_component(bytes: &[u8]) -> Result<(), PrepareError> {
    use wasmparser::Payload;
    let invalid = |e: wasmparser::BinaryReaderError| PrepareError::Invalid(e.to_string());
    wasmparser::Validator::new().validate_all(bytes).map_err(invalid)?;
    let mut depth = 0usize;
    let mut run = false;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(s) if depth == 0 => {
                for import in s {
                    let name = import.map_err(invalid)?.name.name;
                    if !host::p2::provides(name) {
                        return Err(host::LinkError::UnknownInterface(name.to_string()).into());
                    }
                }
            }
            Payload::ComponentExportSection(s) if depth == 0 => {
                for export in s {
                    run |= export.map_err(invalid)?.name.name.starts_with("wasi:cli/run@0.2.");
                }
            }
            _ => {}
        }
    }
    if run { Ok(()) } else { Err(PrepareError::NoRun) }
}

/// The component's `wasi:cli/run` function, once its imports are known
/// to be ones the host provides.
fn check_component(c: &Component) -> Result<ComponentExportIndex, PrepareError> {
    let ty = c.component_type();
    for (name, _) in ty.imports(engine()) {
        if !host::p2::provides(name) {
            return Err(host::LinkError::UnknownInterface(name.to_string()).into());
        }
    }
    let run = ty.exports(engine()).map(|(n, _)| n).find(|n| n.starts_with("wasi:cli/run@0.2."));
    let run = run.and_then(|n| c.get_export_index(None, n)).ok_or(PrepareError::NoRun)?;
    c.get_export_index(Some(&run), "run").ok_or(PrepareError::NoRun)
}

impl Runtime {
    pub fn new(cache: Option<ModuleCache>) -> Self {
        Self { cache, prepared: Mutex::new(HashMap::new()) }
    }

    /// The module with this digest, ready to run: from memory, the disk cache, or compiled.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, PrepareError> {
        self.prepare_digested(sha3_256_tree(bytes), bytes)
    }

    /// [`Runtime::prepare`] for a verified package's module, whose digest
    /// verification already checked (so it is not computed again).
    pub fn prepare_verified(&self, pkg: &crate::wasm::VerifiedPackage) -> Result<Prepared, PrepareError> {
        self.prepare_digested(pkg.module_digest(), pkg.package.module())
    }

    /// `digest` must be the digest of `bytes` (tree, or plain SHA3-256 for
    /// packages built before the tree digest): it keys the caches.
    fn prepare_digested(&self, digest: Digest, bytes: &[u8]) -> Result<Prepared, PrepareError> {
        if let Some(p) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok(Prepared { source: Source::Memory, ..p.clone() });
        }
        if is_component(bytes) {
            return self.prepare_component(digest, bytes);
        }
        let engine = engine();
        let (module, source) = match self.cache.as_ref().and_then(|c| c.load(engine, &digest)) {
            Some(m) => (m, Source::DiskCache),
            None => {
                let m = Module::new(engine, bytes).map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
                if let Some(c) = &self.cache
                    && let Err(e) = c.store(&digest, &m)
                {
                    tracing::warn!(error = %e, "could not cache the compiled module");
                }
                (m, Source::Compiled)
            }
        };
        let pre = host::linker(engine, &module)?
            .instantiate_pre(&module)
            .map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
        let p = Prepared { digest, source, kind: Kind::Core(pre) };
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, p.clone());
        Ok(p)
    }

    fn prepare_component(&self, digest: Digest, bytes: &[u8]) -> Result<Prepared, PrepareError> {
        let engine = engine();
        let (component, source) = match self.cache.as_ref().and_then(|c| c.load_component(engine, &digest)) {
            Some(c) => (c, Source::DiskCache),
            None => {
                let c = Component::new(engine, bytes).map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
                if let Some(cache) = &self.cache
                    && let Err(e) = cache.store_component(&digest, &c)
                {
                    tracing::warn!(error = %e, "could not cache the compiled component");
                }
                (c, Source::Compiled)
            }
        };
        let run = check_component(&component)?;
        let pre = host::component_linker(engine)?
            .instantiate_pre(&component)
            .map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
        let p = Prepared { digest, source, kind: Kind::Component(pre, run) };
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, p.clone());
        Ok(p)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum End {
    /// The capsule returned from its entry (code 0) or called `proc_exit`.
    Exited {
        code: i32,
    },
    OutOfFuel {
        fuel: u64,
    },
    Deadline {
        ms: u64,
    },
    MemoryLimit {
        limit_bytes: usize,
        desired_bytes: usize,
    },
    /// The capsule trapped (unreachable, out-of-bounds access, ...).
    Trapped {
        trap: String,
    },
    /// Replay: the capsule made another call than the recording holds.
    Diverged {
        divergence: Divergence,
    },
    /// The run's trace could not be written, so it was stopped.
    RecordFailed {
        message: String,
    },
    /// The module could not start (bad entry point, instantiation failed).
    Failed {
        error: String,
    },
}

impl End {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Exited { code } => Some(*code),
            _ => None,
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        match self {
            Self::Exited { code } => format!("exited with code {code}"),
            Self::OutOfFuel { fuel } => format!("stopped: out of fuel (limit {fuel})"),
            Self::Deadline { ms } => format!("stopped: deadline of {ms} ms exceeded"),
            Self::MemoryLimit { limit_bytes, desired_bytes } => format!(
                "stopped: memory limit of {} MiB exceeded (asked for {} bytes)",
                limit_bytes >> 20,
                desired_bytes
            ),
            Self::Trapped { trap } => format!("trapped: {trap}"),
            Self::Diverged { divergence } => format!("diverged from the recording: {divergence}"),
            Self::RecordFailed { message } => format!("stopped: {message}"),
            Self::Failed { error } => format!("could not start: {error}"),
        }
    }
}

/// What a run did.
pub struct RunResult {
    pub end: End,
    pub output_sha3: String,
    pub host_calls: u64,
    pub denied: Vec<Denied>,
    /// From instantiation to the end.
    pub elapsed: Duration,
    /// The store data after the run (captured output, the trace writer).
    pub ctx: Ctx,
}

fn classify(e: &wasmtime::Error, limits: &Limits) -> End {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return End::Exited { code: *code };
    }
    if let Some(m) = e.downcast_ref::<MemoryLimit>() {
        return End::MemoryLimit { limit_bytes: m.limit, desired_bytes: m.desired };
    }
    if let Some(d) = e.downcast_ref::<Divergence>() {
        return End::Diverged { divergence: d.clone() };
    }
    if let Some(r) = e.downcast_ref::<RecordFailed>() {
        return End::RecordFailed { message: r.to_string() };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => End::OutOfFuel { fuel: limits.fuel },
        Some(Trap::Interrupt) => End::Deadline { ms: limits.deadline_ms },
        Some(t) => End::Trapped { trap: t.to_string() },
        None => End::Trapped { trap: format!("{e:#}") },
    }
}

/// Runs `entry` of `prepared` with `live` (the gate and the world) and
/// `journal` (record or replay), held to `limits`.
pub fn run(prepared: &Prepared, entry: &str, limits: &Limits, live: Live, journal: Journal) -> RunResult {
    let memory_bytes = (limits.memory_mib as usize) << 20;
    let deadline = Instant::now() + Duration::from_millis(limits.deadline_ms);
    let mut store = Store::new(engine(), Ctx::new(live, journal, StoreLimits { memory_bytes, deadline }));
    store.limiter(|c| c as &mut dyn wasmtime::ResourceLimiter);
    let fuel = if limits.fuel > 0 { limits.fuel } else { u64::MAX };
    let start = Instant::now();
    let end = match store.set_fuel(fuel) {
        Err(e) => End::Failed { error: format!("{e:#}") },
        Ok(()) => {
            store.set_epoch_deadline(limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
            match &prepared.kind {
                Kind::Core(pre) => run_core(pre, &mut store, entry, limits),
                Kind::Component(pre, run) => run_component(pre, run, &mut store, limits),
            }
        }
    };
    let elapsed = start.elapsed();
    let mut ctx = store.into_data();
    let end = match (&end, ctx.journal.unconsumed()) {
        (End::Exited { .. }, Some(d)) => End::Diverged { divergence: d },
        _ => end,
    };
    RunResult {
        end,
        output_sha3: ctx.output_digest(),
        host_calls: ctx.journal.calls(),
        denied: std::mem::take(&mut ctx.denied),
        elapsed,
        ctx,
    }
}

/// A failure to instantiate is a failure to start (unless a limit or the
/// journal ended it).
fn not_started(e: &wasmtime::Error, limits: &Limits) -> End {
    match classify(e, limits) {
        End::Trapped { trap } => End::Failed { error: trap },
        other => other,
    }
}

fn run_core(pre: &InstancePre<Ctx>, store: &mut Store<Ctx>, entry: &str, limits: &Limits) -> End {
    match pre.instantiate(&mut *store) {
        Err(e) => not_started(&e, limits),
        Ok(instance) => match instance.get_typed_func::<(), ()>(&mut *store, entry) {
            Err(e) => End::Failed { error: format!("entry point {entry:?}: {e:#}") },
            Ok(f) => match f.call(&mut *store, ()) {
                Ok(()) => End::Exited { code: 0 },
                Err(e) => classify(&e, limits),
            },
        },
    }
}

/// A component runs its `wasi:cli/run`: `ok` is code 0, `err` code 1.
fn run_component(
    pre: &component::InstancePre<Ctx>,
    run: &ComponentExportIndex,
    store: &mut Store<Ctx>,
    limits: &Limits,
) -> End {
    match pre.instantiate(&mut *store) {
        Err(e) => not_started(&e, limits),
        Ok(instance) => match instance.get_typed_func::<(), (Result<(), ()>,)>(&mut *store, run) {
            Err(e) => End::Failed { error: format!("wasi:cli/run: {e:#}") },
            Ok(f) => match f.call(&mut *store, ()) {
                Ok((Ok(()),)) => End::Exited { code: 0 },
                Ok((Err(()),)) => End::Exited { code: 1 },
                Err(e) => classify(&e, limits),
            },
        },
    }
}

/// A shared runtime for callers without their own.
pub fn shared() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(None))).clone()
}
