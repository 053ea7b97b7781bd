//! Writing a layer: entries → deterministic tar → gzip, zstd or nothing → store, in one
//! streaming pass.
//!
//! The tar is produced on the calling thread and handed, through a bounded channel of
//! 1 MiB blocks, to the parallel gzip ([`super::pgzip`]) on the others (as `tar | pigz`
//! would): memory stays bounded whatever the layer's size. The uncompressed bytes are
//! hashed for the diff id and the compressed bytes for the blob digest on the way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::{anyhow, Context, Result};

use super::pgzip;
use super::tar_writer::{TarHeader, TarKind, TarWriter};
use super::{Content, EntryKind, LayerEntry};
use crate::image::{Layer, LayerCompression, LayerFormat};
use crate::store::{HashingWriter, Store};

/// How a layer is written.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// SOURCE_DATE_EPOCH: no entry gets a later mtime.
    pub clamp_mtime: Option<i64>,
    /// Compression and level.
    pub format: LayerFormat,
}

/// The tar goes to the compressor in blocks of this size (the output depends on it).
const CHUNK: usize = pgzip::BLOCK;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Writes `entries` as one gzip-compressed layer blob into the store. Entries are sorted by
/// path (the last entry for a path wins); regular files that are hard links of one another
/// on disk become hard links in the layer.
pub fn write_layer(store: &Store, entries: Vec<LayerEntry>, opts: &LayerOptions) -> Result<Layer> {
    let entries = sorted_unique(entries);
    store_stream(store, opts.format, |tx| produce_tar(&entries, opts, tx))
}

/// Writes the uncompressed layer `tar` (e.g. another blob, decompressed) into the store in
/// `format`; its diff id must be `diff_id`.
pub fn recompress(
    store: &Store,
    tar: &mut dyn Read,
    format: LayerFormat,
    diff_id: &crate::store::Digest,
) -> Result<Layer> {
    store_stream(store, format, |tx| {
        let mut sink = HashingWriter::new(ChunkSender {
            buf: Vec::with_capacity(CHUNK),
            tx,
        });
        io::copy(tar, &mut sink).context("cannot read the layer")?;
        let (mut sink, digest, size) = sink.finish();
        sink.flush()?;
        if &digest != diff_id {
            anyhow::bail!("the layer's content is {digest}, not {diff_id}");
        }
        Ok((digest, size))
    })
}

/// Runs `produce` (which writes a tar into the channel and returns its diff id and size)
/// beside the compressor for `format`, and stores the blob.
fn store_stream(
    store: &Store,
    format: LayerFormat,
    produce: impl FnOnce(SyncSender<Vec<u8>>) -> Result<(crate::store::Digest, u64)>,
) -> Result<Layer> {
    let tmp = store.temp_file()?;
    let file = tmp.reopen().context("cannot reopen a temporary file")?;
    let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let compressor = std::thread::Builder::new()
        .name("compress".into())
        .spawn(move || compress(rx, file, format))
        .context("cannot start the compression thread")?;
    let produced = produce(tx);
    let compressed = compressor
        .join()
        .map_err(|_| anyhow!("the compression thread failed"))?;
    // A failure to compress (disk full) is the root cause of a failure to produce.
    let (digest, size) = compressed.context("cannot write a layer to the cache")?;
    let (diff_id, _) = produced?;
    // Both digests were computed from the bytes written: nothing to check later.
    store.commit_layer(tmp, &digest, &diff_id)?;
    Ok(Layer {
        digest,
        diff_id,
        size,
        media_type: format.compression.media_type().to_string(),
    })
}

fn sorted_unique(mut entries: Vec<LayerEntry>) -> Vec<LayerEntry> {
    // Stable sort, then keep the last of each run of equal paths.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: Vec<LayerEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if last.path == e.path => *last = e,
            _ => out.push(e),
        }
    }
    out
}

