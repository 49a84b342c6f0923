//! Extended attributes of a path itself (never following a symlink), through libc.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Calls `fill(buffer)` (a libc call returning a size or -1) with a buffer that grows until
/// the value fits: the size can change between asking and reading.
fn read_sized(mut fill: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; 256];
    loop {
        let len = fill(&mut buffer);
        if len >= 0 {
            buffer.truncate(len.unsigned_abs());
            return Ok(buffer);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        let needed = fill(&mut []);
        if needed < 0 {
            return Err(io::Error::last_os_error());
        }
        buffer.resize(needed.unsigned_abs().max(buffer.len() * 2), 0);
    }
}

/// Names of the extended attributes of `path`.
pub fn list(path: &Path) -> io::Result<Vec<OsString>> {
    let c_path = c_path(path)?;
    let names = read_sized(|buffer| {
        // SAFETY: c_path is NUL-terminated; the pointer and length describe `buffer` (a zero
        // length only asks for the size and writes nothing).
        unsafe { libc::llistxattr(c_path.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) }
    })?;
    Ok(names.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| OsString::from_vec(n.to_vec())).collect())
}

/// The value of attribute `name` of `path`.
pub fn get(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    read_sized(|buffer| {
        // SAFETY: both strings are NUL-terminated; the pointer and length describe `buffer`.
        unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) }
    })
}

/// Sets attribute `name` of `path` to `value`.
pub fn set(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated; the pointer and length describe `value`.
    let result = unsafe { libc::lsetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_get() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let big = vec![b'v'; 1000];
        set(&file, OsStr::new("user.berth.small"), b"1").unwrap();
        set(&file, OsStr::new("user.berth.big"), &big).unwrap();
        let mut names = list(&file).unwrap();
        names.retain(|n| n.as_bytes().starts_with(b"user.berth."));
        names.sort();
        assert_eq!(names, [OsString::from("user.berth.big"), OsString::from("user.berth.small")]);
        assert_eq!(get(&file, OsStr::new("user.berth.big")).unwrap(), big);
        assert_eq!(get(&file, OsStr::new("user.berth.missing")).unwrap_err().raw_os_error(), Some(libc::ENODATA));
    }
}
