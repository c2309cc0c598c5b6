//! The archive pipeline: the stack of filters every stored object passes through.
//!
//! Writing (the order of pgBackRest's filter groups):
//! `source → SHA-256 + size of raw bytes → compress → [encrypt] → SHA-256 + size of stored bytes → writers`.
//! Reading is the mirror image, and [`unpack`] fails on a mismatch of either
//! digest, naming the object, the expected and the actual value.
//!
//! Memory is bounded: a few chunks of [`CHUNK`] bytes are in flight per stage,
//! whatever the size of the stream. Reading the source, compressing and
//! writing run on separate threads so `pg_dump` never waits on compression.

pub mod chunks;
mod codec;
pub mod crypt;
pub mod dump;
pub mod tree;

use std::io::{Read, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result};
use crate::model::Compression;
use crate::storage::ObjectWriter;

pub use codec::{Decoder, Encoder};

/// Bytes read from the source at a time.
pub const CHUNK: usize = 256 * 1024;
/// Chunks queued between two stages.
const QUEUE: usize = 4;

/// Size and digest of an object, before and after compression.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectDigest {
    pub raw_size: u64,
    pub raw_sha256: String,
    pub stored_size: u64,
    pub stored_sha256: String,
}

/// Called with the number of raw bytes that went through, for progress.
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

/// A writer that takes part in [`store`], with the storage name for messages.
pub struct Destination {
    pub storage: String,
    pub writer: Box<dyn ObjectWriter>,
}

/// What became of one destination.
#[derive(Debug)]
pub struct Delivery {
    pub storage: String,
    pub result: Result<()>,
}

/// Streams `source` through the pipeline into every destination.
///
/// Fails as a whole (aborting every writer) when the source or compression
/// fails. A destination that fails on its own is aborted and reported in its
/// [`Delivery`] while the others carry on: one full disk must not cost the copy
/// on another storage. `label` names the object in messages.
///
/// `source_done` is awaited once the source is exhausted and before any writer
/// finishes: it says whether the producer (a `pg_dump`) succeeded. A producer
/// that died mid-stream closes its output like one that finished, so only its
/// exit status tells them apart, and nothing may become visible before that.
pub async fn store<R, F>(
    source: R,
    compression: Compression,
    crypt: crypt::Crypt,
    destinations: Vec<Destination>,
    label: &str,
    on_bytes: OnBytes,
    source_done: F,
) -> Result<(ObjectDigest, Vec<Delivery>)>
where
    R: Read + Send + 'static,
    F: std::future::Future<Output = Result<()>>,
{
    store_checked(
        source,
        compression,
        crypt,
        destinations,
        label,
        on_bytes,
        source_done,
        |_| Ok(()),
    )
    .await
}

/// [`store`], with `check` judging the digests once the source is read and
/// before any writer finishes: bytes that are not those expected (a WAL
/// file whose name carries its digest) fail the whole store, and nothing
/// becomes visible.
#[allow(clippy::too_many_arguments)] // store's, and the check
pub async fn store_checked<R, F, C>(
    source: R,
    compression: Compression,
    crypt: crypt::Crypt,
    destinations: Vec<Destination>,
    label: &str,
    on_bytes: OnBytes,
    source_done: F,
    check: C,
) -> Result<(ObjectDigest, Vec<Delivery>)>
where
    R: Read + Send + 'static,
    F: std::future::Future<Output = Result<()>>,
    C: FnOnce(&ObjectDigest) -> Result<()>,
{
    let (digest, deliveries, ()) = pipeline(
        source,
        compression,
        crypt,
        destinations,
        label,
        on_bytes,
        source_done,
        check,
        (),
    )
    .await?;
    Ok((digest, deliveries))
}

/// [`store`] of a `pg_dump -Fc -Z0` archive, counting the rows of each
/// table as the raw bytes pass, beside their digest: the counts are of the
/// bytes stored. The counter says itself whether it could read the archive.
pub async fn store_dump<R, F>(
    source: R,
    compression: Compression,
    crypt: crypt::Crypt,
    destinations: Vec<Destination>,
    label: &str,
    on_bytes: OnBytes,
    source_done: F,
) -> Result<(ObjectDigest, Vec<Delivery>, dump::DumpRows)>
where
    R: Read + Send + 'static,
    F: std::future::Future<Output = Result<()>>,
{
    pipeline(
        source,
        compression,
        crypt,
        destinations,
        label,
        on_bytes,
        source_done,
        |_| Ok(()),
        dump::DumpRows::default(),
    )
    .await
}

