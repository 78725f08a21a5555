//! The guard phase's scanning throughput on realistic prompt bodies, every
//! detector on (issue 14: MB/s per core).
//!
//!     cargo bench -p bulkhead-gateway --bench guard
//!
//! Bodies are OpenAI-style chat completion requests of 1 KiB, 16 KiB and
//! 256 KiB of ordinary prose, with a few personal data items in each (so
//! redaction runs too), against a guardrail with all five detectors set
//! to redact, two blocked topics of keywords and a pattern each.

#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use bulkhead_gateway::guard::Guard;
use bulkhead_model::{BlockedTopic, GuardrailSpec, PiiAction, PiiKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROSE: &str = "Our quarterly review covers the migration of the billing service to the \
    new region, the retry policy for webhooks and the on-call rotation for December. The team \
    agreed to keep the old endpoint for thirty days, to publish a changelog entry, and to \
    measure the error rate before and after the switch. Questions from customers about \
    invoices should go to the support queue, not to engineers directly. ";

const PII: [&str; 5] = [
    "Contact ada.lovelace@example.com for access. ",
    "The card on file is 4111 1111 1111 1111. ",
    "Wire to GB82 WEST 1234 5698 7654 32 by Friday. ",
    "Call +44 20 7946 0958 if it fails. ",
    "Her SSN is 536-22-1234. ",
];

fn body(size: usize) -> Vec<u8> {
    let mut content = String::new();
    let mut i = 0;
    while content.len() < size {
        content.push_str(PROSE);
        if i % 8 == 0 {
            content.push_str(PII[(i / 8) % PII.len()]);
        }
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an operations team."},
            {"role": "user", "content": content},
        ],
    }))
    .expect("a JSON body")
}

fn guardrail() -> Guard {
    Guard::compile(&GuardrailSpec {
        name: "bench".into(),
        api: None,
        pii: PiiKind::ALL.iter().map(|k| (*k, PiiAction::Redact)).collect::<BTreeMap<_, _>>(),
        topics: vec![
            BlockedTopic {
                name: "weapons".into(),
                keywords: vec!["nerve agent".into(), "semtex".into(), "ricin".into()],
                patterns: vec![r"(?i)\bbuild\s+a\s+bomb\b".into()],
            },
            BlockedTopic {
                name: "competitors".into(),
                keywords: (0..50).map(|i| format!("competitor{i}")).collect(),
                patterns: vec![r"(?i)\bacme\s+corp(oration)?\b".into()],
            },
        ],
        max_prompt_bytes: None,
        scan_responses: false,
    })
    .expect("the bench's guardrail")
}

fn scan(c: &mut Criterion) {
    let guard = guardrail();
    let mut group = c.benchmark_group("guard_scan");
    for size in [1 << 10, 16 << 10, 256 << 10] {
        let body = body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{} KiB prompt", size >> 10), |b| {
            b.iter(|| guard.scan(std::hint::black_box(&body)).expect("no topic in the prose"));
        });
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
