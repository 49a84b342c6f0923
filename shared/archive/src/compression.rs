use std::io::{self, Read, Write};

use crate::{Error, Result};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// The compression of an OCI or Docker layer media type; any other type is an error
    /// naming it.
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        Ok(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => return Err(Error::UnsupportedMediaType(other.to_owned())),
        })
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The compression of a stream starting with `prefix` (its first bytes), by magic number,
    /// as containerd does when applying: media types are not always accurate.
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` in a decompressor chosen from its first bytes.
pub(crate) fn decoder<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut prefix = Vec::with_capacity(ZSTD_MAGIC.len());
    while prefix.len() < ZSTD_MAGIC.len() {
        let mut byte = [0u8; 4];
        let want = ZSTD_MAGIC.len() - prefix.len();
        match reader.read(&mut byte[..want]) {
            Ok(0) => break,
            Ok(n) => prefix.extend_from_slice(&byte[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = Compression::detect(&prefix);
    let stream = io::Cursor::new(prefix).chain(reader);
    Ok(match compression {
        Compression::None => Box::new(stream),
        // Layers may be several concatenated gzip members (Go reads them as one stream).
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
    })
}

/// A compressor that can be finished to get the underlying writer back.
pub(crate) enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(compression: Compression, writer: W) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::None(writer),
            // GzBuilder writes mtime 0 and no file name: the same input gives the same bytes.
            Compression::Gzip => Encoder::Gzip(flate2::GzBuilder::new().write(writer, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(writer, 3)?),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Compression::Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Compression::Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar", Compression::None),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression::Gzip),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Compression::Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression::Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar", Compression::None),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression::Gzip),
        ];
        for (media_type, want) in cases {
            assert_eq!(Compression::from_media_type(media_type).unwrap(), want, "{media_type}");
        }
        let err = Compression::from_media_type("application/vnd.oci.image.config.v1+json").unwrap_err();
        assert_eq!(err.to_string(), "unsupported layer media type \"application/vnd.oci.image.config.v1+json\"");
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::from_media_type(c.media_type()).unwrap(), c);
        }
    }

    fn roundtrip(compression: Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(compression, Vec::new()).unwrap();
        enc.write_all(data).unwrap();
        let compressed = enc.finish().unwrap();
        assert_eq!(Compression::detect(&compressed), compression);
        let mut out = Vec::new();
        decoder(&compressed[..]).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn decoder_detects_and_roundtrips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(c, &data), data);
        }
        // Uncompressed (and shorter than a magic number) passes through.
        let mut out = Vec::new();
        decoder(&b"ab"[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }

    #[test]
    fn gzip_output_is_deterministic() {
        let a = Encoder::new(Compression::Gzip, Vec::new()).unwrap().finish().unwrap();
        // Header: magic, CM=8, FLG=0 (no name), MTIME=0.
        assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }
}
