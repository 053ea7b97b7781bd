//! Parallel gzip, as pigz does it: the stream is cut into blocks that worker threads
//! deflate at once, each primed with the last 32 KiB of the block before it (so matches
//! reach across block borders and the ratio stays that of one stream); every block but the
//! last ends with a sync flush, so the raw deflate outputs simply concatenate. The CRC-32 of
//! each block is computed beside it and the CRCs are combined in order.
//!
//! The output depends only on the bytes and the level, never on the number of threads or
//! on timing: builds stay reproducible. At most [`in_flight`] blocks are held at once.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes of input per block (the unit of parallel work).
pub const BLOCK: usize = 1 << 20;
/// The deflate window: how much of the previous block primes the next.
const DICTIONARY: usize = 32 << 10;

/// Worker threads for compression: the CPUs this process may use (cgroup quotas count),
/// at most 8.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// How many blocks may be read but not yet written, for `workers` threads.
fn in_flight(workers: usize) -> usize {
    2 * workers + 1
}

/// One block to deflate.
struct Job {
    seq: u64,
    data: Vec<u8>,
    /// The previous block's last bytes (empty for the first block).
    dictionary: Vec<u8>,
    last: bool,
}

/// A deflated block and the CRC of its input.
struct Deflated {
    bytes: Vec<u8>,
    crc: Crc,
}

/// Compresses the blocks received from `blocks` (any sizes up to [`BLOCK`] work; sizes
/// change the output, so callers send fixed-size blocks) into one gzip member written to
/// `out`, with `workers` threads; returns `out`.
pub fn compress_blocks<W: Write>(
    blocks: Receiver<Vec<u8>>,
    mut out: W,
    level: u32,
    workers: usize,
) -> io::Result<W> {
    let workers = workers.max(1);
    let level = Compression::new(level.min(9));
    out.write_all(&gzip_header(level))?;
    let (job_tx, job_rx) = sync_channel::<Job>(workers);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = channel::<(u64, io::Result<Deflated>)>();
    std::thread::scope(|scope| -> io::Result<W> {
        for i in 0..workers {
            let (jobs, done) = (Arc::clone(&job_rx), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn_scoped(scope, move || deflate_jobs(&jobs, &done, level))?;
        }
        drop(done_tx);
        let mut pipeline = Pipeline {
            jobs: job_tx,
            sent: 0,
            limit: in_flight(workers) as u64,
            writer: InOrder {
                out,
                done: done_rx,
                pending: BTreeMap::new(),
                next: 0,
                crc: Crc::new(),
                total: 0,
            },
        };
        // One block is held back until the next arrives: only then is it known not to be
        // the last.
        let mut dictionary = Vec::new();
        let mut held: Option<Vec<u8>> = None;
        for block in blocks {
            if block.is_empty() {
                continue;
            }
            if let Some(prev) = held.replace(block) {
                let next_dictionary = tail(&prev);
                let dictionary = std::mem::replace(&mut dictionary, next_dictionary);
                pipeline.dispatch(prev, dictionary, false)?;
            }
        }
        pipeline.dispatch(held.unwrap_or_default(), dictionary, true)?;
        pipeline.finish()
    })
}

/// Blocks on their way: sent to the workers, and written back in order.
struct Pipeline<W> {
    jobs: SyncSender<Job>,
    /// Blocks sent so far (the next block's number).
    sent: u64,
    /// How many blocks may be sent but not yet written.
    limit: u64,
    writer: InOrder<W>,
}

impl<W: Write> Pipeline<W> {
    /// Sends a block to the workers once fewer than `limit` are outstanding.
    fn dispatch(&mut self, data: Vec<u8>, dictionary: Vec<u8>, last: bool) -> io::Result<()> {
        while self.sent - self.writer.next >= self.limit {
            self.writer.wait_one()?;
        }
        let job = Job {
            seq: self.sent,
            data,
            dictionary,
            last,
        };
        self.jobs.send(job).map_err(|_| stopped())?;
        self.sent += 1;
        self.writer.write_ready()
    }

    /// Lets the workers go, writes the outstanding blocks and the gzip trailer.
    fn finish(self) -> io::Result<W> {
        let Pipeline {
            jobs,
            sent,
            mut writer,
            ..
        } = self;
        drop(jobs);
        while writer.next < sent {
            writer.wait_one()?;
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&writer.crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        trailer[4..].copy_from_slice(&(writer.total as u32).to_le_bytes());
        writer.out.write_all(&trailer)?;
        Ok(writer.out)
    }
}

/// The last [`DICTIONARY`] bytes of `block`.
fn tail(block: &[u8]) -> Vec<u8> {
    block[block.len().saturating_sub(DICTIONARY)..].to_vec()
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "a compression thread stopped")
}

/// The deflated blocks, written in order as they come back from the workers.
struct InOrder<W> {
    out: W,
    done: Receiver<(u64, io::Result<Deflated>)>,
    pending: BTreeMap<u64, Deflated>,
    /// The next block to write.
    next: u64,
    crc: Crc,
    /// Uncompressed bytes written so far.
    total: u64,
}

impl<W: Write> InOrder<W> {
    /// Waits for one block to come back, then writes what is ready.
    fn wait_one(&mut self) -> io::Result<()> {
        let (seq, block) = self.done.recv().map_err(|_| stopped())?;
        self.pending.insert(seq, block?);
        self.write_ready()
    }

    /// Takes the blocks that have come back and writes those next in order.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Ok((seq, block)) = self.done.try_recv() {
            self.pending.insert(seq, block?);
        }
        while let Some(block) = self.pending.remove(&self.next) {
            self.out.write_all(&block.bytes)?;
            self.crc.combine(&block.crc);
            self.total += u64::from(block.crc.amount());
            self.next += 1;
        }
        Ok(())
    }
}

