//! The `guard` phase's scanner: finds personal data, blocked topics and
//! oversized prompts in a body, as a tenant's guardrail says, and redacts
//! or refuses. Compiled once per snapshot ([`Guard::compile`]); a scan
//! ([`Guard::scan`]) is linear in the body's length (the `regex` crate's
//! engines, one Aho-Corasick automaton for every keyword) and allocates
//! only when it redacts.
//!
//! What it does not see: text the client encoded to hide it (a JSON
//! `\u0040` for `@`, base64, a card split across fields). It is a
//! guardrail against mistakes and careless agents, not against a client
//! set on exfiltrating its own data.

use std::{ops::Range, sync::Arc, time::Duration};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bulkhead_model::{GuardrailSpec, PiiAction, PiiKind};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use crate::{
    body::{Body, BoxError, Tracked, full},
    error::{Code, Phase, Refusal},
    snapshot::ApiEntry,
    stats::Stats,
};

/// The guard phase. Reads: a request allowed so far, and its API's
/// guardrails. Adds: the request body as the guardrails leave it (read
/// whole, within the API's `max_body_bytes`, then redacted), or a refusal
/// naming the rule. An API without guardrails streams its body untouched.
pub async fn request(
    api: &ApiEntry,
    request: Request<Body>,
    stats: &Stats,
) -> Result<Request<Body>, Refusal> {
    if api.guards.is_empty() || crate::headers::is_upgrade(request.headers()) {
        return Ok(request);
    }
    // A compressed body would pass unread: the guard reads bodies as sent.
    if encoded(request.headers()) {
        return Err(Refusal::new(
            Phase::Guard,
            Code::UnsupportedEncoding,
            "a Content-Encoding the guard cannot read",
        ));
    }
    let (mut parts, body) = request.into_parts();
    if !api.response_guards.is_empty() {
        // Answers must come as they are for the guard to read them.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let bytes = body.collect().await.map_err(unreadable)?.to_bytes();
    let bytes = scan_all(&api.guards, bytes, stats, "request")?;
    set_length(&mut parts.headers, bytes.len());
    Ok(Request::from_parts(parts, full(bytes)))
}

/// The guard phase on the way back, with the API's guardrails that say
/// `scan_responses`: a response of known length within the API's
/// `max_body_bytes` is read whole and scanned like a request. Streamed
/// responses (no length, or `text/event-stream`) pass unscanned: holding
/// them back would break them.
pub async fn response(
    api: &ApiEntry,
    response: Response<Incoming>,
    idle: Duration,
    stats: &Stats,
) -> Result<Response<Body>, Refusal> {
    if api.response_guards.is_empty() || !scannable(response.headers(), api.spec.max_body_bytes) {
        return Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()));
    }
    if encoded(response.headers()) {
        return Err(Refusal::new(
            Phase::Guard,
            Code::UpstreamUnavailable,
            "the upstream encoded a response the guard must read, though not asked to",
        ));
    }
    let (mut parts, body) = response.into_parts();
    let body = Tracked::new(body, idle, Arc::default(), ());
    let bytes = body.collect().await.map_err(unreadable)?.to_bytes();
    let bytes = scan_all(&api.response_guards, bytes, stats, "response")?;
    set_length(&mut parts.headers, bytes.len());
    Ok(Response::from_parts(parts, full(bytes)))
}

fn encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("identity")))
    })
}

fn scannable(headers: &HeaderMap, max: u64) -> bool {
    let streamed = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    !streamed && length.is_some_and(|length| length <= max)
}

/// Each guard in turn, on what the one before left.
fn scan_all(
    guards: &[Arc<Guard>],
    mut bytes: Bytes,
    stats: &Stats,
    what: &str,
) -> Result<Bytes, Refusal> {
    for guard in guards {
        match guard.scan(&bytes) {
            Ok(scanned) => {
                for (kind, action, count) in &scanned.found {
                    stats.found(*kind, *action, *count);
                }
                if let Some(redacted) = scanned.redacted {
                    bytes = Bytes::from(redacted);
                }
            }
            Err(rejection) => {
                if let Some(kind) = rejection.pii {
                    stats.found(kind, PiiAction::Reject, 1);
                }
                let mut refusal = Refusal::new(
                    Phase::Guard,
                    rejection.code,
                    format!("{what}: {}", rejection.rule),
                );
                refusal.rule = Some(rejection.rule);
                return Err(refusal);
            }
        }
    }
    Ok(bytes)
}

