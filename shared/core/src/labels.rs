//! containerd's label limits.

use std::collections::HashMap;
use tonic::Status;

/// Longest key plus value containerd accepts for one label.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Rejects empty keys and any label whose key and value together exceed 4096 bytes.
pub fn validate(labels: &HashMap<String, String>) -> Result<(), Status> {
    for (key, value) in labels {
        validate_one(key, value)?;
    }
    Ok(())
}

/// Checks one label.
pub fn validate_one(key: &str, value: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("label key must not be empty"));
    }
    let size = key.len() + value.len();
    if size > MAX_LABEL_SIZE {
        let shown: String = key.chars().take(64).collect();
        return Err(Status::invalid_argument(format!(
            "label key and value length ({size} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {shown}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_on_key_plus_value() {
        assert!(validate_one("k", &"v".repeat(4095)).is_ok());
        let err = validate_one("k", &"v".repeat(4096)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(validate_one("", "v").is_err());
    }
}