/// A worker: deflates jobs until the job channel closes.
fn deflate_jobs(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<(u64, io::Result<Deflated>)>,
    level: Compression,
) {
    let mut deflater = Compress::new(level, false);
    // Blocks deflate cannot shrink (random bytes, compressed files) are stored: deflating
    // them costs most of a layer's compression time for nothing.
    let mut storer = Compress::new(Compression::none(), false);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        let mut crc = Crc::new();
        crc.update(&job.data);
        let bytes = if incompressible(&job.data) {
            deflate_block(&mut storer, &job)
        } else {
            deflate_block(&mut deflater, &job)
        };
        if done
            .send((job.seq, bytes.map(|bytes| Deflated { bytes, crc })))
            .is_err()
        {
            return;
        }
    }
}

/// Whether a block looks like random bytes: its byte entropy is above 7.95 bits (text is
/// near 5, already-compressed data near 8). Decided from the bytes alone, so the output
/// stays reproducible; small blocks are always deflated.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 64 << 10 {
        return false;
    }
    let mut counts = [0u64; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.95
}

/// Raw deflate of one block: primed with its dictionary, ended by a sync flush (or, for the
/// last block, the final block).
fn deflate_block(deflater: &mut Compress, job: &Job) -> io::Result<Vec<u8>> {
    deflater.reset();
    if !job.dictionary.is_empty() {
        deflater
            .set_dictionary(&job.dictionary)
            .map_err(io::Error::other)?;
    }
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(job.data.len() + job.data.len() / 8 + 64);
    loop {
        let consumed = deflater.total_in() as usize;
        let status = deflater
            .compress_vec(&job.data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = deflater.total_in() as usize == job.data.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once the input is used up with output room to spare.
            _ if !job.last && all_in && out.len() < out.capacity() => return Ok(out),
            _ => out.reserve(out.capacity().max(64 << 10)),
        }
    }
}