/// The body's length once its guardrails have changed it; the framing it
/// came with (chunked, or the old length) no longer holds.
fn set_length(headers: &mut HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

fn unreadable(error: BoxError) -> Refusal {
    if crate::proxy::caused_by::<http_body_util::LengthLimitError>(&*error) {
        return Refusal::new(Phase::Proxy, Code::PayloadTooLarge, "body over the cap");
    }
    Refusal::new(Phase::Guard, Code::BadRequest, format!("the body could not be read: {error}"))
}

/// Why a body was refused: the wire code and the rule, never the text
/// that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `guardrail_pii`, `guardrail_blocked_topic` or
    /// `guardrail_prompt_too_large`.
    pub code: Code,
    /// The guardrail and what fired: `default: card`, `default: topic
    /// weapons`.
    pub rule: String,
    /// The personal data that was refused, for a `guardrail_pii`.
    pub pii: Option<PiiKind>,
}

/// What a scan found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scanned {
    /// The body with its redactions, when anything was redacted.
    pub redacted: Option<Vec<u8>>,
    /// Every finding, by kind and what was done (redacted, logged or the
    /// one rejected).
    pub found: Vec<(PiiKind, PiiAction, u32)>,
}

/// One tenant guardrail, compiled.
#[derive(Debug)]
pub struct Guard {
    name: String,
    pii: Vec<(PiiKind, PiiAction)>,
    keywords: Option<(AhoCorasick, Vec<usize>)>,
    patterns: Option<(RegexSet, Vec<usize>)>,
    topics: Vec<String>,
    max_bytes: Option<u64>,
}

impl Guard {
    /// Compiles a validated spec; fails only on a spec that never passed
    /// [`GuardrailSpec::validate`].
    pub fn compile(spec: &GuardrailSpec) -> Result<Self, String> {
        spec.validate().map_err(|e| e.to_string())?;
        let mut words = Vec::new();
        let mut word_topic = Vec::new();
        let mut patterns = Vec::new();
        let mut pattern_topic = Vec::new();
        for (i, topic) in spec.topics.iter().enumerate() {
            for keyword in &topic.keywords {
                words.push(keyword.trim().to_owned());
                word_topic.push(i);
            }
            for pattern in &topic.patterns {
                patterns.push(pattern.clone());
                pattern_topic.push(i);
            }
        }
        let keywords = if words.is_empty() {
            None
        } else {
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| format!("the guardrail's keywords: {e}"))?;
            Some((automaton, word_topic))
        };
        let patterns = if patterns.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(&patterns)
                .size_limit(bulkhead_model::PATTERN_SIZE_LIMIT * patterns.len())
                .dfa_size_limit(bulkhead_model::PATTERN_SIZE_LIMIT * patterns.len())
                .build()
                .map_err(|e| format!("the guardrail's patterns: {e}"))?;
            Some((set, pattern_topic))
        };
        Ok(Self {
            name: spec.name.clone(),
            pii: spec.pii.iter().map(|(k, a)| (*k, *a)).collect(),
            keywords,
            patterns,
            topics: spec.topics.iter().map(|t| t.name.clone()).collect(),
            max_bytes: spec.max_prompt_bytes,
        })
    }

    /// Scans `body`: the size first, then blocked topics, then personal
    /// data (a rejection wins over a redaction).
    pub fn scan(&self, body: &[u8]) -> Result<Scanned, Rejection> {
        if let Some(max) = self.max_bytes
            && u64::try_from(body.len()).unwrap_or(u64::MAX) > max
        {
            return Err(self.reject(Code::GuardrailPromptTooLarge, format!("over {max} bytes")));
        }
        if let Some(topic) = self.topic(body) {
            return Err(self.reject(Code::GuardrailBlockedTopic, format!("topic {topic}")));
        }
        if self.pii.is_empty() {
            return Ok(Scanned::default());
        }
        let findings = find_pii(body, &self.pii);
        let mut scanned = Scanned::default();
        for (kind, action) in &self.pii {
            let count = findings.iter().filter(|f| f.kind == *kind).count();
            if count == 0 {
                continue;
            }
            scanned.found.push((*kind, *action, u32::try_from(count).unwrap_or(u32::MAX)));
            if *action == PiiAction::Reject {
                let mut rejection = self.reject(Code::GuardrailPii, kind.as_str().to_owned());
                rejection.pii = Some(*kind);
                return Err(rejection);
            }
        }
        let redact: Vec<&Finding> =
            findings.iter().filter(|f| self.action(f.kind) == Some(PiiAction::Redact)).collect();
        if !redact.is_empty() {
            let mut out = Vec::with_capacity(body.len());
            let mut at = 0;
            for finding in redact {
                out.extend_from_slice(&body[at..finding.span.start]);
                out.push(b'[');
                out.extend_from_slice(finding.kind.as_str().as_bytes());
                out.push(b']');
                at = finding.span.end;
            }
            out.extend_from_slice(&body[at..]);
            scanned.redacted = Some(out);
        }
        Ok(scanned)
    }

    fn action(&self, kind: PiiKind) -> Option<PiiAction> {
        self.pii.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    fn reject(&self, code: Code, what: String) -> Rejection {
        Rejection { code, rule: format!("{}: {what}", self.name), pii: None }
    }

    /// The first blocked topic the body touches: a keyword as a whole word
    /// (not inside a longer one), or a pattern.
    fn topic(&self, body: &[u8]) -> Option<&str> {
        if let Some((automaton, topics)) = &self.keywords {
            for found in automaton.find_iter(body) {
                let before = found.start().checked_sub(1).map(|i| body[i]);
                let after = body.get(found.end()).copied();
                if !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte) {
                    return Some(&self.topics[topics[found.pattern().as_usize()]]);
                }
            }
        }
        if let Some((set, topics)) = &self.patterns {
            let first = set.matches(body).into_iter().next()?;
            return Some(&self.topics[topics[first]]);
        }
        None
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    kind: PiiKind,
    span: Range<usize>,
}