/// What sees every raw byte in stage 1, beside the raw digest.
trait Tap: Send + 'static {
    fn see(&mut self, bytes: &[u8]);
}

impl Tap for () {
    fn see(&mut self, _: &[u8]) {}
}

impl Tap for dump::DumpRows {
    fn see(&mut self, bytes: &[u8]) {
        self.feed(bytes);
    }
}

#[allow(clippy::too_many_arguments)] // store_checked's, and the tap
async fn pipeline<R, F, C, T>(
    source: R,
    compression: Compression,
    crypt: crypt::Crypt,
    destinations: Vec<Destination>,
    label: &str,
    on_bytes: OnBytes,
    source_done: F,
    check: C,
    tap: T,
) -> Result<(ObjectDigest, Vec<Delivery>, T)>
where
    R: Read + Send + 'static,
    F: std::future::Future<Output = Result<()>>,
    C: FnOnce(&ObjectDigest) -> Result<()>,
    T: Tap,
{
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(QUEUE);
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);

    // Stage 1: drain the source as fast as it produces.
    let reader = std::thread::Builder::new()
        .name("archive-read".into())
        .spawn(move || read_chunks(source, raw_tx, tap))
        .map_err(|e| Error::internal(format!("cannot start a reader thread: {e}")))?;

    // Stage 2: hash, compress, hash.
    let compressor = std::thread::Builder::new()
        .name("archive-compress".into())
        .spawn(move || compress_chunks(raw_rx, compression, &crypt, stored_tx, on_bytes))
        .map_err(|e| Error::internal(format!("cannot start a compression thread: {e}")))?;

    // Stage 3: every destination gets every stored chunk.
    let mut outlets: Vec<Outlet> = destinations
        .into_iter()
        .map(|d| Outlet {
            storage: d.storage,
            writer: Some(d.writer),
            failure: None,
        })
        .collect();
    while let Some(chunk) = stored_rx.recv().await {
        for outlet in outlets.iter_mut() {
            outlet.write(&chunk).await;
        }
        if outlets.iter().all(|o| o.writer.is_none()) {
            break;
        }
    }
    drop(stored_rx);

    let read = reader
        .join()
        .map_err(|_| Error::internal("the reader thread panicked"))?;
    let compressed = compressor
        .join()
        .map_err(|_| Error::internal("the compression thread panicked"))?;
    let produced = source_done.await;
    // The most telling failure first: when every storage failed, the producer's
    // complaint about its closed output is only a consequence.
    let all_failed = !outlets.is_empty() && outlets.iter().all(|o| o.writer.is_none());
    let outcome = if all_failed {
        Err(outlets[0]
            .failure
            .take()
            .unwrap_or_else(|| Error::storage("every storage failed")))
    } else {
        match (produced, read, compressed) {
            (Err(e), _, _) => Err(e),
            (Ok(()), Err(e), _) => Err(Error::io(Kind::Tool, format!("reading {label}"), e)),
            (Ok(()), Ok(_), Err(e)) => Err(e.context(format!("compressing {label}"))),
            (Ok(()), Ok((raw, tap)), Ok(stored)) => {
                let digest = ObjectDigest {
                    raw_size: raw.size,
                    raw_sha256: raw.hex(),
                    stored_size: stored.size,
                    stored_sha256: stored.hex(),
                };
                check(&digest).map(|()| (digest, tap))
            }
        }
    };
    let (digest, tap) = match outcome {
        Ok(done) => done,
        Err(e) => {
            for outlet in outlets {
                if let Some(w) = outlet.writer {
                    let _ = w.abort().await;
                }
            }
            return Err(e);
        }
    };

    let mut deliveries = Vec::with_capacity(outlets.len());
    for outlet in outlets {
        let result = match (outlet.writer, outlet.failure) {
            (_, Some(e)) => Err(e),
            (Some(writer), None) => match writer.finish().await {
                Ok(size) if size == digest.stored_size => Ok(()),
                Ok(size) => Err(Error::integrity(format!(
                    "storage {}: {label} has {size} bytes, {} were written",
                    outlet.storage, digest.stored_size
                ))),
                Err(e) => Err(e),
            },
            (None, None) => Err(Error::internal("a writer vanished")),
        };
        deliveries.push(Delivery {
            storage: outlet.storage,
            result,
        });
    }
    Ok((digest, deliveries, tap))
}

