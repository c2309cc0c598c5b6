//! The rows of each table in a `pg_dump -Fc -Z0` archive, counted as the
//! archive streams past: a sink beside the digest, so the counts come from
//! the very bytes `pg_restore` will load, with no second read of the
//! database. A backup counts the archive it stores ([`super::store_dump`]);
//! `verify` counts the stored one again.
//!
//! The custom format, as pg_dump 13 to 18 write it to a pipe
//! (`pg_backup_archiver.c`, `pg_backup_custom.c`):
//! - header: `PGDMP`, version `1.14` (13-15), `1.15` (16) or `1.16` (17,
//!   18), int and offset sizes, format 1, the compression (an int before
//!   1.15, an algorithm byte from 1.15: only "none" is read here), a
//!   timestamp of seven ints and three strings;
//! - the table of contents: a count, then per entry its dump id, whether
//!   it has data, its tag, `desc`, `copyStmt` and namespace among strings,
//!   `relkind` from 1.16, dependencies, and an offset (unset in a pipe);
//! - one block per entry with data, in TOC order: type 1 (data) or 3
//!   (large objects), the dump id, then chunks of length and bytes ended by
//!   a zero length (large objects: an oid before each object's chunks, oid
//!   0 at the end). No trailer.
//!
//! A `TABLE DATA` entry whose `copyStmt` is a `COPY` holds COPY text: one
//! line per row (a newline inside a value is written `\n`), then `\.` and
//! two empty lines. A chunk is not a row (pg_dump may cut anywhere), so
//! the payload is read as one stream. Anything else this reader does not
//! know (a version, a compression, a block type, a table without its end
//! marker) is an error naming it, never a count.
//!
//! Memory: the table of contents (names and definitions) and a few bytes
//! of state; data passes through uncopied.

use std::collections::{BTreeMap, HashMap};

/// The archive versions pg_dump 13 to 18 write.
const VERSIONS: [(u8, u8); 3] = [(1, 14), (1, 15), (1, 16)];
/// What pg_dump writes after a table's last COPY row.
const END_OF_COPY: &[u8] = b"\\.\n\n\n";
/// Newlines in [`END_OF_COPY`]: not rows.
const END_NEWLINES: u64 = 3;
/// A string in the TOC larger than this is not one pg_dump wrote (a
/// function body of a gigabyte).
const STRING_LIMIT: i64 = 1 << 30;

/// A table whose rows were counted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

/// One TOC entry with data: what it is, for the blocks that follow.
#[derive(Debug, Clone)]
struct Entry {
    table: Option<Table>,
}

#[derive(Debug, Clone, Copy)]
enum Block {
    /// Data of entry, counted when it is a COPY.
    Data { counted: bool },
    /// Large objects: oids, each with chunks.
    Objects,
}

#[derive(Debug)]
enum State {
    Header,
    Toc {
        left: u64,
    },
    BlockType,
    BlockId {
        kind: u8,
    },
    /// Before a chunk's length.
    ChunkLength {
        block: Block,
        id: i64,
    },
    Chunk {
        block: Block,
        id: i64,
        left: u64,
    },
    /// Large objects: before an oid (0 ends the block).
    ObjectOid {
        id: i64,
    },
    Failed,
}

/// The counting sink. Feed it the raw archive with [`DumpRows::feed`];
/// [`DumpRows::finish`] gives the counts.
#[derive(Debug)]
pub struct DumpRows {
    state: State,
    /// Bytes not parsed yet (a TOC entry cut by a read).
    pending: Vec<u8>,
    int_size: usize,
    off_size: usize,
    version: (u8, u8),
    entries: HashMap<i64, Entry>,
    /// The COPY table whose data block is streaming now.
    current: Option<Counter>,
    /// Per dump id of a COPY table whose block ended: newlines, last bytes.
    counted: HashMap<i64, Counter>,
    error: Option<String>,
}

impl Default for DumpRows {
    fn default() -> Self {
        DumpRows {
            state: State::Header,
            pending: Vec::new(),
            int_size: 4,
            off_size: 8,
            version: (0, 0),
            entries: HashMap::new(),
            current: None,
            counted: HashMap::new(),
            error: None,
        }
    }
}