/// Writes the tar into the channel; returns the diff id and the uncompressed size.
fn produce_tar(
    entries: &[LayerEntry],
    opts: &LayerOptions,
    tx: SyncSender<Vec<u8>>,
) -> Result<(crate::store::Digest, u64)> {
    let sink = ChunkSender {
        buf: Vec::with_capacity(CHUNK),
        tx,
    };
    let mut tar = TarWriter::new(HashingWriter::new(sink));
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    for e in entries {
        crate::cancel::Cancel.check()?;
        let mtime = opts.clamp_mtime.map_or(e.mtime, |c| e.mtime.min(c));
        let mut header = TarHeader {
            path: e.path.clone(),
            kind: TarKind::Dir,
            mode: e.mode,
            uid: u64::from(e.uid),
            gid: u64::from(e.gid),
            mtime,
            xattrs: e.xattrs.clone(),
        };
        match &e.kind {
            EntryKind::File {
                source: Content::Bytes(b),
                ..
            } => {
                header.kind = TarKind::File {
                    size: b.len() as u64,
                };
                tar.append(&header, &mut &b[..])?;
            }
            EntryKind::File {
                source: Content::Path(p),
                size,
            } => {
                let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
                let meta = f.metadata()?;
                if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = inodes.get(&key) {
                        header.kind = TarKind::Hardlink(first.clone());
                        tar.append(&header, &mut io::empty())?;
                        continue;
                    }
                    inodes.insert(key, e.path.clone());
                }
                header.kind = TarKind::File { size: *size };
                let mut reader: Box<dyn Read> = Box::new(crate::cancel::Cancellable(f));
                tar.append(&header, &mut reader)
                    .with_context(|| format!("cannot add {} to the layer", p.display()))?;
            }
            other => {
                header.kind = match other {
                    EntryKind::Dir => TarKind::Dir,
                    EntryKind::Symlink(t) => TarKind::Symlink(t.clone()),
                    EntryKind::Hardlink(t) => TarKind::Hardlink(t.clone()),
                    EntryKind::Fifo => TarKind::Fifo,
                    EntryKind::CharDevice(a, b) => TarKind::CharDevice(*a, *b),
                    EntryKind::BlockDevice(a, b) => TarKind::BlockDevice(*a, *b),
                    EntryKind::File { .. } => unreachable!("files are handled above"),
                };
                tar.append(&header, &mut io::empty())?;
            }
        }
    }
    let hashing = tar.finish()?;
    let (mut sink, diff_id, size) = hashing.finish();
    sink.flush()?;
    Ok((diff_id, size))
}

/// Compresses the chunks into `file` as `format` says; returns the digest and size of the
/// bytes written.
fn compress(
    rx: Receiver<Vec<u8>>,
    file: File,
    format: LayerFormat,
) -> Result<(crate::store::Digest, u64)> {
    let out = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
    let hashing = match format.compression {
        LayerCompression::Gzip => {
            let level = u32::try_from(format.level).unwrap_or(6);
            pgzip::compress_blocks(rx, out, level, pgzip::default_workers())?
        }
        LayerCompression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(out, format.level)?;
            // At least one worker: the frame is then the same whatever their number.
            z.multithread(pgzip::default_workers().max(1) as u32)?;
            for chunk in rx {
                z.write_all(&chunk)?;
            }
            z.finish()?
        }
        LayerCompression::Uncompressed => {
            let mut out = out;
            for chunk in rx {
                out.write_all(&chunk)?;
            }
            out
        }
    };
    let (mut out, digest, size) = hashing.finish();
    out.flush()?;
    Ok((digest, size))
}

/// A writer that hands its bytes to the compression thread in 1 MiB chunks.
struct ChunkSender {
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::compression::decompressing_reader;
    use std::io::BufReader;

    fn file(path: &str, data: &[u8]) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind: EntryKind::File {
                size: data.len() as u64,
                source: Content::Bytes(data.to_vec()),
            },
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 2_000_000_000,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn layers_are_deterministic_sorted_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = LayerOptions {
            clamp_mtime: Some(1_000),
            format: LayerFormat::default(),
        };
        let entries = vec![file("b", b"2"), file("a", b"1"), file("b", b"3")];
        let l1 = write_layer(&store, entries.clone(), &opts).unwrap();
        let again = write_layer(&store, entries.clone(), &opts).unwrap();
        let l2 = write_layer(&store, entries.into_iter().rev().collect(), &opts).unwrap();
        assert_eq!(l1, again);
        assert_ne!(l1.digest, l1.diff_id);
        // Reversed input: "b" last is now "2" — a different layer.
        assert_ne!(l1.digest, l2.digest);