/// One destination while the stream runs: a writer until it fails, then its error.
struct Outlet {
    storage: String,
    writer: Option<Box<dyn ObjectWriter>>,
    failure: Option<Error>,
}

impl Outlet {
    async fn write(&mut self, chunk: &[u8]) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        if let Err(e) = writer.write(chunk).await {
            if let Some(w) = self.writer.take() {
                let _ = w.abort().await;
            }
            self.failure = Some(e);
        }
    }
}

/// Reads the source in whole chunks and hashes (and taps) the raw bytes
/// here, where the thread mostly waits on its source, not on the
/// compressor's thread.
fn read_chunks<R: Read, T: Tap>(
    mut source: R,
    tx: std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
    mut tap: T,
) -> std::io::Result<(Hashed, T)> {
    let mut raw = Hashed::default();
    loop {
        // Whole chunks (a pipe hands out at most 64 KiB per read), read
        // into memory that is not zeroed first.
        let mut chunk = Vec::with_capacity(CHUNK);
        (&mut source).take(CHUNK as u64).read_to_end(&mut chunk)?;
        if chunk.is_empty() {
            return Ok((raw, tap));
        }
        raw.update(&chunk);
        tap.see(&chunk);
        if tx.send(Ok(chunk)).is_err() {
            // The compressor stopped (every destination failed): stop reading.
            return Ok((raw, tap));
        }
    }
}

fn compress_chunks(
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    compression: Compression,
    crypt: &crypt::Crypt,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    on_bytes: OnBytes,
) -> Result<Hashed> {
    let mut stored = Hashed::default();
    let mut encoder = Encoder::new(compression).map_err(|e| Error::internal(e.to_string()))?;
    let mut sealer = match crypt {
        crypt::Crypt::Seal(recipients) => Some(crypt::Sealer::new(recipients)?),
        _ => None,
    };
    let send = |bytes: Vec<u8>, stored: &mut Hashed| -> bool {
        if bytes.is_empty() {
            return true;
        }
        stored.update(&bytes);
        tx.blocking_send(bytes).is_ok()
    };
    for chunk in rx {
        let Ok(chunk) = chunk else { break };
        on_bytes(chunk.len() as u64);
        encoder
            .write_all(&chunk)
            .map_err(|e| Error::internal(e.to_string()))?;
        let mut out = encoder.take_output();
        if let Some(s) = sealer.as_mut() {
            out = s.seal(&out)?;
        }
        if !send(out, &mut stored) {
            return Err(Error::storage("every storage failed"));
        }
    }
    let mut tail = encoder
        .finish()
        .map_err(|e| Error::internal(e.to_string()))?;
    if let Some(mut s) = sealer {
        tail = s.seal(&tail)?;
        tail.extend(s.finish()?);
    }
    if !send(tail, &mut stored) {
        return Err(Error::storage("every storage failed"));
    }
    Ok(stored)
}