/// The newlines of one table's COPY data, and its last bytes (which must
/// be [`END_OF_COPY`]).
#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    newlines: u64,
    tail: [u8; END_OF_COPY.len()],
}

impl Counter {
    fn add(&mut self, data: &[u8]) {
        self.newlines += memchr::memchr_iter(b'\n', data).count() as u64;
        let keep = END_OF_COPY.len();
        if data.len() >= keep {
            self.tail.copy_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.rotate_left(data.len());
            self.tail[keep - data.len()..].copy_from_slice(data);
        }
    }
}

/// Not enough bytes yet: wait for more.
struct More;

/// A cursor over the pending bytes: reads that run short say [`More`].
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    int_size: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], More> {
        let end = self.at.checked_add(n).ok_or(More)?;
        let slice = self.bytes.get(self.at..end).ok_or(More)?;
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, More> {
        Ok(self.take(1)?[0])
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, little-endian.
    fn int(&mut self) -> Result<i64, More> {
        let negative = self.byte()? != 0;
        let bytes = self.take(self.int_size)?;
        let magnitude = bytes
            .iter()
            .rev()
            .fold(0u64, |v, b| (v << 8) | u64::from(*b));
        let value = i64::try_from(magnitude).unwrap_or(i64::MAX);
        Ok(if negative { -value } else { value })
    }

    /// `ReadStr`: an int length (-1 for NULL), then the bytes.
    fn string(&mut self) -> Result<Result<Option<String>, String>, More> {
        let length = self.int()?;
        if length < 0 {
            return Ok(Ok(None));
        }
        if length > STRING_LIMIT {
            return Ok(Err(format!(
                "a string of {length} bytes in its table of contents"
            )));
        }
        let bytes = self.take(length as usize)?;
        Ok(Ok(Some(String::from_utf8_lossy(bytes).into_owned())))
    }
}

impl DumpRows {
    /// Takes the next bytes of the archive.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            if self.pending.is_empty() {
                // Parsed where they lie: rows are not copied.
                let used = self.parse(bytes);
                if self.error.is_none() {
                    // An item cut short by this read, to finish with the next.
                    self.pending.extend_from_slice(&bytes[used..]);
                }
                return;
            }
            // An item cut short before: more bytes, and read it again.
            let take = bytes.len().min(64 << 10);
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let pending = std::mem::take(&mut self.pending);
            let used = self.parse(&pending);
            let mut pending = pending;
            pending.drain(..used);
            self.pending = pending;
        }
    }

    /// Counts `data` of the block streaming now. With `-Z0`, pg_dump writes
    /// each row as a chunk of its own, so this runs once a row: no lookup.
    fn count(&mut self, data: &[u8]) {
        if let Some(counter) = self.current.as_mut() {
            counter.add(data);
        }
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
        self.state = State::Failed;
    }

    /// Parses as much of `input` as makes whole items, and says how much:
    /// the rest is an item cut short, or nothing.
    fn parse(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        loop {
            if let State::Chunk { block, id, left } = self.state {
                let rest = &input[at..];
                let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if let Block::Data { counted: true } = block {
                    self.count(&rest[..n]);
                }
                at += n;
                let left = left - n as u64;
                if left > 0 {
                    self.state = State::Chunk { block, id, left };
                    return at;
                }
                self.state = State::ChunkLength { block, id };
                continue;
            }
            let mut cursor = Cursor {
                bytes: input,
                at,
                int_size: self.int_size,
            };
            match self.step(&mut cursor) {
                Ok(true) if self.error.is_none() => at = cursor.at,
                Ok(_) | Err(More) => return at,
            }
        }
    }

    /// One item; `Ok(false)` when nothing more can be read.
    fn step(&mut self, c: &mut Cursor<'_>) -> Result<bool, More> {
        match self.state {
            State::Failed => Ok(false),
            State::Header => {
                if c.take(5)? != b"PGDMP" {
                    self.fail("it does not start with PGDMP: not a pg_dump custom archive".into());
                    return Ok(false);
                }
                let (major, minor, _) = (c.byte()?, c.byte()?, c.byte()?);
                let (int_size, off_size, format) = (c.byte()?, c.byte()?, c.byte()?);
                if !VERSIONS.contains(&(major, minor)) {
                    self.fail(format!(
                        "its archive version {major}.{minor} is not one pg_dump 13 to 18 \
                         writes (1.14 to 1.16)"
                    ));
                    return Ok(false);
                }
                if format != 1 || !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
                    self.fail(format!(
                        "format {format}, int size {int_size}, offset size {off_size}: not a \
                         custom archive this reader knows"
                    ));
                    return Ok(false);
                }
                c.int_size = int_size as usize;
                let compressed = if (major, minor) >= (1, 15) {
                    i64::from(c.byte()?)
                } else {
                    c.int()?
                };
                if compressed != 0 {
                    self.fail(format!(
                        "its data is compressed ({compressed}): only pg_dump --compress=0 \
                         archives are read"
                    ));
                    return Ok(false);
                }
                for _ in 0..7 {
                    c.int()?;
                }
                for _ in 0..3 {
                    if let Err(why) = c.string()? {
                        self.fail(why);
                        return Ok(false);
                    }
                }
                let count = c.int()?;
                self.int_size = int_size as usize;
                self.off_size = off_size as usize;
                self.version = (major, minor);
                self.state = State::Toc {
                    left: u64::try_from(count).unwrap_or(0),
                };
                Ok(true)
            }
            State::Toc { left: 0 } => {
                self.state = State::BlockType;
                Ok(true)
            }
            State::Toc { left } => {
                let id = c.int()?;
                let had_dumper = c.int()? != 0;
                let mut strings = Vec::with_capacity(10);
                // tableoid, oid, tag, desc; section; defn, dropStmt,
                // copyStmt, namespace, tablespace, tableam.
                for i in 0..11 {
                    if i == 4 {
                        c.int()?;
                        continue;
                    }
                    match c.string()? {
                        Ok(s) => strings.push(s),
                        Err(why) => {
                            self.fail(why);
                            return Ok(false);
                        }
                    }
                }
                if self.version >= (1, 16) {
                    c.int()?; // relkind
                }
                for _ in 0..2 {
                    // owner, "false" (the old withOids)
                    if let Err(why) = c.string()? {
                        self.fail(why);
                        return Ok(false);
                    }
                }
                loop {
                    match c.string()? {
                        Ok(None) => break,
                        Ok(Some(_)) => {}
                        Err(why) => {
                            self.fail(why);
                            return Ok(false);
                        }
                    }
                }
                c.byte()?;
                c.take(self.off_size)?;
                if had_dumper {
                    // strings: tableoid, oid, tag, desc, defn, dropStmt,
                    // copyStmt, namespace, tablespace, tableam
                    let tag = strings[2].clone().unwrap_or_default();
                    let desc = strings[3].as_deref().unwrap_or("");
                    let copy = strings[6]
                        .as_deref()
                        .is_some_and(|s| s.starts_with("COPY "));
                    let table = (desc == "TABLE DATA" && copy).then(|| Table {
                        schema: strings[7].clone().unwrap_or_default(),
                        name: tag,
                    });
                    self.entries.insert(id, Entry { table });
                }
                self.state = State::Toc { left: left - 1 };
                Ok(true)
            }
            State::BlockType => {
                let kind = c.byte()?;
                if kind != 1 && kind != 3 {
                    self.fail(format!(
                        "a data block of type {kind}, which this reader does not know"
                    ));
                    return Ok(false);
                }
                self.state = State::BlockId { kind };
                Ok(true)
            }
            State::BlockId { kind } => {
                let id = c.int()?;
                let Some(entry) = self.entries.get(&id) else {
                    self.fail(format!(
                        "a data block for entry {id}, which its table of contents lacks"
                    ));
                    return Ok(false);
                };
                self.state = if kind == 3 {
                    State::ObjectOid { id }
                } else {
                    let counted = entry.table.is_some();
                    if counted {
                        if self.counted.contains_key(&id) {
                            self.fail(format!("two data blocks for entry {id}"));
                            return Ok(false);
                        }
                        self.current = Some(Counter::default());
                    }
                    State::ChunkLength {
                        block: Block::Data { counted },
                        id,
                    }
                };
                Ok(true)
            }
            State::ObjectOid { id } => {
                let oid = c.int()?;
                self.state = if oid == 0 {
                    State::BlockType
                } else {
                    State::ChunkLength {
                        block: Block::Objects,
                        id,
                    }
                };
                Ok(true)
            }
            State::ChunkLength { block, id } => {
                let length = c.int()?;
                self.state = match (length, block) {
                    (l, _) if l < 0 => {
                        self.fail(format!("a chunk of {l} bytes in entry {id}"));
                        return Ok(false);
                    }
                    (0, Block::Objects) => State::ObjectOid { id },
                    (0, Block::Data { counted }) => {
                        if counted && let Some(counter) = self.current.take() {
                            self.counted.insert(id, counter);
                        }
                        State::BlockType
                    }
                    (l, block) => State::Chunk {
                        block,
                        id,
                        left: l as u64,
                    },
                };
                Ok(true)
            }
            State::Chunk { .. } => Ok(false),
        }
    }

    /// The rows of every table, once the whole archive went through; an
    /// error naming what did not read, or a table whose data did not end.
    pub fn finish(self) -> Result<BTreeMap<Table, u64>, String> {
        if let Some(why) = self.error {
            return Err(why);
        }
        match self.state {
            State::BlockType if self.pending.is_empty() => {}
            State::Toc { left: 0 } if self.pending.is_empty() => {}
            _ => return Err("it ends in the middle of an item: the archive is cut short".into()),
        }
        let mut rows = BTreeMap::new();
        for (id, entry) in &self.entries {
            let Some(table) = &entry.table else {
                continue;
            };
            let Some(Counter { newlines, tail }) = self.counted.get(id) else {
                return Err(format!(
                    "table {}.{} has no data block (entry {id})",
                    table.schema, table.name
                ));
            };
            if tail != END_OF_COPY || *newlines < END_NEWLINES {
                return Err(format!(
                    "the data of table {}.{} does not end as pg_dump ends COPY data",
                    table.schema, table.name
                ));
            }
            rows.insert(table.clone(), newlines - END_NEWLINES);
        }
        Ok(rows)
    }
}

