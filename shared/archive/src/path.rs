//! Layer entry names, cleaned into components that stay inside the root.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// A cleaned relative path: non-empty components, none of them `.`, `..` or containing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RelPath(Vec<OsString>);

impl RelPath {
    /// Cleans an entry name like Go's `filepath.Clean` on `/`+name: a leading `/` is ignored
    /// (absolute names are relative to the root) and `a/../b` is `b`. A `..` that would climb
    /// above the root is an error rather than being clamped: such a layer is broken or hostile.
    /// `Ok(None)` is the root itself.
    pub(crate) fn clean(name: &[u8]) -> Result<Option<RelPath>, &'static str> {
        if name.contains(&0) {
            return Err("name contains a NUL byte");
        }
        let mut parts: Vec<OsString> = Vec::new();
        for part in name.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err("path escapes the root");
                    }
                }
                _ => parts.push(OsStr::from_bytes(part).to_owned()),
            }
        }
        Ok(if parts.is_empty() { None } else { Some(RelPath(parts)) })
    }

    pub(crate) fn from_components(parts: Vec<OsString>) -> RelPath {
        debug_assert!(!parts.is_empty());
        RelPath(parts)
    }

    /// The parent's components (empty for an entry directly under the root) and the last name.
    pub(crate) fn split_last(&self) -> (&[OsString], &OsStr) {
        let (last, parent) = self.0.split_last().expect("a RelPath is never empty");
        (parent, last)
    }

    /// The path joined with `/`, as raw bytes (tar names, error messages).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        join(&self.0)
    }

    pub(crate) fn display(&self) -> String {
        String::from_utf8_lossy(&self.to_bytes()).into_owned()
    }
}

/// Components joined with `/`.
pub(crate) fn join(parts: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<Option<String>, &'static str> {
        RelPath::clean(s.as_bytes()).map(|p| p.map(|p| p.display()))
    }

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean("a/b/c"), Ok(Some("a/b/c".into())));
        assert_eq!(clean("./a//b/"), Ok(Some("a/b".into())));
        assert_eq!(clean("/etc/passwd"), Ok(Some("etc/passwd".into())));
        assert_eq!(clean("a/../b"), Ok(Some("b".into())));
        assert_eq!(clean("a/b/../../c/."), Ok(Some("c".into())));
        assert_eq!(clean("./"), Ok(None));
        assert_eq!(clean("/"), Ok(None));
        assert_eq!(clean("a/.."), Ok(None));
        assert_eq!(clean("..."), Ok(Some("...".into())));
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(clean(".."), Err("path escapes the root"));
        assert_eq!(clean("../etc/passwd"), Err("path escapes the root"));
        assert_eq!(clean("a/../../etc"), Err("path escapes the root"));
        assert_eq!(clean("/../x"), Err("path escapes the root"));
        assert_eq!(RelPath::clean(b"a\0b"), Err("name contains a NUL byte"));
    }

    #[test]
    fn splits_last() {
        let p = RelPath::clean(b"a/b/c").unwrap().unwrap();
        let (parent, name) = p.split_last();
        assert_eq!(parent, &[OsString::from("a"), OsString::from("b")]);
        assert_eq!(name, "c");
    }
}