/// The detectors' shapes, compiled once for the process: each finds
/// candidates that [`valid`] then checks.
fn detector(kind: PiiKind) -> &'static Regex {
    use std::sync::LazyLock;
    #[allow(clippy::expect_used)] // constant patterns, covered by the tests
    fn build(pattern: &str) -> Regex {
        Regex::new(pattern).expect("a constant detector pattern")
    }
    static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
        build(
            r"(?i-u)\b[a-z0-9._%+-]{1,64}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
        )
    });
    static PHONE: LazyLock<Regex> = LazyLock::new(|| {
        build(
            r"(?-u)(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}|(?:\(\d{3}\) ?|\b\d{3}[.-])\d{3}[.-]\d{4})\b",
        )
    });
    static CARD: LazyLock<Regex> = LazyLock::new(|| build(r"(?-u)\b\d(?:[ -]?\d){12,18}\b"));
    static IBAN: LazyLock<Regex> =
        // Groups of four (the printed form) or none, the last one shorter.
        LazyLock::new(|| {
            build(r"(?i-u)\b[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?\b")
        });
    static SSN: LazyLock<Regex> = LazyLock::new(|| build(r"(?-u)\b\d{3}-\d{2}-\d{4}\b"));
    match kind {
        PiiKind::Email => &EMAIL,
        PiiKind::Phone => &PHONE,
        PiiKind::Card => &CARD,
        PiiKind::Iban => &IBAN,
        PiiKind::UsSsn => &SSN,
    }
}

