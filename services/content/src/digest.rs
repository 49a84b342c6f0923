//! Content digests: `sha256:` followed by 64 lowercase hex characters, the only form accepted.
//!
//! A digest becomes a file name under blobs/sha256/, so nothing but this exact shape may pass.

use std::fmt;

use sha2::Digest as _;

use crate::error::Error;

/// The only algorithm supported, as written before the `:`.
pub const ALGORITHM: &str = "sha256";

const HEX_LENGTH: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `text`, saying precisely what is wrong when it is not a digest.
    pub fn parse(text: &str) -> Result<Digest, Error> {
        let invalid = |problem: String| Error::InvalidArgument(format!("digest {text:?}: {problem}"));
        if text.is_empty() {
            return Err(Error::InvalidArgument("digest must not be empty".into()));
        }
        let Some((algorithm, encoded)) = text.split_once(':') else {
            return Err(invalid(format!("missing algorithm, expected {ALGORITHM}:<{HEX_LENGTH} hex characters>")));
        };
        if algorithm != ALGORITHM {
            return Err(invalid(format!("unsupported algorithm {algorithm:?}, only {ALGORITHM} is supported")));
        }
        if let Some((position, c)) = encoded.char_indices().find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(invalid(format!(
                "character {c:?} at position {} is not lowercase hex",
                algorithm.len() + 1 + position
            )));
        }
        if encoded.len() != HEX_LENGTH {
            return Err(invalid(format!("{ALGORITHM} needs {HEX_LENGTH} hex characters, found {}", encoded.len())));
        }
        Ok(Digest(text.to_string()))
    }

    /// The digest of a finished hash.
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        Digest(format!("{ALGORITHM}:{}", hex::encode(hasher.finalize())))
    }

    /// The digest of `data` (tests and small blobs).
    pub fn of(data: &[u8]) -> Digest {
        Self::from_hasher(sha2::Sha256::new_with_prefix(data))
    }

    /// The 64 hex characters after `sha256:`: the blob's file name.
    pub fn encoded(&self) -> &str {
        &self.0[ALGORITHM.len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sha256_only() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let digest = Digest::parse(empty).unwrap();
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.encoded(), &empty[7..]);
    }

    #[test]
    fn says_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("e3b0c442", "missing algorithm"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm \"md5\""),
            ("sha256:", "found 0"),
            ("sha256:xyz", "'x' at position 7"),
            ("sha256:../../etc/passwd", "'.' at position 7"),
            ("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "not lowercase hex"),
            ("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555", "found 65"),
        ] {
            let err = Digest::parse(text).expect_err(text);
            assert!(matches!(err, Error::InvalidArgument(_)), "{text}");
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
    }
}
