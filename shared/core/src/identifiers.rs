//! containerd's identifier rule for namespaces, container ids and lease ids.

use tonic::Status;

/// Longest identifier containerd accepts.
pub const MAX_LENGTH: usize = 76;

/// Checks `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters.
///
/// The error is InvalidArgument and names `what` (e.g. "namespace") and the offending value.
pub fn validate(what: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what}: identifier must not be empty")));
    }
    if id.len() > MAX_LENGTH {
        return Err(Status::invalid_argument(format!(
            "{what}: identifier {id:?} is {} characters long, longer than {MAX_LENGTH}",
            id.len()
        )));
    }
    let mut previous_was_separator = true;
    for (position, c) in id.char_indices() {
        let separator = matches!(c, '.' | '_' | '-');
        let valid = c.is_ascii_alphanumeric() || (separator && !previous_was_separator);
        if !valid {
            return Err(Status::invalid_argument(format!(
                "{what}: identifier {id:?} must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)*, \
                 character {c:?} at position {position} breaks it"
            )));
        }
        previous_was_separator = separator;
    }
    if previous_was_separator {
        return Err(Status::invalid_argument(format!("{what}: identifier {id:?} must not end with a separator")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_identifiers() {
        for id in ["default", "k8s.io", "a", "a-b_c.d", "A1", &"x".repeat(76)] {
            assert!(validate("id", id).is_ok(), "{id} should be valid");
        }
    }

    #[test]
    fn rejects_bad_identifiers() {
        for id in ["", "-a", "a-", "a..b", "a/b", "ä", "a b", &"x".repeat(77), ".."] {
            let err = validate("id", id).expect_err(id);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id}");
        }
    }
}
