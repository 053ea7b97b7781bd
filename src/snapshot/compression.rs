//! Compression detected by content (magic bytes, never file names) and streaming
//! decompression of gzip, bzip2, xz and zstd, all in pure Rust.

use std::io::{self, BufRead, Read};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Recognises the format from the first bytes of a stream.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(b"BZh") {
            Compression::Bzip2
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `r` in the decompressor its first bytes call for (or passes it through).
pub fn decompressing_reader<R>(mut r: R) -> Result<(Compression, Box<dyn Read>)>
where
    R: BufRead + Send + 'static,
{
    let kind = {
        let head = r.fill_buf()?;
        Compression::detect(head)
    };
    let reader: Box<dyn Read> = match kind {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| anyhow!("invalid zstd stream: {e}"))?,
        ),
        Compression::Xz => Box::new(XzReader::spawn(r)?),
    };
    Ok((kind, reader))
}

/// True if a 512-byte block is a valid tar header (its checksum matches).
pub fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 || block[..512].iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let text = text.trim_start();
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

/// xz decompression on a helper thread (the decoder only writes), read through a pipe.
/// A decoding error is reported by the read that would have reached the end.
struct XzReader {
    pipe: io::PipeReader,
    worker: Option<JoinHandle<Result<(), String>>>,
}

impl XzReader {
    fn spawn<R: BufRead + Send + 'static>(mut input: R) -> Result<XzReader> {
        let (reader, mut writer) = io::pipe()?;
        let worker = std::thread::Builder::new()
            .name("xz".into())
            .spawn(move || {
                lzma_rs::xz_decompress(&mut input, &mut writer).map_err(|e| e.to_string())
            })?;
        Ok(XzReader {
            pipe: reader,
            worker: Some(worker),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(worker) = self.worker.take() {
                match worker.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("invalid xz stream: {e}"),
                        ))
                    }
                    Err(_) => return Err(io::Error::other("the xz decoder failed")),
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn round_trip(compressed: Vec<u8>, expected: Compression) {
        let (kind, mut r) = decompressing_reader(Cursor::new(compressed)).unwrap();
        assert_eq!(kind, expected);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello hello hello".repeat(1000));
    }

    #[test]
    fn decompresses_every_format() {
        let data = b"hello hello hello".repeat(1000);
        round_trip(data.clone(), Compression::None);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        round_trip(gz.finish().unwrap(), Compression::Gzip);

        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&data).unwrap();
        round_trip(bz.finish().unwrap(), Compression::Bzip2);

        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut Cursor::new(&data), &mut xz).unwrap();
        round_trip(xz, Compression::Xz);

        let zst = zstd::encode_all(Cursor::new(&data), 3).unwrap();
        round_trip(zst, Compression::Zstd);
    }

    #[test]
    fn corrupt_xz_is_an_error_not_a_short_read() {
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut Cursor::new(b"some data".repeat(100)), &mut xz).unwrap();
        let n = xz.len();
        xz.truncate(n - 10);
        let (_, mut r) = decompressing_reader(Cursor::new(xz)).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }

    #[test]
    fn tar_headers_are_recognised_by_checksum() {
        let mut h = tar::Header::new_ustar();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert!(looks_like_tar(h.as_bytes()));
        let mut bad = *h.as_bytes();
        bad[0] ^= 1;
        assert!(!looks_like_tar(&bad));
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(b"short"));
    }
}