        let blob = store.open_blob(&l1.digest).unwrap();
        assert_eq!(blob.metadata().unwrap().len(), l1.size);
        let (_, mut r) = decompressing_reader(BufReader::new(blob)).unwrap();
        let mut raw = Vec::new();
        r.read_to_end(&mut raw).unwrap();
        assert_eq!(crate::store::Digest::of(&raw), l1.diff_id);
        let mut ar = tar::Archive::new(&raw[..]);
        let got: Vec<(String, u64, String)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                (p, e.header().mtime().unwrap(), s)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 1_000, "1".into()),
                ("b".into(), 1_000, "3".into())
            ]
        );
    }

    #[test]
    fn zstd_and_uncompressed_layers_hold_the_same_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entries = vec![file("a", &b"text ".repeat(100_000)), file("b", b"2")];
        let layer = |compression, level| {
            let opts = LayerOptions {
                clamp_mtime: None,
                format: LayerFormat { compression, level },
            };
            write_layer(&store, entries.clone(), &opts).unwrap()
        };
        let gzip = layer(LayerCompression::Gzip, 6);
        let zstd = layer(LayerCompression::Zstd, 3);
        let plain = layer(LayerCompression::Uncompressed, 0);
        assert_eq!(zstd.diff_id, gzip.diff_id);
        assert_eq!(plain.diff_id, gzip.diff_id);
        assert_eq!(
            plain.digest, plain.diff_id,
            "an uncompressed blob is its tar"
        );
        assert_eq!(
            zstd.media_type,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(plain.media_type, "application/vnd.oci.image.layer.v1.tar");
        assert!(
            zstd.size < plain.size / 10,
            "{} vs {}",
            zstd.size,
            plain.size
        );
        let (kind, mut r) =
            decompressing_reader(BufReader::new(store.open_blob(&zstd.digest).unwrap())).unwrap();
        assert_eq!(kind, crate::snapshot::compression::Compression::Zstd);
        let mut raw = Vec::new();
        r.read_to_end(&mut raw).unwrap();
        assert_eq!(crate::store::Digest::of(&raw), zstd.diff_id);
        // Recompressing the gzip blob gives the zstd one, checked against the diff id.
        let (_, mut tar) =
            decompressing_reader(BufReader::new(store.open_blob(&gzip.digest).unwrap())).unwrap();
        let format = LayerFormat {
            compression: LayerCompression::Zstd,
            level: 3,
        };
        assert_eq!(
            recompress(&store, &mut tar, format, &gzip.diff_id).unwrap(),
            zstd
        );
        let mut wrong = &raw[..raw.len() - 1];
        assert!(recompress(&store, &mut wrong, format, &gzip.diff_id).is_err());
    }

    #[test]
    fn zstd_frames_do_not_depend_on_the_number_of_threads() {
        // Reproducible across machines: 1, 2 and 4 workers write the same bytes.
        let data: Vec<u8> = (0..24u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 + b'a')
            .collect();
        let frame = |workers: u32| {
            let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            z.multithread(workers).unwrap();
            z.write_all(&data).unwrap();
            z.finish().unwrap()
        };
        let one = frame(1);
        assert_eq!(frame(2), one);
        assert_eq!(frame(4), one);
    }

    #[test]
    fn hard_links_on_disk_stay_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"content").unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        let entry = |path: &str, host: &str| LayerEntry {
            path: path.into(),
            kind: EntryKind::File {
                size: 7,
                source: Content::Path(dir.path().join(host)),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        };
        let layer = write_layer(
            &store,
            vec![entry("x/a", "a"), entry("x/b", "b")],
            &LayerOptions {
                clamp_mtime: None,
                format: LayerFormat {
                    compression: LayerCompression::Gzip,
                    level: 1,
                },
            },
        )
        .unwrap();
        let (_, r) =
            decompressing_reader(BufReader::new(store.open_blob(&layer.digest).unwrap())).unwrap();
        let mut ar = tar::Archive::new(r);
        let kinds: Vec<(String, tar::EntryType)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("x/a".into(), tar::EntryType::Regular),
                ("x/b".into(), tar::EntryType::Link)
            ]
        );
    }

    #[test]
    fn a_missing_source_file_fails_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut e = file("a", b"");
        e.kind = EntryKind::File {
            size: 3,
            source: Content::Path(dir.path().join("nope")),
        };
        let opts = LayerOptions {
            clamp_mtime: None,
            format: LayerFormat::default(),
        };
        assert!(write_layer(&store, vec![e], &opts).is_err());
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
