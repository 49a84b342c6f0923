//! Digests as OCI descriptors spell them: `algorithm:hex`.

/// Hex length of each digest algorithm containerd accepts.
const ALGORITHMS: &[(&str, usize)] = &[("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// Checks `text` the way go-digest's Validate does; the error says what is wrong.
pub fn validate(text: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return Err("invalid checksum digest format".to_string());
    };
    let Some((_, length)) = ALGORITHMS.iter().find(|(name, _)| *name == algorithm) else {
        return Err(format!("unsupported digest algorithm {algorithm:?}"));
    };
    if hex.len() != *length {
        return Err(format!(
            "invalid checksum digest length: {algorithm} needs {length} hex digits, got {}",
            hex.len()
        ));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("invalid checksum digest format: the hex part must be lowercase hexadecimal".to_string());
    }
    Ok(())
}

/// The sha256 digest of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_go_digest() {
        assert!(validate(&sha256(b"x")).is_ok());
        assert!(validate(&format!("sha512:{}", "a".repeat(128))).is_ok());
        for bad in ["", "sha256", "sha256:abc", "md5:0123", &format!("sha256:{}", "A".repeat(64))] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
