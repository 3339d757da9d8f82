//! The linker: the host functions, and for each WASI import the host does
//! not implement, a stub that records the call and answers `ENOSYS`.

use serde_json::json;
use wasmtime::{Caller, Engine, Linker, Module, Val, ValType};

use super::{Ctx, errno, errno_of, fs, memory, net, sys};

pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// ForgeOne's own imports (what preview1 lacks).
pub const HOST_MODULE: &str = "forge";

/// Why a module cannot be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "the module imports {module}.{name}, which this host does not provide (it provides {WASI_MODULE} and {HOST_MODULE})"
    )]
    UnknownImport { module: String, name: String },
    #[error(
        "the component imports {0}, which this host does not provide (it provides WASI 0.2 cli, clocks, filesystem, random and io; not sockets)"
    )]
    UnknownInterface(String),
    #[error("the module imports {module}.{name} as something other than a function")]
    NotAFunction { module: String, name: String },
    #[error("linking: {0}")]
    Wasmtime(String),
}

/// A linker with every import `module` asks for.
pub fn linker(engine: &Engine, module: &Module) -> Result<Linker<Ctx>, LinkError> {
    // The host functions are defined once per engine (defining them costs
    // more than a warm start's other steps); each module gets a copy.
    static BASE: std::sync::OnceLock<(Engine, Linker<Ctx>)> = std::sync::OnceLock::new();
    let mut l = match BASE.get() {
        Some((e, l)) if Engine::same(e, engine) => l.clone(),
        _ => {
            let mut l = Linker::new(engine);
            add_host(&mut l).map_err(|e| LinkError::Wasmtime(format!("{e:#}")))?;
            let _ = BASE.set((engine.clone(), l.clone()));
            l
        }
    };
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        if m != WASI_MODULE && m != HOST_MODULE {
            return Err(LinkError::UnknownImport { module: m.into(), name: name.into() });
        }
        let Some(ty) = import.ty().func().cloned() else {
            return Err(LinkError::NotAFunction { module: m.into(), name: name.into() });
        };
        if m == HOST_MODULE && name == "sock_connect" || m == WASI_MODULE && IMPLEMENTED.contains(&name) {
            continue;
        }
        if m == HOST_MODULE {
            return Err(LinkError::UnknownImport { module: m.into(), name: name.into() });
        }
        let call_name = name.to_string();
        let errno_result = ty.results().len() == 1 && matches!(ty.results().next(), Some(ValType::I32));
        l.func_new(m, name, ty, move |mut c: Caller<'_, Ctx>, params: &[Val], results: &mut [Val]| {
            let (_, ctx) = memory(&mut c)?;
            let args: Vec<serde_json::Value> = params
                .iter()
                .map(|v| match v {
                    Val::I32(x) => json!(x),
                    Val::I64(x) => json!(x),
                    _ => json!(null),
                })
                .collect();
            let r = ctx.call(&call_name, json!({ "params": args }), |_| json!({"errno": errno::NOSYS}))?;
            if errno_result {
                results[0] = Val::I32(i32::from(errno_of(&r)));
                Ok(())
            } else {
                Err(wasmtime::Error::msg(format!("{call_name} is not supported by this host")))
            }
        })
        .map_err(|e| LinkError::Wasmtime(format!("{e:#}")))?;
    }
    Ok(l)
}

/// A component linker with the WASI 0.2 host. It is defined once per
/// engine and shared: components need nothing linked per component, and
/// defining (or cloning) it costs more than the rest of a warm start.
pub fn component_linker(
    engine: &Engine,
) -> Result<std::sync::Arc<wasmtime::component::Linker<Ctx>>, LinkError> {
    type Shared = std::sync::Arc<wasmtime::component::Linker<Ctx>>;
    static BASE: std::sync::OnceLock<(Engine, Shared)> = std::sync::OnceLock::new();
    match BASE.get() {
        Some((e, l)) if Engine::same(e, engine) => Ok(l.clone()),
        _ => {
            let mut l = wasmtime::component::Linker::new(engine);
            super::p2::add_to_linker(&mut l).map_err(|e| LinkError::Wasmtime(format!("{e:#}")))?;
            let l = std::sync::Arc::new(l);
            let _ = BASE.set((engine.clone(), l.clone()));
            Ok(l)
        }
    }
}

/// The preview1 functions [`add_host`] defines.
const IMPLEMENTED: &[&str] = &[
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "sched_yield",
    "proc_exit",
    "path_open",
    "fd_read",
    "fd_write",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_filestat_get",
    "path_filestat_get",
    "fd_readdir",
    "path_unlink_file",
    "path_create_directory",
    "path_remove_directory",
];

fn add_host(l: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    let w = WASI_MODULE;
    l.func_wrap(w, "args_sizes_get", sys::args_sizes_get)?;
    l.func_wrap(w, "args_get", sys::args_get)?;
    l.func_wrap(w, "environ_sizes_get", sys::environ_sizes_get)?;
    l.func_wrap(w, "environ_get", sys::environ_get)?;
    l.func_wrap(w, "clock_time_get", sys::clock_time_get)?;
    l.func_wrap(w, "clock_res_get", sys::clock_res_get)?;
    l.func_wrap(w, "random_get", sys::random_get)?;
    l.func_wrap(w, "sched_yield", sys::sched_yield)?;
    l.func_wrap(w, "proc_exit", sys::proc_exit)?;
    l.func_wrap(w, "path_open", fs::path_open)?;
    l.func_wrap(w, "fd_read", fs::fd_read)?;
    l.func_wrap(w, "fd_write", fs::fd_write)?;
    l.func_wrap(w, "fd_close", fs::fd_close)?;
    l.func_wrap(w, "fd_seek", fs::fd_seek)?;
    l.func_wrap(w, "fd_fdstat_get", fs::fd_fdstat_get)?;
    l.func_wrap(w, "fd_fdstat_set_flags", fs::fd_fdstat_set_flags)?;
    l.func_wrap(w, "fd_prestat_get", fs::fd_prestat_get)?;
    l.func_wrap(w, "fd_prestat_dir_name", fs::fd_prestat_dir_name)?;
    l.func_wrap(w, "fd_filestat_get", fs::fd_filestat_get)?;
    l.func_wrap(w, "path_filestat_get", fs::path_filestat_get)?;
    l.func_wrap(w, "fd_readdir", fs::fd_readdir)?;
    l.func_wrap(w, "path_unlink_file", fs::path_unlink_file)?;
    l.func_wrap(w, "path_create_directory", fs::path_create_directory)?;
    l.func_wrap(w, "path_remove_directory", fs::path_remove_directory)?;
    l.func_wrap(HOST_MODULE, "sock_connect", net::sock_connect)?;
    Ok(())
}