/// The 10-byte gzip header flate2 writes: no name, mtime 0, XFL from the level, OS unknown.
fn gzip_header(level: Compression) -> [u8; 10] {
    let xfl = if level.level() >= Compression::best().level() {
        2
    } else if level.level() <= Compression::fast().level() {
        4
    } else {
        0
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

#[cfg(test)]
mod incompressible_tests {
    use super::*;

    #[test]
    fn random_blocks_are_stored_and_text_is_deflated() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let random: Vec<u8> = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog 0123456789\n"
            .iter()
            .cycle()
            .take(BLOCK)
            .copied()
            .collect();
        assert!(incompressible(&random));
        assert!(!incompressible(&text));
        assert!(
            !incompressible(&random[..1000]),
            "small blocks are deflated"
        );
        // Both round-trip through one gzip member.
        let mut input = random.clone();
        input.extend_from_slice(&text);
        let (tx, rx) = std::sync::mpsc::channel();
        for chunk in input.chunks(BLOCK) {
            tx.send(chunk.to_vec()).unwrap();
        }
        drop(tx);
        let gz = compress_blocks(rx, Vec::new(), 6, 2).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, input);
        assert!(gz.len() < random.len() + random.len() / 100 + text.len() / 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Compresses `data` cut into `block`-sized pieces with `workers` threads.
    fn pgzip(data: &[u8], block: usize, level: u32, workers: usize) -> Vec<u8> {
        let (tx, rx) = sync_channel(4);
        let pieces: Vec<Vec<u8>> = data.chunks(block).map(<[u8]>::to_vec).collect();
        let feeder = std::thread::spawn(move || {
            for p in pieces {
                tx.send(p).unwrap();
            }
        });
        let out = compress_blocks(rx, Vec::new(), level, workers).unwrap();
        feeder.join().unwrap();
        out
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    /// Text with repeats across block borders, and some noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 4096) % 3 == 0 {
                    x as u8
                } else {
                    b"the quick brown fox jumps over the lazy dog\n"[i % 44]
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_at_every_level_and_thread_count() {
        let data = sample(5 * BLOCK + 12345);
        let reference = pgzip(&data, BLOCK, 6, 1);
        assert_eq!(gunzip(&reference), data);
        for workers in [2, 3, 8] {
            assert_eq!(
                pgzip(&data, BLOCK, 6, workers),
                reference,
                "{workers} threads give other bytes"
            );
        }
        for level in [0, 1, 9] {
            assert_eq!(
                gunzip(&pgzip(&data, BLOCK, level, 2)),
                data,
                "level {level}"
            );
        }
    }

    #[test]
    fn small_and_empty_inputs() {
        for len in [0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK] {
            let data = sample(len);
            let gz = pgzip(&data, BLOCK, 6, 2);
            assert_eq!(gunzip(&gz), data, "{len} bytes");
            assert_eq!(&gz[..2], &[0x1f, 0x8b]);
            let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
            assert_eq!(isize as usize, len);
        }
    }

    #[test]
    fn ratio_stays_that_of_one_stream() {
        // Blocks primed with the previous block's tail compress about as well as one
        // stream: repeated text that spans block borders costs nearly nothing.
        let data = sample(4 * BLOCK);
        let parallel = pgzip(&data, BLOCK, 6, 2).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(
            (parallel as f64) < single as f64 * 1.01,
            "parallel {parallel} vs single {single}"
        );
    }

    #[test]
    fn a_failing_writer_is_an_error() {
        /// Takes the header and a little more, then is full.
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                if self.0 > 1000 {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 += data.len();
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = sync_channel(1);
        let feeder = std::thread::spawn(move || {
            for _ in 0..20 {
                if tx.send(vec![7u8; BLOCK]).is_err() {
                    return;
                }
            }
        });
        let e = compress_blocks(rx, Full(0), 6, 2).err().expect("an error");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        feeder.join().unwrap();
    }
}
