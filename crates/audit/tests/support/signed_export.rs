//! A whole export made in memory, as the exporter writes one, for the
//! property tests and the verify bench.

use bulkhead_audit::{
    AuditKey, Checkpoint, CheckpointKind, Event, NewEvent, StreamId, export::Header,
    record::GENESIS,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// `events` events made by `event(stream, n)`, a periodic checkpoint
/// every `every` of them, and the export checkpoint.
pub fn signed_export(
    events: u64,
    every: u64,
    event: impl Fn(&StreamId, u64) -> NewEvent,
) -> Vec<u8> {
    let stream = StreamId::tenant(Uuid::new_v4());
    let key = AuditKey::generate(stream.clone()).unwrap();
    let now = OffsetDateTime::now_utc();
    let header = Header {
        kind: "header".into(),
        format: bulkhead_audit::export::FORMAT.into(),
        stream: stream.clone(),
        tenant: Some("acme".into()),
        exported_at: bulkhead_audit::record::format_time(now),
        keys: vec![key.public_info(now)],
    };
    let mut out = header.line().unwrap() + "\n";
    let (mut seq, mut hash) = (0, GENESIS);
    for n in 0..events {
        let chained = Event::chain(event(&stream, n), seq + 1, hash);
        (seq, hash) = (chained.seq, chained.hash);
        out.push_str(&chained.export_line());
        out.push('\n');
        if seq % every == 0 {
            let checkpoint = Checkpoint::sign(&key, seq, hash, now, CheckpointKind::Periodic);
            out.push_str(&checkpoint.export_line());
            out.push('\n');
        }
    }
    out.push_str(&Checkpoint::sign_export(&key, 1, seq, hash, now).export_line());
    out.push('\n');
    out.into_bytes()
}
