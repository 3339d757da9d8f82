//! Wasm capsules: signed `.forgepkg` files run under Wasmtime, every host
//! call gated by the ZTA policy, recorded, and replayable.
//!
//! | module | concern |
//! |---|---|
//! | [`manifest`] | `capsule.toml`: name, entry, capabilities, limits, intent |
//! | [`package`] | the `.forgepkg` container; build, sign, verify |
//! | [`gate`] | the host-call gate: manifest ∩ policy |
//! | [`host`] | the WASI preview1 and 0.2 hosts, journaled |
//! | [`runtime`] | the engine, module preparation, limits, one run |
//! | [`cache`] | compiled modules on disk |
//! | [`component`] | preview1 modules made WASI 0.2 components |
//! | [`capsule`] | a capsule run end to end, and its replay |

#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
pub mod capsule;
#[cfg(feature = "runtime")]
pub mod component;
pub mod gate;
#[cfg(feature = "runtime")]
pub mod host;
pub mod manifest;
pub mod package;
#[cfg(feature = "runtime")]
pub mod runtime;

#[cfg(all(test, feature = "runtime"))]
mod component_tests;
#[cfg(all(test, feature = "runtime"))]
mod run_tests;
#[cfg(test)]
mod tests;

#[cfg(feature = "runtime")]
pub use capsule::{CapsuleError, ReplayReport, RunOptions, RunReport, replay, run_capsule};
pub use package::{Package, PackageError, VerifiedPackage};
#[cfg(feature = "runtime")]
pub use runtime::{Runtime, validate};

/// Whether `bytes` is a component (WASI 0.2) rather than a core module:
/// the layer field of the Wasm preamble.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// How people and JSON name a module's kind.
pub fn module_kind(bytes: &[u8]) -> &'static str {
    if is_component(bytes) { "component" } else { "core" }
}

/// A new run id for a capsule named `name`: `<name>-<unix ms>-<6 hex>`.
pub fn new_run_id(name: &str) -> String {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let mut r = [0u8; 3];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut r);
    format!("{}-{ms}-{}", name.chars().take(64).collect::<String>(), hex::encode(r))
}
