//! Everything that touches BPF: the embedded object, kernel offsets, probing,
//! loading and pinning, the single map writer, and the ring reader.

pub mod btf;
pub mod helper_probe;
pub mod kfunc;
pub mod links;
pub mod loader;
pub mod lsm_list;
pub mod object;
pub mod pins;
pub mod ring;
mod sys;
pub mod writer;

pub use loader::{Active, BackendStatus, Handles, LoadError, Want};
pub use pins::Pins;
pub use writer::{MapWriter, WriterError};
