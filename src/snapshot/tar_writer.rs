//! A deterministic tar writer: ustar headers, PAX extended headers for whatever ustar cannot
//! hold (long names and link targets, xattrs, large ids, sizes and times), no user or group
//! names, no atime or ctime. The same entries always give the same bytes.

use std::io::{self, Read, Write};

use anyhow::{bail, Result};

/// What kind of tar entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarKind {
    /// A regular file of `size` bytes; the data follows.
    File {
        /// Exact number of data bytes.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link to the target.
    Symlink(String),
    /// A hard link to an earlier entry of the same archive (path as written there).
    Hardlink(String),
    /// A named pipe.
    Fifo,
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
}

/// The metadata of one tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarHeader {
    /// Path relative to the archive root, `/`-separated, without a leading `./` or `/`.
    pub path: String,
    /// Entry kind.
    pub kind: TarKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, written as `SCHILY.xattr.*` PAX records, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Streams tar entries into `W`.
pub struct TarWriter<W: Write> {
    out: W,
    /// The copy buffer, kept between entries; grows to the largest entry, up to 1 MiB.
    buf: Vec<u8>,
}

const BLOCK: usize = 512;
/// The largest read of an entry's data.
const COPY_BUF_MAX: u64 = 1 << 20;
/// Largest value of an 11-digit octal ustar field.
const OCTAL11_MAX: u64 = 0o77777777777;
/// Largest value of a 7-digit octal ustar field.
const OCTAL7_MAX: u64 = 0o7777777;

