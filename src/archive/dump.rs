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
//!   it has data, its catalog id (the table's oid for `TABLE DATA`), tag,
//!   `desc`, `copyStmt` and namespace among strings, `relkind` from 1.16,
//!   dependencies, and an offset (unset in a pipe);
//! - one block per entry with data, in TOC order: type 1 (data) or 3
//!   (large objects), the dump id, then chunks of length and bytes ended by
//!   a zero length (large objects: an oid before each object's chunks, oid
//!   0 at the end). No trailer.
//!
//! A `TABLE DATA` entry holds COPY text: one line per row (a newline
//! inside a value is written `\n`), then `\.` and two empty lines. A
//! chunk is not a row (pg_dump may cut anywhere), so the payload is read
//! as one stream. Anything else this reader does not know (a version, a
//! compression, a block type, table data that is not COPY, a table without
//! its end marker, an entry without its block) is an error naming it,
//! never a count.
//!
//! Names are in the database's encoding (the archive's `ENCODING` entry),
//! so a backup matches tables by oid; by name, only where names compare
//! as bytes with UTF-8 ones ([`Counted::rows_of`]).
//!
//! Memory: per entry with data, its names; a table-of-contents entry cut
//! by a read is held whole until it reads (at most [`ENTRY_LIMIT`]).
//! Strings not needed are skipped where they lie; data passes through
//! uncopied.

use std::collections::HashMap;

/// The archive versions pg_dump 13 to 18 write.
const VERSIONS: [(u8, u8); 3] = [(1, 14), (1, 15), (1, 16)];
/// What pg_dump writes after a table's last COPY row.
const END_OF_COPY: &[u8] = b"\\.\n\n\n";
/// Newlines in [`END_OF_COPY`]: not rows.
const END_NEWLINES: u64 = 3;
/// A table-of-contents entry larger than this is not one this reader
/// holds in memory to parse (pg_dump writes function bodies and view
/// definitions there; none of this size).
const ENTRY_LIMIT: usize = 256 << 20;
/// Bytes added at a time to an entry cut by a read.
const WINDOW: usize = 4 << 10;

/// A table whose rows were counted, its names as the archive has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table's `pg_class` oid, from the entry's catalog id.
    pub oid: Option<u32>,
    pub schema: Vec<u8>,
    pub name: Vec<u8>,
    pub rows: u64,
}

/// What [`DumpRows::finish`] found.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    /// The archive's encoding (`UTF8`, `LATIN1`, ...), from its `ENCODING`
    /// entry.
    pub encoding: Option<String>,
    pub tables: Vec<Table>,
}

/// Where a table named in UTF-8 stands in an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Rows(u64),
    /// No data of that table in the archive.
    Absent,
    /// Its name is not ASCII and the archive's encoding is not UTF-8: the
    /// bytes cannot be compared.
    Incomparable,
}

impl Counted {
    /// The tables by oid and by name, for many lookups.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            utf8: matches!(self.encoding.as_deref(), Some("UTF8" | "SQL_ASCII")),
            by_oid: self
                .tables
                .iter()
                .filter_map(|t| Some((t.oid?, t.rows)))
                .collect(),
            by_name: self
                .tables
                .iter()
                .map(|t| ((t.schema.as_slice(), t.name.as_slice()), t.rows))
                .collect(),
        }
    }

    /// The table's name for messages.
    pub fn name(table: &Table) -> String {
        format!(
            "{}.{}",
            String::from_utf8_lossy(&table.schema),
            String::from_utf8_lossy(&table.name)
        )
    }
}

/// [`Counted`]'s tables, indexed.
pub struct Lookup<'a> {
    utf8: bool,
    by_oid: HashMap<u32, u64>,
    by_name: HashMap<(&'a [u8], &'a [u8]), u64>,
}

impl Lookup<'_> {
    /// The rows of the table whose `pg_class` oid is `oid`.
    pub fn rows_of_oid(&self, oid: u32) -> Option<u64> {
        self.by_oid.get(&oid).copied()
    }

    /// The rows of table `schema.name` (UTF-8, as a manifest names it).
    /// ASCII is the same in every server encoding; other names compare
    /// only in a UTF-8 archive.
    pub fn rows_of(&self, schema: &str, name: &str) -> Found {
        let comparable = self.utf8 || (schema.is_ascii() && name.is_ascii());
        if !comparable {
            return Found::Incomparable;
        }
        self.by_name
            .get(&(schema.as_bytes(), name.as_bytes()))
            .map_or(Found::Absent, |rows| Found::Rows(*rows))
    }
}