impl std::io::Write for DumpRows {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(archive: &[u8], piece: usize) -> Result<Vec<(String, u64)>, String> {
        let mut rows = DumpRows::default();
        for chunk in archive.chunks(piece) {
            rows.feed(chunk);
        }
        Ok(rows
            .finish()?
            .into_iter()
            .map(|(t, n)| (format!("{}.{}", t.schema, t.name), n))
            .collect())
    }

    #[test]
    fn archives_of_pg_dump_15_16_and_18_count_every_table_fed_in_any_pieces() {
        for archive in [
            &include_bytes!("fixtures/rows-15.dump")[..],
            &include_bytes!("fixtures/rows-16.dump")[..],
            &include_bytes!("fixtures/rows-18.dump")[..],
        ] {
            let expected: Vec<(String, u64)> = [
                ("public.child", 1),
                ("public.empty", 0),
                ("public.p1", 3),
                ("public.p2", 2),
                ("public.parent", 0),
                ("public.t", 5),
                ("public.wide", 2000),
                ("s p.\"Odd\" name", 2),
            ]
            .iter()
            .map(|(t, n)| ((*t).to_owned(), *n))
            .collect();
            for piece in [1, 7, 4096, archive.len()] {
                assert_eq!(
                    counts(archive, piece).unwrap(),
                    expected,
                    "pieces of {piece}"
                );
            }
            // Cut short anywhere: an error, never a count.
            for cut in [10, archive.len() / 2, archive.len() - 1] {
                assert!(counts(&archive[..cut], 4096).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn what_this_reader_does_not_know_is_named() {
        let e = counts(b"PGDMQ\x01\x10\x00\x04\x08\x01", 64).unwrap_err();
        assert!(e.contains("not a pg_dump custom archive"), "{e}");
        let e = counts(b"PGDMP\x01\x0d\x00\x04\x08\x01", 64).unwrap_err();
        assert!(e.contains("version 1.13"), "{e}");
        let e = counts(b"PGDMP\x01\x10\x00\x04\x08\x01\x03", 64).unwrap_err();
        assert!(e.contains("compressed (3)"), "{e}");
    }
}
