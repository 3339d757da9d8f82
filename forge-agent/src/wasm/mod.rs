//! Wasm capsules: signed `.forgepkg` files run under Wasmtime, every host
//! call gated by the ZTA policy, recorded, and replayable.
//!
//! | module | concern |
//! |---|---|
//! | [`manifest`] | `capsule.toml`: name, entry, capabilities, limits, intent |
//! | [`package`] | the `.forgepkg` container; build, sign, verify |
//! | [`gate`] | the host-call gate: manifest ∩ policy |
//! | [`host`] | the WASI preview1 host, journaled |
//! | [`runtime`] | the engine, module preparation, limits, one run |
//! | [`cache`] | compiled modules on disk |
//! | [`capsule`] | a capsule run end to end, and its replay |

pub mod cache;
pub mod capsule;
pub mod gate;
pub mod host;
pub mod manifest;
pub mod package;
pub mod runtime;

#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod tests;

pub use capsule::{CapsuleError, ReplayReport, RunOptions, RunReport, replay, run_capsule};
pub use package::{Package, PackageError, VerifiedPackage};
pub use runtime::{Runtime, validate};
