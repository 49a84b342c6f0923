//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) and their overlayfs forms (a 0/0 character
//! device, the `trusted.overlay.opaque=y` xattr), plus which xattrs may cross a layer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

pub(crate) const PREFIX: &[u8] = b".wh.";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the image content.
const META_PREFIX: &[u8] = b".wh..wh.";
pub(crate) const OPAQUE: &[u8] = b".wh..wh..opq";

/// The xattr overlayfs reads to make a directory hide its lower layers.
pub(crate) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a layer entry's last name means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    /// A normal entry.
    None,
    /// `.wh..wh..opq`: the directory hides what lower layers put in it.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Remove(&'a OsStr),
    /// Other `.wh..wh.*` names (AUFS bookkeeping): ignored, as Docker does.
    Meta,
}

pub(crate) fn classify(name: &OsStr) -> Result<Kind<'_>, &'static str> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE {
        return Ok(Kind::Opaque);
    }
    if bytes.starts_with(META_PREFIX) {
        return Ok(Kind::Meta);
    }
    let Some(target) = bytes.strip_prefix(PREFIX) else {
        return Ok(Kind::None);
    };
    match target {
        b"" | b"." | b".." => Err("whiteout names no entry in its directory"),
        _ => Ok(Kind::Remove(OsStr::from_bytes(target))),
    }
}

/// Overlayfs' own xattrs (`trusted.overlay.*`, and `user.overlay.*` with the `userxattr`
/// mount option): a layer carrying them could hide or redirect lower layers' files.
pub(crate) fn is_overlay_xattr(key: &[u8]) -> bool {
    key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.")
}

/// Xattrs a produced layer carries: all but overlayfs' own and the host's SELinux labels.
pub(crate) fn is_exported_xattr(key: &[u8]) -> bool {
    !is_overlay_xattr(key) && key != b"security.selinux"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("file")), Ok(Kind::None));
        assert_eq!(classify(OsStr::new(".wh.file")), Ok(Kind::Remove(OsStr::new("file"))));
        assert_eq!(classify(OsStr::new(".wh..hidden")), Ok(Kind::Remove(OsStr::new(".hidden"))));
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), Ok(Kind::Opaque));
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), Ok(Kind::Meta));
        assert!(classify(OsStr::new(".wh...")).is_err());
        assert!(classify(OsStr::new(".wh..")).is_err());
        assert!(classify(OsStr::new(".wh.")).is_err());
    }

    #[test]
    fn xattr_policy() {
        assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(is_overlay_xattr(b"user.overlay.redirect"));
        assert!(!is_overlay_xattr(b"trusted.overlayfoo"));
        assert!(is_exported_xattr(b"security.capability"));
        assert!(is_exported_xattr(b"user.note"));
        assert!(!is_exported_xattr(b"security.selinux"));
        assert!(!is_exported_xattr(b"trusted.overlay.origin"));
    }
}