/// The findings of the kinds asked for, in order, without overlaps (where
/// two overlap, the one that starts first wins; at the same start, the
/// longer).
fn find_pii(body: &[u8], kinds: &[(PiiKind, PiiAction)]) -> Vec<Finding> {
    let mut found = Vec::new();
    for (kind, _) in kinds {
        for candidate in detector(*kind).find_iter(body) {
            if valid(*kind, candidate.as_bytes()) {
                found.push(Finding { kind: *kind, span: candidate.range() });
            }
        }
    }
    found.sort_by(|a, b| a.span.start.cmp(&b.span.start).then(b.span.end.cmp(&a.span.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for finding in found {
        if kept.last().is_none_or(|last| finding.span.start >= last.span.end) {
            kept.push(finding);
        }
    }
    kept
}

fn valid(kind: PiiKind, text: &[u8]) -> bool {
    let digits = || text.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0');
    match kind {
        PiiKind::Email => true,
        PiiKind::Phone => (8..=15).contains(&digits().count()),
        PiiKind::Card => {
            let count = digits().count();
            (13..=19).contains(&count) && luhn(digits())
        }
        PiiKind::Iban => iban(text),
        PiiKind::UsSsn => {
            let Ok([a, b, c, g1, g2, s1, s2, s3, s4]) =
                <[u8; 9]>::try_from(digits().collect::<Vec<u8>>())
            else {
                return false;
            };
            let area = u16::from(a) * 100 + u16::from(b) * 10 + u16::from(c);
            area != 0
                && area != 666
                && area < 900
                && [g1, g2] != [0, 0]
                && [s1, s2, s3, s4] != [0; 4]
        }
    }
}

fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: the first four characters moved to the end, letters as
/// 10..35, the number mod 97 is 1.
fn iban(text: &[u8]) -> bool {
    let compact: Vec<u8> =
        text.iter().filter(|b| **b != b' ').map(|b| b.to_ascii_uppercase()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut remainder = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bulkhead_model::BlockedTopic;

    use super::*;

    fn guard(pii: &[(PiiKind, PiiAction)]) -> Guard {
        Guard::compile(&GuardrailSpec {
            name: "default".into(),
            api: None,
            pii: pii.iter().copied().collect::<BTreeMap<_, _>>(),
            topics: vec![BlockedTopic {
                name: "weapons".into(),
                keywords: vec!["nerve agent".into(), "Semtex".into()],
                patterns: vec![r"(?i)\bbuild\s+a\s+bomb\b".into()],
            }],
            max_prompt_bytes: Some(4096),
            scan_responses: false,
        })
        .unwrap()
    }

    fn redacted(guard: &Guard, text: &str) -> String {
        let scanned = guard.scan(text.as_bytes()).unwrap();
        String::from_utf8(scanned.redacted.unwrap_or_else(|| text.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn each_detector_redacts_what_passes_its_check_and_nothing_else() {
        let all: Vec<_> = PiiKind::ALL.iter().map(|k| (*k, PiiAction::Redact)).collect();
        let g = guard(&all);
        let cases = [
            ("mail ada@example.co.uk now", "mail [email] now"),
            ("card 4111 1111 1111 1111.", "card [card]."),
            ("card 4111-1111-1111-1112", "card 4111-1111-1111-1112"), // fails Luhn
            ("iban GB82 WEST 1234 5698 7654 32 ok", "iban [iban] ok"),
            ("iban DE89370400440532013000", "iban [iban]"),
            ("iban GB82WEST12345698765433", "iban GB82WEST12345698765433"), // fails mod 97
            ("call +44 20 7946 0958 today", "call [phone] today"),
            ("call (415) 555-0100", "call [phone]"),
            ("ssn 536-22-1234", "ssn [us_ssn]"),
            ("ssn 666-22-1234 or 536-00-1234", "ssn 666-22-1234 or 536-00-1234"),
            ("order 2026-12-03 #12345678, qty 3", "order 2026-12-03 #12345678, qty 3"),
        ];
        for (input, output) in cases {
            assert_eq!(redacted(&g, input), output, "{input}");
        }
        let json = br#"{"messages":[{"role":"user","content":"pay with 5500 0000 0000 0004, mail bo@x.io"}]}"#;
        let out = g.scan(json).unwrap();
        let text = String::from_utf8(out.redacted.unwrap()).unwrap();
        assert!(text.contains("pay with [card], mail [email]\""), "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
        let redact = PiiAction::Redact;
        assert_eq!(out.found, vec![(PiiKind::Email, redact, 1), (PiiKind::Card, redact, 1)]);
    }

    #[test]
    fn reject_and_log_act_as_asked() {
        let g = guard(&[(PiiKind::Card, PiiAction::Reject), (PiiKind::Email, PiiAction::Log)]);
        let refused = g.scan(b"4111111111111111").unwrap_err();
        let card = Some(PiiKind::Card);
        let expected =
            Rejection { code: Code::GuardrailPii, rule: "default: card".into(), pii: card };
        assert_eq!(refused, expected);
        let logged = g.scan(b"to ada@example.com").unwrap();
        assert_eq!(logged.redacted, None);
        assert_eq!(logged.found, vec![(PiiKind::Email, PiiAction::Log, 1)]);
    }

    #[test]
    fn topics_match_whole_words_and_patterns_and_never_echo_the_text() {
        let g = guard(&[]);
        for text in ["where to buy SEMTEX?", "a nerve agent", "how to Build  a bomb"] {
            let refused = g.scan(text.as_bytes()).unwrap_err();
            assert_eq!(refused.code, Code::GuardrailBlockedTopic);
            assert_eq!(refused.rule, "default: topic weapons");
        }
        assert!(g.scan(b"semtexture and nerve agents' agentic nerves").is_ok());
        let big = vec![b'a'; 4097];
        assert_eq!(g.scan(&big).unwrap_err().code, Code::GuardrailPromptTooLarge);
    }

    #[test]
    fn checks_hold_on_known_values() {
        assert!(luhn([4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1].into_iter()));
        assert!(!luhn([4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2].into_iter()));
        assert!(iban(b"FR1420041010050500013M02606"));
        assert!(iban(b"NL91ABNA0417164300"));
        assert!(!iban(b"NL91ABNA0417164301"));
    }
}
