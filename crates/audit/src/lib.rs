//! Bulkhead's audit trail: one append-only stream per tenant (and one for
//! the platform), each event hash-chained to the one before it, the chain
//! signed at checkpoints with the stream's own Ed25519 key, exportable as
//! JSON lines and verifiable offline by anyone holding the export.
//!
//! The format is specified byte for byte in `docs/audit.md`; [`canonical`]
//! and [`record`] are its reference implementation, [`verify`] the
//! reference verifier, [`writer`] the one path by which events are
//! appended.

pub mod canonical;
pub mod checkpoint;
pub mod export;
pub mod integrity;
pub mod record;
pub mod verify;
pub mod writer;

pub use checkpoint::{AuditKey, Checkpoint, CheckpointKind, PublicKeyInfo};
pub use integrity::{FileWitness, StoreWitness, StreamKeys, Witness};
pub use record::{Actor, Event, NewEvent, StreamId};
pub use verify::{Broken, Report, verify_export};
pub use writer::{AuditError, AuditLog, KeyRing, WriterSettings};
