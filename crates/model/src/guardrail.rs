//! A tenant's guardrails: what the gateway's `guard` phase looks for in
//! request bodies (personal data, blocked topics, oversized prompts) and
//! what it does when it finds it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::label::is_simple_label;

/// Why a guardrail was refused; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidGuardrail {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidGuardrail {
    InvalidGuardrail { field, message: message.into() }
}

/// Personal data the guard recognises. Each is checked beyond its shape
/// where a check exists, so that an order number is not a card.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// `local@domain.tld`.
    Email,
    /// An international number written with `+` and 8 to 15 digits, or a
    /// North American one with separators (`(415) 555-0100`,
    /// `415-555-0100`).
    Phone,
    /// 13 to 19 digits, optionally grouped by spaces or dashes, that pass
    /// the Luhn check.
    Card,
    /// An IBAN (2 letters, 2 check digits, then letters and digits, 15 to
    /// 34 in all, written whole or in groups of four separated by single
    /// spaces) whose mod-97 check holds.
    Iban,
    /// A US Social Security number written `AAA-GG-SSSS`, outside the
    /// ranges never issued (area 000, 666 or 900-999; group 00; serial
    /// 0000).
    UsSsn,
}

impl PiiKind {
    pub const ALL: [PiiKind; 5] =
        [PiiKind::Email, PiiKind::Phone, PiiKind::Card, PiiKind::Iban, PiiKind::UsSsn];

    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
        }
    }
}

/// What the guard does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    /// Replaced by a typed placeholder (`[card]`) before the upstream sees
    /// it.
    Redact,
    /// The request is refused: 422 `guardrail_pii`.
    Reject,
    /// Passed as it is, and counted.
    Log,
}

/// A topic the tenant's traffic may not touch: any of its keywords (as
/// whole words, in any letter case) or patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockedTopic {
    /// Named in the refusal (`guardrail_blocked_topic`), which never
    /// echoes the text that matched.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Regular expressions (Rust `regex` syntax: no look-around, no
    /// back-references, so matching is linear in the body's length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

/// A guardrail of one tenant (`kind: Guardrail`), for all its APIs or one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    pub name: String,
    /// The API it applies to; every API of the tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pii: BTreeMap<PiiKind, PiiAction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<BlockedTopic>,
    /// A larger request body is refused: 422 `guardrail_prompt_too_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_bytes: Option<u64>,
    /// Also scan responses that are not streamed.
    #[serde(default)]
    pub scan_responses: bool,
}

const MAX_TOPICS: usize = 64;
/// Keywords and patterns of one guardrail, all topics together: what one
/// tenant may make every request of its pay for.
const MAX_KEYWORDS: usize = 1_000;
const MAX_PATTERNS: usize = 64;
/// The most memory the compiled set of all a guardrail's patterns may
/// take.
const PATTERN_SET_SIZE_LIMIT: usize = 2 << 20;
/// The most memory one compiled pattern may take: a pattern past it (a
/// counted repetition of a large class, say) is refused when applied
/// rather than slowing every request.
pub const PATTERN_SIZE_LIMIT: usize = 256 << 10;

