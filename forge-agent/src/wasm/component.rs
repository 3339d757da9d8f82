//! Turning a WASI preview1 core module into a WASI 0.2 component, with the
//! preview1 adapter Wasmtime publishes (`forge pkg build --component`).
//! Toolchains that build only preview1 (Debian's clang and wasi-libc among
//! them) can so ship component capsules.

/// Why a module could not be made a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    #[error("the module is already a component")]
    AlreadyComponent,
    #[error("making a component of the module: {0}")]
    Encode(String),
}

/// The component wrapping `core`, a preview1 command module (it exports
/// `_start` and imports only `wasi_snapshot_preview1`).
pub fn from_preview1(core: &[u8]) -> Result<Vec<u8>, ComponentizeError> {
    if super::is_component(core) {
        return Err(ComponentizeError::AlreadyComponent);
    }
    let encode = || -> anyhow::Result<Vec<u8>> {
        wit_component::ComponentEncoder::default()
            .module(core)?
            .adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )?
            .validate(true)
            .encode()
    };
    encode().map_err(|e| ComponentizeError::Encode(format!("{e:#}")))
}
