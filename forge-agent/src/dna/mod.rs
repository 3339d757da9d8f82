//! Execution DNA: one append-only, hash-chained, signed trace per governed
//! workload (a cgroup, or one run of a Wasm capsule).
//!
//! A trace starts with an **identity** record, then holds, in the order they
//! happened: **governed** records (the settings the agent scores with),
//! **decision** events, **sampled allowed** events and the counts of the
//! **elided** routine ones, **scores** with their features, **trust
//! changes**, **quarantine** actions (with a snapshot of what was running),
//! events **lost** to a full ring buffer, capsule **host calls**, the
//! **outcome**, and the writer's own **checkpoint** and **reopen** records. Every record carries the SHA3-256
//! hash of the one before it; record 0 links to a genesis value derived from
//! the identity. Every `checkpoint_every` records (and on a timer, and on
//! close) the writer signs a checkpoint with the agent's ed25519 key.
//!
//! | module | concern |
//! |---|---|
//! | [`record`] | the record kinds and their payload bytes |
//! | `event` | the compact binary form of a decision event |
//! | [`chain`] | what is hashed and signed: genesis, record hash, checkpoint message |
//! | [`frame`] | file header, record frames, torn-tail detection |
//! | [`writer`] | buffered appends, checkpoints, the fsync policy, recovery on open |
//! | [`reader`] | records in order, checked as they are read; the replay API |
//! | [`verify`] | the whole trace, signatures included; the first bad record |
//! | [`replay`] | the event stream through a fresh scorer and trust controller |
//! | [`store`] | `<data_dir>/traces/<workload-id>.dna` |
//!
//! # On disk
//!
//! ```text
//! header  "FORGEDNA" | u32 version = 1 | u32 flags = 0                      16 bytes
//! record  u32 len | u32 !len | u8 kind | [32] prev | payload | [32] hash     73 bytes + payload
//!         hash = sha3-256("forgeone-dna-record-v1\0" | kind | prev | payload)
//!         prev of record 0 = sha3-256("forgeone-dna-genesis-v1\0" | identity payload)
//! ```
//!
//! Integers are little-endian. The hash is also the record's checksum.
//! Decision events and checkpoints have binary payloads; the other kinds
//! are JSON. A checkpoint holds `u64 index | u64 unix_ns | [32] public key |
//! [64] signature`, the signature being over
//! `"forgeone-dna-checkpoint-v1\0" | genesis | index | prev | unix_ns | key`.
//!
//! # Writing, flushing, syncing
//!
//! Three levels of safety, each costing more:
//!
//! 1. *buffered*: an appended record sits in the writer's buffer; an agent
//!    crash loses it.
//! 2. *written*: the buffer went to the file with `write(2)`; an agent crash
//!    keeps it, a power loss may not.
//! 3. *synced*: `fdatasync(2)` returned; it survives a power loss.
//!
//! The writer moves records from 1 to 2 when the buffer holds
//! `buffer_bytes`, when its oldest record is `flush_interval` old, at every
//! checkpoint, on [`TraceWriter::flush`], `close` and drop; and from 2 to 3
//! as `fsync` says. Records are only ever written whole, but a crash inside
//! a `write(2)` (a signal, a full disk) or a power loss can still leave the
//! last record short. Opening the trace again finds it (its length field runs
//! past the end of the file, or the tail is all zeros), cuts it off, syncs
//! the cut, logs it, and appends a `reopen` record saying how many bytes went.
//! Anything else damaged (a bad checksum, a broken link, a bad length field
//! in the middle) is an error: the writer never cuts off evidence.
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `checkpoint_every` | 1024 | records between signed checkpoints |
//! | `checkpoint_interval` | 10 s | sign sooner when records wait this long |
//! | `buffer_bytes` | 64 KiB | write the buffer when it holds this much |
//! | `flush_interval` | 200 ms | write the buffer when its oldest record is this old |
//! | `fsync` | `checkpoint` | `never`, `checkpoint` (and close), `flush` (every write), `record` (every record) |
//!
//! The intervals are checked on every append and on [`TraceWriter::tick`],
//! which the owner calls on a timer so a quiet trace is flushed and signed.
//! So with the defaults an agent crash loses at most 200 ms or 64 KiB of
//! records, and a power loss at most the records since the last checkpoint.
//!
//! # Verifying
//!
//! [`verify_file`] names the first bad record and why: `record 40: checksum
//! mismatch` (a changed byte), `record 17: prev hash mismatch` (a record
//! removed, reordered or inserted, or a changed one re-hashed), `record 9:
//! bad checkpoint signature`, `record 9: checkpoint signed by key …, not the
//! trusted key`. What it cannot see: changes to records after the last
//! checkpoint by someone who re-hashes them, and a file cut back to an
//! earlier checkpoint (see [`verify`]).
//!
//! # Tests
//!
//! Unit tests here tamper with traces in each of those ways and assert the
//! exact index, cut traces at every byte of their last records, and feed
//! random and mutated bytes to the reader. `tests/dna_crash.rs` SIGKILLs a
//! real writer process mid-write, reopens, verifies and appends;
//! `tests/dna_cli.rs` drives `forge trace`; `benches/dna.rs` measures appends
//! per second.

pub mod chain;
pub mod error;
mod event;
pub mod frame;
pub mod reader;
pub mod record;
pub mod replay;
pub mod store;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

pub use chain::Hash;
pub use error::{DnaError, Problem, Reason, TornTail};
pub use reader::{Entry, Records, Trace};
pub use record::{
    CapsuleRun, Checkpoint, ElidedEvents, Governed, HostCall, Identity, Lost, Outcome, QuarantineAction,
    QuarantineOp, Record, Reopen, ScoreRecord, Subject, TrustChange,
};
pub use replay::{ReplayReport, replay};
pub use store::{DEFAULT_DATA_DIR, TraceStore, check_workload_id};
pub use verify::{VerifyOptions, VerifyReport, verify_file, verify_reader};
pub use writer::{FsyncPolicy, OpenReport, TraceWriter, WriterConfig};