impl GuardrailSpec {
    /// Checks every field; each pattern is compiled with the limit the
    /// gateway compiles it with, so what is applied is what runs.
    pub fn validate(&self) -> Result<(), InvalidGuardrail> {
        if !is_simple_label(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a valid guardrail name; use 1 to 40 characters of a-z, 0-9 \
                     and '-'",
                    self.name
                ),
            ));
        }
        if self.pii.is_empty() && self.topics.is_empty() && self.max_prompt_bytes.is_none() {
            return Err(invalid(
                "pii",
                "the guardrail checks nothing; give pii, topics or max_prompt_bytes",
            ));
        }
        if self.max_prompt_bytes == Some(0) {
            return Err(invalid("max_prompt_bytes", "0 refuses every request; give 1 or more"));
        }
        if self.topics.len() > MAX_TOPICS {
            return Err(invalid("topics", format!("at most {MAX_TOPICS} topics")));
        }
        let keywords: usize = self.topics.iter().map(|t| t.keywords.len()).sum();
        let patterns: usize = self.topics.iter().map(|t| t.patterns.len()).sum();
        if keywords > MAX_KEYWORDS || patterns > MAX_PATTERNS {
            return Err(invalid(
                "topics",
                format!(
                    "{keywords} keywords and {patterns} patterns: a guardrail has at most \
                     {MAX_KEYWORDS} keywords and {MAX_PATTERNS} patterns in all its topics"
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for topic in &self.topics {
            if !is_simple_label(&topic.name) {
                return Err(invalid(
                    "topics",
                    format!("topic name {:?}: use a-z, 0-9 and '-'", topic.name),
                ));
            }
            if !names.insert(topic.name.as_str()) {
                return Err(invalid("topics", format!("topic {} is given twice", topic.name)));
            }
            if topic.keywords.is_empty() && topic.patterns.is_empty() {
                return Err(invalid(
                    "topics",
                    format!("topic {} has neither keywords nor patterns", topic.name),
                ));
            }
            if let Some(empty) = topic.keywords.iter().position(|k| k.trim().is_empty()) {
                return Err(invalid(
                    "topics",
                    format!("topic {}: keyword {} is empty", topic.name, empty + 1),
                ));
            }
            for (i, pattern) in topic.patterns.iter().enumerate() {
                compile_pattern(pattern).map_err(|why| {
                    invalid("topics", format!("topic {}, pattern {}: {why}", topic.name, i + 1))
                })?;
            }
        }
        self.pattern_set().map(|_| ())
    }

    /// Every topic's patterns as one set, in topic order, as the gateway
    /// runs them: each pattern's topic is the index's. `None` when there
    /// are no patterns.
    pub fn pattern_set(
        &self,
    ) -> Result<Option<(regex::bytes::RegexSet, Vec<usize>)>, InvalidGuardrail> {
        let (patterns, topics): (Vec<&str>, Vec<usize>) = self
            .topics
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.patterns.iter().map(move |p| (p.as_str(), i)))
            .unzip();
        if patterns.is_empty() {
            return Ok(None);
        }
        let set = regex::bytes::RegexSetBuilder::new(&patterns)
            .size_limit(PATTERN_SET_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SET_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => invalid(
                    "topics",
                    format!(
                        "the patterns together compile to more than {} MiB; use fewer or \
                         simpler ones",
                        PATTERN_SET_SIZE_LIMIT >> 20
                    ),
                ),
                other => invalid("topics", format!("the patterns: {other}")),
            })?;
        Ok(Some((set, topics)))
    }
}

/// Compiles a topic's pattern as the gateway does (byte-oriented, Unicode
/// aware, within [`PATTERN_SIZE_LIMIT`]).
fn compile_pattern(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => format!(
                "{pattern:?} compiles to more than {} KiB; simplify it (a counted repetition \
                 such as {{1000}} of a class multiplies its size)",
                PATTERN_SIZE_LIMIT >> 10
            ),
            other => format!("{pattern:?} is not a valid pattern: {other}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuardrailSpec {
        GuardrailSpec {
            name: "default".into(),
            api: None,
            pii: BTreeMap::from([(PiiKind::Card, PiiAction::Redact)]),
            topics: vec![BlockedTopic {
                name: "weapons".into(),
                keywords: vec!["nerve agent".into()],
                patterns: vec![r"(?i)\bbuild\s+a\s+bomb\b".into()],
            }],
            max_prompt_bytes: Some(65_536),
            scan_responses: false,
        }
    }

    #[test]
    fn a_full_spec_is_valid_and_reads_from_yaml_like_json() {
        spec().validate().unwrap();
        let parsed: GuardrailSpec = serde_json::from_value(serde_json::json!({
            "name": "pii", "pii": {"email": "redact", "card": "reject", "us_ssn": "log"}
        }))
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.pii[&PiiKind::UsSsn], PiiAction::Log);
    }

    #[test]
    fn bad_fields_are_named() {
        type Change = Box<dyn Fn(&mut GuardrailSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("name", Box::new(|s| s.name = "Bad Name".into())),
            ("max_prompt_bytes", Box::new(|s| s.max_prompt_bytes = Some(0))),
            ("topics", Box::new(|s| s.topics[0].patterns = vec!["(unclosed".into()])),
            ("topics", Box::new(|s| s.topics[0].keywords = vec![" ".into()])),
            ("topics", Box::new(|s| s.topics.push(s.topics[0].clone()))),
            (
                "pii",
                Box::new(|s| {
                    s.pii.clear();
                    s.topics.clear();
                    s.max_prompt_bytes = None;
                }),
            ),
        ];
        for (field, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn a_pattern_that_would_compile_huge_is_refused_with_its_place() {
        let mut s = spec();
        s.topics[0].patterns.push(r"\w{1000}\w{1000}".into());
        let error = s.validate().unwrap_err();
        assert!(error.message.contains("pattern 2"), "{error}");
        assert!(error.message.contains("KiB"), "{error}");
        assert!(serde_json::from_str::<GuardrailSpec>(r#"{"name":"x","unknown":1}"#).is_err());
    }
}