/// Reads a stored object from `source`, checks it against `expected` and writes
/// the raw bytes to `sink`. Blocking: run it on a blocking thread.
///
/// When the sink fails first (a consumer such as `pg_restore` gave up), the rest
/// of the stored bytes are still read and checked, so a corrupt archive is
/// reported as what it is rather than as the consumer's complaint about it.
pub fn unpack(
    source: impl Read,
    compression: Compression,
    crypt: &crypt::Crypt,
    expected: &ObjectDigest,
    sink: &mut dyn Write,
    label: &str,
    on_bytes: &dyn Fn(u64),
) -> Result<()> {
    let mut stored = HashingReader {
        inner: source,
        hashed: Hashed::default(),
        on_bytes,
    };
    let mut decode_error = None;
    let mut sink_error = None;
    let raw = {
        let opened: Box<dyn Read + '_> = match crypt {
            crypt::Crypt::Open(identities) => Box::new(
                crypt::open(&mut stored, identities).map_err(|e| e.context(label.to_owned()))?,
            ),
            crypt::Crypt::Seal(_) => return Err(Error::internal("unpack given recipients")),
            crypt::Crypt::None => Box::new(&mut stored),
        };
        let mut decoder = Decoder::new(compression, opened)
            .map_err(|e| Error::internal(format!("{label}: {e}")))?;
        let raw = RawHasher::start()?;
        loop {
            let mut buf = raw.buffer();
            match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if let Err(e) = sink.write_all(&buf) {
                        sink_error = Some(e);
                        break;
                    }
                    raw.hash(buf)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    decode_error = Some(e);
                    break;
                }
            }
        }
        raw.finish()?
    };
    // A storage read error surfaces here as an I/O error of the stored stream.
    std::io::copy(&mut stored, &mut std::io::sink())
        .map_err(|e| Error::io(Kind::Storage, format!("reading {label}"), e))?;
    let stored = stored.hashed;
    if stored.size != expected.stored_size || stored.hex() != expected.stored_sha256 {
        return Err(Error::integrity(format!(
            "{label} is corrupt: stored size {} sha256 {}, the manifest says size {} sha256 {}",
            stored.size,
            stored.hex(),
            expected.stored_size,
            expected.stored_sha256
        ))
        .with_hint(
            "restore another backup; verify the others with `backup list` and a test restore",
        ));
    }
    if let Some(e) = decode_error {
        // A storage read error is reported above; what remains is the decoder's.
        return Err(Error::integrity(format!(
            "{label} could not be decompressed although its stored digest matches: {e}"
        )));
    }
    if let Some(e) = sink_error {
        return Err(Error::io(
            Kind::Tool,
            format!("writing {label} to its consumer"),
            e,
        ));
    }
    if raw.size != expected.raw_size || raw.hex() != expected.raw_sha256 {
        return Err(Error::integrity(format!(
            "{label} is corrupt: decompressed size {} sha256 {}, the manifest says size {} sha256 {}",
            raw.size,
            raw.hex(),
            expected.raw_size,
            expected.raw_sha256
        )));
    }
    Ok(())
}

/// Reads a stored object whose raw digest alone is known (an archived WAL
/// file: its name carries it) and writes the raw bytes to `sink`; returns
/// their size. Fails on a raw digest that is not `raw_sha256`. Blocking.
pub fn unpack_raw(
    source: impl Read,
    compression: Compression,
    crypt: &crypt::Crypt,
    raw_sha256: &str,
    sink: &mut dyn Write,
    label: &str,
) -> Result<u64> {
    let mut source = source;
    let opened: Box<dyn Read + '_> = match crypt {
        crypt::Crypt::Open(identities) => {
            Box::new(crypt::open(&mut source, identities).map_err(|e| e.context(label.to_owned()))?)
        }
        crypt::Crypt::Seal(_) => return Err(Error::internal("unpack_raw given recipients")),
        crypt::Crypt::None => Box::new(&mut source),
    };
    let decoder =
        Decoder::new(compression, opened).map_err(|e| Error::internal(format!("{label}: {e}")))?;
    let mut raw = HashingReader {
        inner: decoder,
        hashed: Hashed::default(),
        on_bytes: &|_| {},
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sink
                .write_all(&buf[..n])
                .map_err(|e| Error::io(Kind::Tool, format!("writing {label}"), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A storage read error keeps its kind through `Error::io`.
            Err(e) => {
                return Err(Error::io(Kind::Integrity, format!("reading {label}"), e));
            }
        }
    }
    if raw.hashed.hex() != raw_sha256 {
        return Err(Error::integrity(format!(
            "{label} is corrupt: its raw sha256 is {}, its name says {raw_sha256}",
            raw.hashed.hex()
        ))
        .with_hint(
            "read it from another storage of the job; `backup verify --wal` checks the rest",
        ));
    }
    Ok(raw.hashed.size)
}

