//! containerd's `containerd.io/distribution.source.<host>` label: which repositories of a
//! registry hold a blob, so a later push there can mount it instead of uploading it.

use crate::reference::Reference;

const PREFIX: &str = "containerd.io/distribution.source.";

/// The label's key for `reference`'s registry (its host name, no port).
pub fn key(reference: &Reference) -> String {
    format!("{PREFIX}{}", reference.hostname())
}

/// The label's value with `repository` added: a comma-separated, sorted set.
pub fn with_repository(existing: Option<&String>, repository: &str) -> String {
    let mut repositories: Vec<&str> =
        existing.map(|e| e.split(',').filter(|r| !r.is_empty()).collect()).unwrap_or_default();
    repositories.push(repository);
    repositories.sort_unstable();
    repositories.dedup();
    repositories.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sorted_sets_without_repeats() {
        assert_eq!(with_repository(None, "library/busybox"), "library/busybox");
        let existing = "library/alpine,library/busybox".to_string();
        assert_eq!(with_repository(Some(&existing), "library/busybox"), "library/alpine,library/busybox");
        assert_eq!(with_repository(Some(&existing), "a/b"), "a/b,library/alpine,library/busybox");
        assert_eq!(with_repository(Some(&"c,a".to_string()), "b"), "a,b,c");
    }

    #[test]
    fn keys_name_the_host_without_port() {
        let reference = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        assert_eq!(key(&reference), "containerd.io/distribution.source.127.0.0.1");
    }
}
