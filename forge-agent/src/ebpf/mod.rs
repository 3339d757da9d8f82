//! Everything that touches BPF: the embedded object, kernel offsets, probing,
//! loading and pinning, the single map writer, and the ring reader.

pub mod btf;
