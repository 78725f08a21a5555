//! The guard's scanner: finds personal data, blocked topics and oversized
//! prompts in text, as a tenant's guardrail says, and redacts or refuses.
//! Compiled once per snapshot ([`Guard::compile`]); a check is linear in
//! the text's length (the `regex` crate's engines, one Aho-Corasick
//! automaton for every keyword, one set for every pattern) and allocates
//! only when it redacts.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bulkhead_model::{GuardrailSpec, PiiAction, PiiKind};
use regex::bytes::{Regex, RegexSet};

use crate::error::Code;

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
    /// Compiles a spec that passed [`GuardrailSpec::validate`] (the
    /// control plane validates what it stores, and again what it reads
    /// back, so it is not checked a third time here); fails only on one
    /// that did not.
    pub fn compile(spec: &GuardrailSpec) -> Result<Self, String> {
        let mut words = Vec::new();
        let mut word_topic = Vec::new();
        for (i, topic) in spec.topics.iter().enumerate() {
            for keyword in &topic.keywords {
                words.push(keyword.trim().to_owned());
                word_topic.push(i);
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
        let patterns = spec.pattern_set().map_err(|e| e.to_string())?;
        Ok(Self {
            name: spec.name.clone(),
            pii: spec.pii.iter().map(|(k, a)| (*k, *a)).collect(),
            keywords,
            patterns,
            topics: spec.topics.iter().map(|t| t.name.clone()).collect(),
            max_bytes: spec.max_prompt_bytes,
        })
    }

    /// Refuses a body larger than the guardrail allows.
    pub fn oversized(&self, length: u64) -> Option<Rejection> {
        let max = self.max_bytes?;
        (length > max)
            .then(|| self.reject(Code::GuardrailPromptTooLarge, format!("over {max} bytes")))
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Checks `text` for blocked topics, then for personal data the
    /// guardrail refuses; returns every finding of personal data, by kind
    /// and action.
    pub fn check(&self, text: &[u8]) -> Result<Vec<(PiiKind, PiiAction, u32)>, Rejection> {
        if let Some(topic) = self.topic(text) {
            return Err(self.reject(Code::GuardrailBlockedTopic, format!("topic {topic}")));
        }
        if self.pii.is_empty() {
            return Ok(Vec::new());
        }
        let findings = find_pii(text, &self.pii);
        let mut found = Vec::new();
        for (kind, action) in &self.pii {
            let count = findings.iter().filter(|f| f.kind == *kind).count();
            if count == 0 {
                continue;
            }
            if *action == PiiAction::Reject {
                let mut rejection = self.reject(Code::GuardrailPii, kind.as_str().to_owned());
                rejection.pii = Some(*kind);
                return Err(rejection);
            }
            found.push((*kind, *action, u32::try_from(count).unwrap_or(u32::MAX)));
        }
        Ok(found)
    }

    /// `text` with the personal data the guardrail redacts replaced by
    /// placeholders (`[card]`); `None` when there is none.
    pub fn redact(&self, text: &[u8]) -> Option<Vec<u8>> {
        if !self.pii.iter().any(|(_, a)| *a == PiiAction::Redact) {
            return None;
        }
        let findings = find_pii(text, &self.pii);
        let redact: Vec<&Finding> =
            findings.iter().filter(|f| self.action(f.kind) == Some(PiiAction::Redact)).collect();
        if redact.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for finding in redact {
            out.extend_from_slice(&text[at..finding.span.start]);
            out.push(b'[');
            out.extend_from_slice(finding.kind.as_str().as_bytes());
            out.push(b']');
            at = finding.span.end;
        }
        out.extend_from_slice(&text[at..]);
        Some(out)
    }

    /// The whole of one guardrail on one text: the size, then
    /// [`Guard::check`], then [`Guard::redact`].
    pub fn scan(&self, body: &[u8]) -> Result<Scanned, Rejection> {
        if let Some(rejection) = self.oversized(u64::try_from(body.len()).unwrap_or(u64::MAX)) {
            return Err(rejection);
        }
        let found = self.check(body)?;
        let redacts = found.iter().any(|(_, action, _)| *action == PiiAction::Redact);
        Ok(Scanned { redacted: if redacts { self.redact(body) } else { None }, found })
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