impl<W: Write> TarWriter<W> {
    /// A writer producing an archive on `out`.
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter {
            out,
            buf: Vec::new(),
        }
    }

    /// Writes one entry. For files, exactly `size` bytes are read from `data`: a shorter
    /// source is an error (the file changed while it was being read).
    pub fn append(&mut self, h: &TarHeader, data: &mut dyn Read) -> Result<()> {
        let mut name = h
            .path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if h.kind == TarKind::Dir && !name.ends_with('/') {
            name.push('/');
        }
        if name.is_empty() || name == "/" {
            bail!("a tar entry needs a path");
        }
        let (typeflag, size, link) = match &h.kind {
            TarKind::File { size } => (b'0', *size, None),
            TarKind::Dir => (b'5', 0, None),
            TarKind::Symlink(t) => (b'2', 0, Some(t.as_str())),
            TarKind::Hardlink(t) => (b'1', 0, Some(t.as_str())),
            TarKind::Fifo => (b'6', 0, None),
            TarKind::CharDevice(..) => (b'3', 0, None),
            TarKind::BlockDevice(..) => (b'4', 0, None),
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (prefix, short_name) = match split_ustar_name(&name) {
            Some(split) => split,
            None => {
                pax.push(("path".into(), name.as_bytes().to_vec()));
                (String::new(), truncate_bytes(&name, 100))
            }
        };
        let link_field = match link {
            Some(l) if l.len() > 100 => {
                pax.push(("linkpath".into(), l.as_bytes().to_vec()));
                truncate_bytes(l, 100)
            }
            Some(l) => l.to_string(),
            None => String::new(),
        };
        if h.uid > OCTAL7_MAX {
            pax.push(("uid".into(), h.uid.to_string().into_bytes()));
        }
        if h.gid > OCTAL7_MAX {
            pax.push(("gid".into(), h.gid.to_string().into_bytes()));
        }
        if size > OCTAL11_MAX {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        if h.mtime < 0 || h.mtime as u64 > OCTAL11_MAX {
            pax.push(("mtime".into(), h.mtime.to_string().into_bytes()));
        }
        let mut xattrs = h.xattrs.clone();
        xattrs.sort();
        for (k, v) in xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v));
        }
        if !pax.is_empty() {
            self.write_pax(&pax)?;
        }

        let mut block = [0u8; BLOCK];
        put_str(&mut block[0..100], &short_name);
        put_octal(&mut block[100..108], u64::from(h.mode & 0o7777));
        put_octal(&mut block[108..116], h.uid.min(OCTAL7_MAX));
        put_octal(&mut block[116..124], h.gid.min(OCTAL7_MAX));
        put_octal(&mut block[124..136], size.min(OCTAL11_MAX));
        put_octal(
            &mut block[136..148],
            (h.mtime.max(0) as u64).min(OCTAL11_MAX),
        );
        block[156] = typeflag;
        put_str(&mut block[157..257], &link_field);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        if let TarKind::CharDevice(ma, mi) | TarKind::BlockDevice(ma, mi) = h.kind {
            put_octal(&mut block[329..337], u64::from(ma).min(OCTAL7_MAX));
            put_octal(&mut block[337..345], u64::from(mi).min(OCTAL7_MAX));
        }
        put_str(&mut block[345..500], &prefix);
        finish_checksum(&mut block);
        self.out.write_all(&block)?;
        if size > 0 {
            let want = size.min(COPY_BUF_MAX) as usize;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let copied = copy_with(&mut data.take(size), &mut self.out, &mut self.buf[..want])?;
            if copied != size {
                bail!(
                    "{}: expected {size} bytes but read {copied} (the file changed while it was being read)",
                    h.path
                );
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_pax(&mut self, records: &[(String, Vec<u8>)]) -> Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            // "LEN KEY=VALUE\n", where LEN counts its own digits.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest > len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut block = [0u8; BLOCK];
        put_str(&mut block[0..100], "././@PaxHeader");
        put_octal(&mut block[100..108], 0o644);
        put_octal(&mut block[108..116], 0);
        put_octal(&mut block[116..124], 0);
        put_octal(&mut block[124..136], body.len() as u64);
        put_octal(&mut block[136..148], 0);
        block[156] = b'x';
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        finish_checksum(&mut block);
        self.out.write_all(&block)?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

/// Splits a name into ustar's prefix (≤155 bytes) and name (≤100 bytes) at a `/`, or
/// `None` when it cannot be stored without a PAX record (too long, or not ASCII).
fn split_ustar_name(name: &str) -> Option<(String, String)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= 100 {
        return Some((String::new(), name.to_string()));
    }
    let bytes = name.as_bytes();
    // The split slash may not be the last byte (a directory's trailing slash).
    let search_end = bytes.len().saturating_sub(1);
    for (i, &b) in bytes[..search_end].iter().enumerate().rev() {
        if b == b'/' && i <= 155 && bytes.len() - i - 1 <= 100 {
            return Some((name[..i].to_string(), name[i + 1..].to_string()));
        }
    }
    None
}

fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn put_str(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let text = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn finish_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// `io::copy` with reads the size of `buf` (the writer's, up to 1 MiB): entry data comes
/// through `dyn Read`/`dyn Write`, where `io::copy` falls back to 8 KiB, a system
/// call per 8 KiB of a layer or blob.
fn copy_with(r: &mut dyn Read, w: &mut dyn Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: TarKind) -> TarHeader {
        TarHeader {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn round_trips_through_the_tar_crate() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut w = TarWriter::new(Vec::new());
        w.append(&header("dir", TarKind::Dir), &mut io::empty())
            .unwrap();
        w.append(
            &header("dir/file", TarKind::File { size: 5 }),
            &mut &b"hello"[..],
        )
        .unwrap();
        let mut x = header(&long, TarKind::File { size: 0 });
        x.xattrs = vec![("user.k".into(), b"v".to_vec())];
        x.uid = 5_000_000;
        w.append(&x, &mut io::empty()).unwrap();
        w.append(
            &header("ln", TarKind::Symlink("t".repeat(200))),
            &mut io::empty(),
        )
        .unwrap();
        w.append(
            &header("hl", TarKind::Hardlink("dir/file".into())),
            &mut io::empty(),
        )
        .unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == long {
                assert_eq!(e.header().uid().unwrap(), 5_000_000); // from the PAX record
                let exts: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| x.unwrap().key().unwrap().to_string())
                    .collect();
                assert!(exts.contains(&"SCHILY.xattr.user.k".to_string()));
                assert!(exts.contains(&"uid".to_string()));
            }
            if path == "ln" {
                assert_eq!(
                    e.link_name().unwrap().unwrap().to_string_lossy(),
                    "t".repeat(200)
                );
            }
            if path == "dir/file" {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "hello");
            }
            seen.push(path);
        }
        assert_eq!(seen, vec!["dir/", "dir/file", long.as_str(), "ln", "hl"]);
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let err = w
            .append(&header("f", TarKind::File { size: 10 }), &mut &b"abc"[..])
            .unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
    }

    #[test]
    fn splits_long_ascii_names_into_prefix() {
        let name = format!("{}/{}", "a".repeat(150), "b".repeat(90));
        let (p, n) = split_ustar_name(&name).unwrap();
        assert_eq!(p.len(), 150);
        assert_eq!(n.len(), 90);
        assert!(split_ustar_name(&"x".repeat(300)).is_none());
        assert!(split_ustar_name("é").is_none());
    }
}