#[derive(Default)]
struct Hashed {
    sha: Sha256,
    size: u64,
}

impl Hashed {
    fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn hex(&self) -> String {
        hex(&self.sha.clone().finalize())
    }
}

/// SHA-256 and size of the chunks given to it, computed on a thread of its
/// own: a restore's one thread otherwise reads, decompresses, hashes and
/// feeds its consumer in turn, and hashing is a third of that work. Chunks
/// go back for reuse once hashed; at most [`QUEUE`] wait.
struct RawHasher {
    chunks: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Hashed>>,
}

impl RawHasher {
    fn start() -> Result<Self> {
        let (chunks, to_hash) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (give_back, spent) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
        let thread = std::thread::Builder::new()
            .name("archive-hash".into())
            .spawn(move || {
                let mut hashed = Hashed::default();
                for chunk in to_hash {
                    hashed.update(&chunk);
                    // Dropped when the other end is gone or has enough.
                    let _ = give_back.try_send(chunk);
                }
                hashed
            })
            .map_err(|e| Error::internal(format!("cannot start a hashing thread: {e}")))?;
        Ok(RawHasher {
            chunks: Some(chunks),
            spent,
            thread: Some(thread),
        })
    }

    /// A chunk to fill: one hashed already, or a new one.
    fn buffer(&self) -> Vec<u8> {
        let mut buf = self.spent.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        buf
    }

    fn hash(&self, chunk: Vec<u8>) -> Result<()> {
        match self.chunks.as_ref().map(|c| c.send(chunk)) {
            Some(Ok(())) => Ok(()),
            _ => Err(Error::internal("the hashing thread stopped")),
        }
    }

    fn finish(mut self) -> Result<Hashed> {
        drop(self.chunks.take());
        self.thread
            .take()
            .map(|t| t.join())
            .and_then(|joined| joined.ok())
            .ok_or_else(|| Error::internal("the hashing thread panicked"))
    }
}

