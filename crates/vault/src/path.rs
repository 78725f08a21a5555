//! Secret paths and values: what may be stored, checked before anything is.

use std::fmt;

use crate::VaultError;

/// Longest secret path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// Longest segment between two slashes.
pub const MAX_SEGMENT_BYTES: usize = 64;
/// Largest secret value, in bytes. Secrets are credentials, keys and
/// certificates; 64 KiB holds a long certificate chain.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A secret's name inside its tenant: slash-separated segments of
/// `A-Z a-z 0-9 . _ -`, such as `db/primary/password`. Never `.` or `..`,
/// never an empty segment, so a path always names one place and cannot
/// climb out of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath(String);

impl SecretPath {
    pub fn parse(path: &str) -> Result<Self, VaultError> {
        let bad = |problem: String| {
            VaultError::InvalidPath(format!(
                "{problem}; a secret path is up to {MAX_PATH_BYTES} bytes of segments joined by \
                 '/', each 1 to {MAX_SEGMENT_BYTES} characters of A-Z, a-z, 0-9, '.', '_' and \
                 '-', such as db/primary/password"
            ))
        };
        if path.is_empty() {
            return Err(bad("the secret path is empty".into()));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(bad(format!("the secret path is {} bytes long", path.len())));
        }
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(bad(format!(
                    "secret path \"{}\" has an empty segment (a leading, trailing or double '/')",
                    path.escape_debug()
                )));
            }
            if segment == "." || segment == ".." {
                return Err(bad(format!("secret path {path:?} contains {segment:?}")));
            }
            if segment.len() > MAX_SEGMENT_BYTES {
                return Err(bad(format!("segment {segment:?} is {} bytes long", segment.len())));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(bad(format!(
                    "secret path \"{}\" contains the character {c:?}",
                    path.escape_debug()
                )));
            }
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Refuses empty and oversized values.
pub fn check_value(value: &[u8]) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::InvalidValue(
            "the secret value is empty; give the value on standard input or with --file".into(),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(VaultError::ValueTooLarge { size: value.len(), max: MAX_VALUE_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["password", "db/primary/password", "tls/example.com.pem", "A_b-c.d/e"] {
            assert_eq!(SecretPath::parse(ok).unwrap().as_str(), ok);
        }
        assert!(SecretPath::parse(&"a".repeat(64)).is_ok());
        let long = vec!["a".repeat(63); 4].join("/");
        assert_eq!(long.len(), 255);
        assert!(SecretPath::parse(&long).is_ok());
    }

    #[test]
    fn refuses_traversal_and_odd_characters() {
        for bad in [
            "", "../x", "a/../b", "./a", "a/.", "..", "/a", "a/", "a//b", "a\0b", "a b", "a\\b",
            "é", "a\nb", "a%2Fb", "a?b", "a*",
        ] {
            let err = SecretPath::parse(bad).unwrap_err();
            assert!(matches!(err, VaultError::InvalidPath(_)), "{bad:?}");
            assert!(err.to_string().contains("such as db/primary/password"), "{err}");
        }
        assert!(SecretPath::parse(&"a".repeat(65)).is_err());
        assert!(SecretPath::parse(&["a"; 129].join("/")).is_err());
    }

    #[test]
    fn value_limits() {
        assert!(check_value(b"x").is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(matches!(check_value(b""), Err(VaultError::InvalidValue(_))));
        assert!(matches!(
            check_value(&vec![0; MAX_VALUE_BYTES + 1]),
            Err(VaultError::ValueTooLarge { .. })
        ));
    }
}