/// One TOC entry with data: what it is, for the blocks that follow.
#[derive(Debug, Clone)]
struct Entry {
    /// A table's COPY data: oid, schema and name.
    table: Option<(Option<u32>, Vec<u8>, Vec<u8>)>,
    /// Its block was read (every entry with data has one).
    seen: bool,
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
    encoding: Option<String>,
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
            encoding: None,
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

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], More> {
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

    /// `ReadStr`: an int length (-1 for NULL), then the bytes, where they
    /// lie. A length past [`ENTRY_LIMIT`] is an error.
    fn string(&mut self) -> Result<Result<Option<&'a [u8]>, String>, More> {
        let length = self.int()?;
        if length < 0 {
            return Ok(Ok(None));
        }
        match usize::try_from(length) {
            Ok(n) if n <= ENTRY_LIMIT => Ok(Ok(Some(self.take(n)?))),
            _ => Ok(Err(format!(
                "a string of {length} bytes in its table of contents"
            ))),
        }
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
                    self.hold(&bytes[used..]);
                }
                return;
            }
            // An item cut short before: a few more bytes, and read it
            // again. Once it reads, the rest is parsed where it lies.
            let held = self.pending.len();
            let take = bytes.len().min(WINDOW);
            self.hold(&bytes[..take]);
            if self.error.is_some() {
                return;
            }
            let pending = std::mem::take(&mut self.pending);
            let used = self.parse(&pending);
            if used >= held {
                // The held item read: drop the window, parse from `bytes`.
                bytes = &bytes[used - held..];
            } else {
                let mut pending = pending;
                pending.drain(..used);
                self.pending = pending;
                bytes = &bytes[take..];
            }
        }
    }

    /// Keeps `bytes` of an item cut short, within [`ENTRY_LIMIT`].
    fn hold(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > ENTRY_LIMIT {
            self.fail(format!(
                "an entry of its table of contents is over {} MiB",
                ENTRY_LIMIT >> 20
            ));
            return;
        }
        self.pending.extend_from_slice(bytes);
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
            State::Toc { left } => match self.toc_entry(c)? {
                Ok(()) => {
                    self.state = State::Toc { left: left - 1 };
                    Ok(true)
                }
                Err(why) => {
                    self.fail(why);
                    Ok(false)
                }
            },
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
                let Some(entry) = self.entries.get_mut(&id) else {
                    self.fail(format!(
                        "a data block for entry {id}, which its table of contents lacks"
                    ));
                    return Ok(false);
                };
                if entry.seen {
                    self.fail(format!("two data blocks for entry {id}"));
                    return Ok(false);
                }
                entry.seen = true;
                let counted = entry.table.is_some();
                self.state = if kind == 3 {
                    State::ObjectOid { id }
                } else {
                    if counted {
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

    /// One entry of the table of contents: kept when it has data.
    fn toc_entry(&mut self, c: &mut Cursor<'_>) -> Result<Result<(), String>, More> {
        let id = c.int()?;
        let had_dumper = c.int()? != 0;
        // tableoid, oid, tag, desc; section; defn, dropStmt, copyStmt,
        // namespace, tablespace, tableam.
        let mut fields: [Option<&[u8]>; 11] = [None; 11];
        for (i, field) in fields.iter_mut().enumerate() {
            if i == 4 {
                c.int()?;
                continue;
            }
            match c.string()? {
                Ok(s) => *field = s,
                Err(why) => return Ok(Err(why)),
            }
        }
        if self.version >= (1, 16) {
            c.int()?; // relkind
        }
        // owner, "false" (the old withOids), then dependencies to a NULL.
        for _ in 0..2 {
            if let Err(why) = c.string()? {
                return Ok(Err(why));
            }
        }
        loop {
            match c.string()? {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(why) => return Ok(Err(why)),
            }
        }
        c.byte()?;
        c.take(self.off_size)?;
        let [_, oid, tag, desc, _, defn, _, copy, namespace, _, _] = fields;
        let desc = desc.unwrap_or_default();
        if desc == b"ENCODING" {
            // "SET client_encoding = 'UTF8';"
            self.encoding = defn
                .map(String::from_utf8_lossy)
                .and_then(|d| d.split('\'').nth(1).map(str::to_owned));
        }
        if !had_dumper {
            return Ok(Ok(()));
        }
        let table = if desc == b"TABLE DATA" {
            let tag = tag.unwrap_or_default();
            let namespace = namespace.unwrap_or_default();
            if !copy.is_some_and(|s| s.starts_with(b"COPY ")) {
                return Ok(Err(format!(
                    "the data of table {}.{} is not COPY text",
                    String::from_utf8_lossy(namespace),
                    String::from_utf8_lossy(tag)
                )));
            }
            let oid = oid.and_then(|o| std::str::from_utf8(o).ok()?.parse().ok());
            Some((oid, namespace.to_vec(), tag.to_vec()))
        } else {
            None
        };
        self.entries.insert(id, Entry { table, seen: false });
        Ok(Ok(()))
    }

    /// The rows of every table, once the whole archive went through; an
    /// error naming what did not read, a table whose data did not end, or
    /// an entry whose data never came.
    pub fn finish(self) -> Result<Counted, String> {
        if let Some(why) = self.error {
            return Err(why);
        }
        match self.state {
            State::BlockType if self.pending.is_empty() => {}
            State::Toc { left: 0 } if self.pending.is_empty() => {}
            _ => return Err("it ends in the middle of an item: the archive is cut short".into()),
        }
        let mut ids: Vec<&i64> = self.entries.keys().collect();
        ids.sort();
        let mut tables = Vec::new();
        for id in ids {
            let entry = &self.entries[id];
            if !entry.seen {
                return Err(format!(
                    "entry {id} has no data block: the archive is cut short"
                ));
            }
            let Some((oid, schema, name)) = &entry.table else {
                continue;
            };
            let table = Table {
                oid: *oid,
                schema: schema.clone(),
                name: name.clone(),
                rows: 0,
            };
            match self.counted.get(id) {
                Some(Counter { newlines, tail })
                    if tail == END_OF_COPY && *newlines >= END_NEWLINES =>
                {
                    tables.push(Table {
                        rows: newlines - END_NEWLINES,
                        ..table
                    });
                }
                _ => {
                    return Err(format!(
                        "the data of table {} does not end as pg_dump ends COPY data",
                        Counted::name(&table)
                    ));
                }
            }
        }
        Ok(Counted {
            encoding: self.encoding,
            tables,
        })
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
        let mut rows: Vec<(String, u64)> = rows
            .finish()?
            .tables
            .iter()
            .map(|t| (Counted::name(t), t.rows))
            .collect();
        rows.sort();
        Ok(rows)
    }

    #[test]
    fn tables_carry_their_oid_and_names_compare_as_the_archives_encoding_allows() {
        let mut rows = DumpRows::default();
        rows.feed(include_bytes!("fixtures/rows-18.dump"));
        let finished = rows.finish().unwrap();
        assert_eq!(finished.encoding.as_deref(), Some("UTF8"));
        let counted = finished.lookup();
        assert!(
            finished
                .tables
                .iter()
                .all(|t| t.oid.is_some_and(|o| o >= 16384))
        );
        let wide = finished.tables.iter().find(|t| t.name == b"wide").unwrap();
        assert_eq!(counted.rows_of_oid(wide.oid.unwrap()), Some(2000));
        assert_eq!(counted.rows_of("public", "wide"), Found::Rows(2000));
        assert_eq!(counted.rows_of("s p", "\"Odd\" name"), Found::Rows(2));
        assert_eq!(counted.rows_of("public", "gone"), Found::Absent);

        let latin1_tables = Counted {
            encoding: Some("LATIN1".into()),
            tables: vec![
                Table {
                    oid: Some(16385),
                    schema: b"public".to_vec(),
                    name: b"caf\xe9".to_vec(),
                    rows: 4,
                },
                Table {
                    oid: Some(16386),
                    schema: b"public".to_vec(),
                    name: b"plain".to_vec(),
                    rows: 1,
                },
            ],
        };
        let latin1 = latin1_tables.lookup();
        assert_eq!(latin1.rows_of("public", "café"), Found::Incomparable);
        assert_eq!(latin1.rows_of("public", "plain"), Found::Rows(1));
        assert_eq!(latin1.rows_of_oid(16385), Some(4));
    }

    #[test]
    fn any_cut_or_flipped_byte_is_an_error_or_a_count_never_a_panic() {
        let archive = include_bytes!("fixtures/rows-16.dump");
        for cut in (0..archive.len()).step_by(97) {
            assert!(counts(&archive[..cut], 4096).is_err(), "cut at {cut}");
        }
        let mut flipped = archive.to_vec();
        for at in (0..archive.len()).step_by(61) {
            for bit in [0x01, 0x80] {
                flipped[at] ^= bit;
                let _ = counts(&flipped, 1000);
                flipped[at] ^= bit;
            }
        }
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