impl Drop for RawHasher {
    fn drop(&mut self) {
        // An early return still ends the thread before the stream's owner
        // goes on.
        drop(self.chunks.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct HashingReader<'a, R> {
    inner: R,
    hashed: Hashed,
    on_bytes: &'a dyn Fn(u64),
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hashed.update(&buf[..n]);
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

/// Lowercase hexadecimal, as `sha256sum` prints it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Key, MemoryStorage, Storage};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn sample() -> Vec<u8> {
        // Compressible but not trivially: 1.5 MiB spans several chunks.
        (0..1_500_000u64)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    async fn store_one(
        storage: &MemoryStorage,
        key: &Key,
        c: Compression,
        data: Vec<u8>,
    ) -> ObjectDigest {
        let writer = storage.writer(key).await.unwrap();
        let dest = vec![Destination {
            storage: "mem".into(),
            writer,
        }];
        let (digest, deliveries) = store(
            std::io::Cursor::new(data),
            c,
            crypt::Crypt::None,
            dest,
            "test object",
            Arc::new(|_| {}),
            async { Ok(()) },
        )
        .await
        .unwrap();
        assert!(deliveries.iter().all(|d| d.result.is_ok()));
        digest
    }

    #[test]
    fn round_trip_for_every_compression() {
        runtime().block_on(async {
            let data = sample();
            for c in [
                Compression::Zstd(3),
                Compression::Gzip(6),
                Compression::None,
            ] {
                let storage = MemoryStorage::new("mem");
                let key = Key::new("j/i/data").unwrap();
                let digest = store_one(&storage, &key, c, data.clone()).await;
                assert_eq!(digest.raw_size, data.len() as u64);
                assert_eq!(digest.raw_sha256, sha256_hex(&data));
                let stored = storage.get(&key).unwrap();
                assert_eq!(digest.stored_sha256, sha256_hex(&stored));
                if c != Compression::None {
                    assert!(digest.stored_size < digest.raw_size, "{c}");
                }
                let mut out = Vec::new();
                unpack(
                    &stored[..],
                    c,
                    &crypt::Crypt::None,
                    &digest,
                    &mut out,
                    "obj",
                    &|_| {},
                )
                .unwrap();
                assert_eq!(out, data, "{c}");
            }
        });
    }

    #[test]
    fn a_dump_is_stored_whole_and_its_rows_counted_on_the_way() {
        runtime().block_on(async {
            let archive = include_bytes!("fixtures/rows-18.dump").to_vec();
            let storage = MemoryStorage::new("mem");
            let key = Key::new("j/i/data.dump.zst").unwrap();
            let writer = storage.writer(&key).await.unwrap();
            let (digest, deliveries, rows) = store_dump(
                std::io::Cursor::new(archive.clone()),
                Compression::Zstd(3),
                crypt::Crypt::None,
                vec![Destination {
                    storage: "mem".into(),
                    writer,
                }],
                "dump",
                Arc::new(|_| {}),
                async { Ok(()) },
            )
            .await
            .unwrap();
            assert!(deliveries.iter().all(|d| d.result.is_ok()));
            assert_eq!(digest.raw_sha256, sha256_hex(&archive));
            let rows = rows.finish().unwrap();
            assert_eq!(
                rows.lookup().rows_of("public", "wide"),
                dump::Found::Rows(2000)
            );
            assert_eq!(rows.tables.iter().map(|t| t.rows).sum::<u64>(), 2013);
        });
    }

    #[test]
    fn encrypted_objects_hash_the_ciphertext_and_open_only_with_the_key() {
        runtime().block_on(async {
            let key = age::x25519::Identity::generate();
            let public = key.to_public().to_string();
            let recipients = crate::keys::Recipients::parse([public.as_str()]).unwrap();
            let data = [b"MARKER-7f3a ".repeat(50_000), sample()].concat();
            let storage = MemoryStorage::new("mem");
            let k = Key::new("j/i/data").unwrap();
            let writer = storage.writer(&k).await.unwrap();
            let (digest, _) = store(
                std::io::Cursor::new(data.clone()),
                Compression::None,
                crypt::Crypt::Seal(Arc::new(recipients)),
                vec![Destination {
                    storage: "mem".into(),
                    writer,
                }],
                "secret object",
                Arc::new(|_| {}),
                async { Ok(()) },
            )
            .await
            .unwrap();
            let stored = storage.get(&k).unwrap();
            assert!(!stored.windows(11).any(|w| w == b"MARKER-7f3a"));
            assert_eq!(digest.stored_sha256, sha256_hex(&stored));
            assert_eq!(digest.raw_sha256, sha256_hex(&data));
            let mut out = Vec::new();
            let ids = crate::keys::Identities::load_from_text_for_tests(&key);
            unpack(
                &stored[..],
                Compression::None,
                &crypt::Crypt::Open(Arc::new(ids)),
                &digest,
                &mut out,
                "obj",
                &|_| {},
            )
            .unwrap();
            assert_eq!(out, data);
        });
    }

    #[test]
    fn a_tree_goes_through_the_pipeline_encrypted_and_comes_back_whole() {
        use std::os::unix::fs::MetadataExt;
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("a/b")).unwrap();
        std::fs::write(tree.path().join("a/b/big.bin"), sample()).unwrap();
        std::fs::write(tree.path().join("MARKER-tree.txt"), "MARKER-tree").unwrap();
        std::os::unix::fs::symlink("a/b/big.bin", tree.path().join("link")).unwrap();
        let key = age::x25519::Identity::generate();
        let recipients =
            crate::keys::Recipients::parse([key.to_public().to_string().as_str()]).unwrap();
        runtime().block_on(async {
            let storage = MemoryStorage::new("mem");
            let k = Key::new("uploads/i/files.tar.zst.age").unwrap();
            let writer = storage.writer(&k).await.unwrap();
            let (source, walking) = tree::spawn_pack(tree.path().to_owned()).unwrap();
            let walked = async {
                tokio::task::spawn_blocking(move || walking.join())
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?
                    .map_err(|_| Error::internal("the tree's thread panicked"))?
                    .map(drop)
            };
            let (digest, _) = store(
                source,
                Compression::Zstd(3),
                crypt::Crypt::Seal(Arc::new(recipients)),
                vec![Destination {
                    storage: "mem".into(),
                    writer,
                }],
                "tree",
                Arc::new(|_| {}),
                walked,
            )
            .await
            .unwrap();
            let stored = storage.get(&k).unwrap();
            assert!(!stored.windows(11).any(|w| w == b"MARKER-tree"));

            let (reader, mut writer) = std::io::pipe().unwrap();
            let opened = crypt::Crypt::Open(Arc::new(
                crate::keys::Identities::load_from_text_for_tests(&key),
            ));
            let feeding = std::thread::spawn(move || {
                unpack(
                    &stored[..],
                    Compression::Zstd(3),
                    &opened,
                    &digest,
                    &mut writer,
                    "tree",
                    &|_| {},
                )
            });
            let target = tempfile::tempdir().unwrap();
            let restored = target.path().join("uploads");
            tree::unpack(reader, &restored, false).unwrap();
            feeding.join().unwrap().unwrap();
            assert_eq!(
                std::fs::read(restored.join("a/b/big.bin")).unwrap(),
                sample()
            );
            assert_eq!(
                std::fs::symlink_metadata(restored.join("a/b/big.bin"))
                    .unwrap()
                    .mtime(),
                std::fs::symlink_metadata(tree.path().join("a/b/big.bin"))
                    .unwrap()
                    .mtime()
            );
            assert!(
                std::fs::symlink_metadata(restored.join("link"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        });
    }

    #[test]
    fn a_flipped_byte_is_named_as_corruption() {
        runtime().block_on(async {
            for c in [
                Compression::Zstd(3),
                Compression::Gzip(6),
                Compression::None,
            ] {
                let storage = MemoryStorage::new("mem");
                let key = Key::new("j/i/data").unwrap();
                let digest = store_one(&storage, &key, c, sample()).await;
                let mut stored = storage.get(&key).unwrap();
                let middle = stored.len() / 2;
                stored[middle] ^= 0x40;
                let err = unpack(
                    &stored[..],
                    c,
                    &crypt::Crypt::None,
                    &digest,
                    &mut Vec::new(),
                    "j/i/data",
                    &|_| {},
                )
                .unwrap_err();
                assert_eq!(err.kind(), Kind::Integrity, "{c}: {err}");
                assert!(
                    err.message().starts_with("j/i/data is corrupt"),
                    "{c}: {err}"
                );
            }
        });
    }

    #[test]
    fn a_failing_source_aborts_every_writer() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("pg_dump went away"));
                }
                self.0 -= 1;
                buf.fill(7);
                Ok(buf.len())
            }
        }
        runtime().block_on(async {
            let storage = MemoryStorage::new("mem");
            let key = Key::new("j/i/data").unwrap();
            let writer = storage.writer(&key).await.unwrap();
            let dest = vec![Destination {
                storage: "mem".into(),
                writer,
            }];
            let err = store(
                Failing(20),
                Compression::Zstd(3),
                crypt::Crypt::None,
                dest,
                "data",
                Arc::new(|_| {}),
                async { Ok(()) },
            )
            .await
            .unwrap_err();
            assert!(err.message().contains("pg_dump went away"), "{err}");
            assert!(storage.get(&key).is_none());
        });
    }

    #[test]
    fn a_producer_that_failed_after_a_clean_eof_leaves_nothing() {
        runtime().block_on(async {
            let storage = MemoryStorage::new("mem");
            let key = Key::new("j/i/data").unwrap();
            let writer = storage.writer(&key).await.unwrap();
            let dest = vec![Destination {
                storage: "mem".into(),
                writer,
            }];
            let killed = async { Err(Error::tool("pg_dump was killed by signal 9")) };
            let source = std::io::Cursor::new(sample());
            let err = store(
                source,
                Compression::Zstd(3),
                crypt::Crypt::None,
                dest,
                "data",
                Arc::new(|_| {}),
                killed,
            )
            .await
            .unwrap_err();
            assert!(err.message().contains("signal 9"), "{err}");
            assert!(storage.get(&key).is_none());
        });
    }
}
