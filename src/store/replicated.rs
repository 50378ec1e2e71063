//! What a replicated node needs from the store: applying committed log entries, and
//! exporting / importing the state as a snapshot stream.
//!
//! The store knows nothing of Raft: the caller passes each entry's raft index and an
//! opaque `raft_state` blob (the applied log id and membership, encoded by the cluster
//! layer) that is written in the same batch, so the state and "how far it got" never
//! disagree.
//!
//! Applies are not fsync'd: the log is the durable record and is replayed after a crash.
//! [`Store::persist`] makes the state durable before a snapshot lets the log be purged.
//!
//! Snapshot stream format (version 2; event bodies are not in it: they travel as the log's
//! segment files, see `crate::cluster::state_machine`):
//! ```text
//! magic "TANDEM-SNAPSHOT\x02"
//! record*  : 0x01, keyspace u8, key_len u32 LE, key, value_len u32 LE, value
//! trailer  : 0xFF, record count u64 LE, blake3 of every byte after the magic (32 bytes)
//! section* : 0x02, name_len u32 LE, name, cursor u64 LE,
//!            (0x01, key_len u32 LE, key, value_len u32 LE, value)*,
//!            0xFF, record count u64 LE, blake3 of the section's bytes from its 0x02
//! end      : 0xFE, section count u32 LE, then end of stream
//! ```
//! The store's part ends at its trailer. After it come *sections*: named key/value sets
//! with a cursor, each checked by its own trailer — the CDP services' derived state (see
//! [`crate::services::supervisor::Supervisor::export_state`]) and the log's segment files;
//! the store knows nothing of what they mean. [`Store::verify_snapshot`] checks every
//! trailer in a first pass before anything is replaced. A version 1 stream (which carried
//! event bodies in the state) is refused with a message saying so.

use std::io::{Read, Write};

use fjall::{PersistMode, Readable};

use super::apply::{Applier, Filters, SegmentChange};
use super::batch::SortedBatch;
use super::dedup_index::DedupIndex;
use super::recent::RecentKeys;
use super::tables::DEDUP;
use super::{Store, StoreError, dedup};
use crate::model::command::Command;
use crate::model::event::EventOutcome;

/// `META` key holding the cluster layer's applied-state blob.
pub const META_RAFT_STATE: &str = "raft_state";

const MAGIC: &[u8; 16] = b"TANDEM-SNAPSHOT\x02";
const MAGIC_V1: &[u8; 16] = b"TANDEM-SNAPSHOT\x01";
const RECORD: u8 = 0x01;
const SECTION: u8 = 0x02;
const SECTIONS_END: u8 = 0xFE;
const TRAILER: u8 = 0xFF;
/// Longest section name accepted.
const NAME_BYTES_MAX: usize = 256;
/// Records written per batch while importing.
const IMPORT_BATCH_RECORDS: usize = 10_000;
/// Longest key or value accepted from a snapshot (fjall's own limits are below it).
const FIELD_BYTES_MAX: usize = 1 << 30;

/// One committed log entry to apply.
pub struct Committed<'a> {
    /// Its raft log index.
    pub log_index: u64,
    /// The command it carries, if any (membership and blank entries carry none).
    pub command: Option<&'a Command>,
    /// The applied-state blob to store with it.
    pub raft_state: Vec<u8>,
}

impl Store {
    /// Applies committed entries in one atomic write batch, without fsync; returns each
    /// entry's event outcomes (empty for entries that carry no events). An error leaves the
    /// state as it was before the call: a damaged entry or a broken invariant is never
    /// skipped (the caller stops the node).
    pub fn apply_committed(
        &self,
        entries: &[Committed<'_>],
    ) -> Result<Vec<Vec<EventOutcome>>, StoreError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let _writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("an earlier apply panicked".into()))?;
        let mut writes = SortedBatch::default();
        let known = self.known()?;
        let recent = self.recent()?;
        let mut applier = Applier::open(
            self.db.snapshot(),
            &mut writes,
            &self.ks,
            &self.hot,
            Filters {
                known: known.as_deref(),
                recent: recent.as_deref().map(RecentKeys::writer).transpose()?,
            },
            &self.config.apply,
        )?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_index;
            results.push(match entry.command {
                Some(Command::Ingest(block)) => {
                    let head = block
                        .head()
                        .map_err(|e| StoreError::Corrupt(format!("log entry {index}: {e}")))?;
                    applier.apply_block(index, &head)?
                }
                Some(Command::PutSegment(def)) => {
                    applier.apply_segment(index, SegmentChange::Put(def))?;
                    Vec::new()
                }
                Some(Command::DeleteSegment { id }) => {
                    applier.apply_segment(index, SegmentChange::Delete(id))?;
                    Vec::new()
                }
                Some(Command::Tick { time_ms }) => {
                    applier.apply_tick(index, *time_ms)?;
                    Vec::new()
                }
                Some(Command::AlertNote(note)) => {
                    applier.apply_alert_note(index, note)?;
                    Vec::new()
                }
                None => {
                    applier.advance(index)?;
                    Vec::new()
                }
            });
        }
        let finished = applier.finish();
        writes.insert(&self.ks.meta, META_RAFT_STATE, last.raft_state.as_slice());
        // Before the commit, as the filter of recent keys is taught: a screen never finds a
        // committed key missing from the index.
        self.dedup.record(&finished.dedup)?;
        let mut batch = self.db.batch();
        writes.write_into(&mut batch);
        if let Err(error) = batch.commit() {
            self.hot.clear();
            return Err(error.into());
        }
        self.hot.remember(finished.changes);
        self.advance_horizon(finished.clock_ms);
        self.dedup.expire(&self.horizon)?;
        DedupIndex::seal_if_full(&self.dedup)?;
        Ok(results)
    }

    /// The applied-state blob of the last applied entry, if any.
    pub fn raft_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .snapshot()
            .get(&self.ks.meta, META_RAFT_STATE)?
            .map(|bytes| bytes.to_vec()))
    }

    /// Makes everything applied so far durable.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Streams every state keyspace of one consistent snapshot to `out` (dead dedup
    /// entries left out). Returns the applied-state blob of that snapshot, its applied
    /// index (one past the raft index) and the number of records.
    pub fn export(&self, out: &mut impl Write) -> Result<Exported, StoreError> {
        let snapshot = self.db.snapshot();
        let raft_state = snapshot
            .get(&self.ks.meta, META_RAFT_STATE)?
            .map(|bytes| bytes.to_vec());
        let applied_index = super::meta_u64(
            &snapshot,
            &self.ks.meta,
            super::tables::META_APPLIED_INDEX,
            super::tables::META,
        )?;
        let mut writer = HashingWriter::new(out);
        writer.raw(MAGIC)?;
        let mut count = 0_u64;
        for (id, (name, keyspace)) in self.ks.state().into_iter().enumerate() {
            for guard in snapshot.iter(keyspace) {
                let (key, value) = guard.into_inner()?;
                if name == DEDUP && !dedup::record_alive(&value, &self.horizon)? {
                    continue;
                }
                writer.write(&[RECORD, id as u8])?;
                writer.field(&key)?;
                writer.field(&value)?;
                count += 1;
            }
        }
        writer.write(&[TRAILER])?;
        writer.write(&count.to_le_bytes())?;
        let digest = writer.hasher.finalize();
        writer.raw(digest.as_bytes())?;
        Ok(Exported {
            raft_state,
            applied_index,
            records: count,
        })
    }

    /// Checks a whole snapshot stream — the store's part and every section: magic,
    /// framing, each trailer's count and checksum, the end marker — without changing
    /// anything; returns what it holds.
    pub fn verify_snapshot(input: &mut impl Read) -> Result<SnapshotContents, StoreError> {
        let records = Store::skip_snapshot_state(input)?;
        let mut sections = SectionReader::new(input);
        let mut contents = SnapshotContents {
            records,
            sections: Vec::new(),
        };
        while let Some((name, cursor)) = sections.next_section()? {
            let mut records = 0;
            while sections.next_record()?.is_some() {
                records += 1;
            }
            contents.sections.push(SectionInfo {
                name,
                cursor,
                records,
            });
        }
        Ok(contents)
    }

    /// Reads past the store's part of a snapshot stream, checking it; returns its record
    /// count. `input` is left where a [`SectionReader`] reads on.
    pub fn skip_snapshot_state(input: &mut impl Read) -> Result<u64, StoreError> {
        let mut reader = SnapshotReader::new(input)?;
        while reader.next_record()?.is_some() {}
        reader.finish()
    }

    /// The state hash ([`crate::store::read::Reader::state_hash`]) of the store's part of
    /// the snapshot stream in `input`, computed from the stream without importing it, and
    /// checked as it is read (trailer count and checksum). `input` is left where a
    /// [`SectionReader`] reads on. Backups record it in their manifest; a restore compares
    /// it with the hash of the state it imported.
    pub fn hash_snapshot_state(input: &mut impl Read) -> Result<String, StoreError> {
        let names = super::tables::STATE_KEYSPACES;
        let mut hasher = blake3::Hasher::new();
        let mut reader = SnapshotReader::new(input)?;
        // The keyspace being hashed and its record count so far.
        let mut current: Option<(usize, u64)> = None;
        let close =
            |hasher: &mut blake3::Hasher, upto: usize, current: &mut Option<(usize, u64)>| {
                let start = match *current {
                    Some((id, count)) => {
                        hasher.update(&count.to_le_bytes());
                        id + 1
                    }
                    None => 0,
                };
                for (id, name) in names.iter().enumerate().take(upto).skip(start) {
                    if super::tables::hashed(id, 0) {
                        hasher.update(name.as_bytes());
                        hasher.update(&0_u64.to_le_bytes());
                    }
                }
                *current = None;
            };
        while let Some((id, key, value)) = reader.next_record()? {
            let id = usize::from(id);
            if id >= names.len() {
                return Err(StoreError::Corrupt(format!("snapshot names keyspace {id}")));
            }
            match current {
                Some((at, ref mut count)) if at == id => *count += 1,
                Some((at, _)) if at > id => {
                    return Err(StoreError::Corrupt(
                        "snapshot keyspaces out of order".into(),
                    ));
                }
                _ => {
                    close(&mut hasher, id, &mut current);
                    hasher.update(names[id].as_bytes());
                    current = Some((id, 1));
                }
            }
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(&key);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(&value);
        }
        close(&mut hasher, names.len(), &mut current);
        reader.finish()?;
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Replaces the cluster layer's applied-state blob (durably), leaving the state as it
    /// is: a restore gives the restored state a new cluster's membership this way.
    pub fn set_raft_state(&self, raft_state: &[u8]) -> Result<(), StoreError> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("an earlier apply panicked".into()))?;
        let mut batch = self.db.batch();
        batch.insert(&self.ks.meta, META_RAFT_STATE, raft_state);
        batch.commit()?;
        self.persist()
    }

    /// Replaces the whole state with the store's part of the snapshot in `input` (which
    /// must have passed [`Store::verify_snapshot`]), then fsyncs. `input` is left where a
    /// [`SectionReader`] reads on. Once the log holds the snapshot's entries too, call
    /// [`Store::rebuild_dedup_index`] before applying or screening.
    pub fn import(&self, input: &mut impl Read) -> Result<u64, StoreError> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("an earlier apply panicked".into()))?;
        self.hot.clear();
        self.blocks.clear();
        // Until the import is complete no filter can speak for the state, and the dedup
        // index, derived from the state and the log, waits for both
        // ([`Store::rebuild_dedup_index`]).
        self.stop_filters()?;
        self.dedup.forget()?;
        for (_, keyspace) in self.ks.state() {
            keyspace.clear()?;
        }
        crate::crash::point("snapshot-install:store-cleared");
        let keyspaces = self.ks.state();
        let mut reader = SnapshotReader::new(input)?;
        let mut batch = self.db.batch();
        let mut in_batch = 0;
        while let Some((id, key, value)) = reader.next_record()? {
            let (_, keyspace) = keyspaces
                .get(usize::from(id))
                .ok_or_else(|| StoreError::Corrupt(format!("snapshot names keyspace {id}")))?;
            batch.insert(keyspace, key, value);
            in_batch += 1;
            if in_batch == IMPORT_BATCH_RECORDS {
                batch.commit()?;
                crate::crash::point("snapshot-install:store-partial");
                batch = self.db.batch();
                in_batch = 0;
            }
        }
        batch.commit()?;
        let count = reader.finish()?;
        self.persist()?;
        let clock = self.reader().clock_ms()?;
        self.advance_horizon(clock);
        Ok(count)
    }

    /// Builds the dedup index anew from the state and the log, then the filters: after an
    /// [`Store::import`], once the log holds the snapshot's entries (the index reads their
    /// keys from the log). Until then the leader cannot screen on this store (an error,
    /// never a wrong answer), and lookups go to the store without filters.
    pub fn rebuild_dedup_index(&self) -> Result<(), StoreError> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("an earlier apply panicked".into()))?;
        self.dedup
            .rebuild(&self.dedup_source(&self.db.snapshot()), &self.horizon)?;
        self.start_filters()
    }
}

/// What [`Store::export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The applied-state blob of the exported state.
    pub raft_state: Option<Vec<u8>>,
    /// One past the raft index of the last entry the exported state reflects (0 = none).
    pub applied_index: u64,
    /// Records written.
    pub records: u64,
}

/// Writes through, hashing every byte after the magic.
struct HashingWriter<'w, W: Write> {
    out: &'w mut W,
    hasher: blake3::Hasher,
}

impl<'w, W: Write> HashingWriter<'w, W> {
    fn new(out: &'w mut W) -> Self {
        HashingWriter {
            out,
            hasher: blake3::Hasher::new(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes).map_err(snapshot_io)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.raw(bytes)
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::Corrupt("a record is over 4 GiB".into()))?;
        self.write(&len.to_le_bytes())?;
        self.write(bytes)
    }
}

fn snapshot_io(error: std::io::Error) -> StoreError {
    StoreError::Corrupt(format!("snapshot stream: {error}"))
}

/// One snapshot record: keyspace number, key, value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads a snapshot stream record by record, hashing as it goes.
struct SnapshotReader<'r, R: Read> {
    input: &'r mut R,
    hasher: blake3::Hasher,
    count: u64,
    trailer_count: Option<u64>,
}

impl<'r, R: Read> SnapshotReader<'r, R> {
    fn new(input: &'r mut R) -> Result<Self, StoreError> {
        let mut magic = [0_u8; 16];
        input.read_exact(&mut magic).map_err(snapshot_io)?;
        if &magic == MAGIC_V1 {
            return Err(StoreError::Corrupt(
                "snapshot format 1 (written before the log became the event store); this build reads format 2: let the leader build a new snapshot".into(),
            ));
        }
        if &magic != MAGIC {
            return Err(StoreError::Corrupt(
                "not a Tandem snapshot (bad magic)".into(),
            ));
        }
        Ok(SnapshotReader {
            input,
            hasher: blake3::Hasher::new(),
            count: 0,
            trailer_count: None,
        })
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        read_hashed(self.input, &mut self.hasher, buf)
    }

    fn field(&mut self) -> Result<Vec<u8>, StoreError> {
        read_field(self.input, &mut self.hasher, FIELD_BYTES_MAX)
    }

    /// The next record, or `None` at the trailer.
    fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        let mut tag = [0_u8; 1];
        self.exact(&mut tag)?;
        match tag[0] {
            RECORD => {
                let mut id = [0_u8; 1];
                self.exact(&mut id)?;
                let key = self.field()?;
                let value = self.field()?;
                self.count += 1;
                Ok(Some((id[0], key, value)))
            }
            TRAILER => {
                let mut count = [0_u8; 8];
                self.exact(&mut count)?;
                self.trailer_count = Some(u64::from_le_bytes(count));
                Ok(None)
            }
            other => Err(StoreError::Corrupt(format!(
                "snapshot record tag {other:#x}"
            ))),
        }
    }

    /// Checks the trailer's count and checksum.
    fn finish(self) -> Result<u64, StoreError> {
        let expected = self.hasher.finalize();
        let mut digest = [0_u8; 32];
        self.input.read_exact(&mut digest).map_err(snapshot_io)?;
        if digest != *expected.as_bytes() {
            return Err(StoreError::Corrupt("snapshot checksum mismatch".into()));
        }
        match self.trailer_count {
            Some(count) if count == self.count => Ok(count),
            Some(count) => Err(StoreError::Corrupt(format!(
                "snapshot trailer says {count} records, found {}",
                self.count
            ))),
            None => Err(StoreError::Corrupt("snapshot has no trailer".into())),
        }
    }
}

/// Reads `buf.len()` bytes, hashing them.
fn read_hashed(
    input: &mut impl Read,
    hasher: &mut blake3::Hasher,
    buf: &mut [u8],
) -> Result<(), StoreError> {
    input.read_exact(buf).map_err(snapshot_io)?;
    hasher.update(buf);
    Ok(())
}

/// Reads one length-prefixed field of at most `max` bytes, hashing it.
fn read_field(
    input: &mut impl Read,
    hasher: &mut blake3::Hasher,
    max: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut len = [0_u8; 4];
    read_hashed(input, hasher, &mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(StoreError::Corrupt(format!(
            "snapshot field of {len} bytes (at most {max})"
        )));
    }
    let mut bytes = vec![0_u8; len];
    read_hashed(input, hasher, &mut bytes)?;
    Ok(bytes)
}

/// What a verified snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContents {
    /// Records in the store's part.
    pub records: u64,
    /// Its sections, in stream order.
    pub sections: Vec<SectionInfo>,
}

/// One section of a verified snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Whose state it is (a service's name).
    pub name: String,
    /// The position (a service's feed cursor) that state reflects.
    pub cursor: u64,
    /// Its key/value records.
    pub records: u64,
}

/// One record of a section: key and value.
pub type SectionRecord = (Vec<u8>, Vec<u8>);

/// Writes sections after the store's part of a snapshot stream ([`Store::export`]), then
/// the end marker ([`SectionWriter::finish`]).
pub struct SectionWriter<'w, W: Write> {
    out: &'w mut W,
    /// Sections written so far.
    sections: u32,
}

impl<'w, W: Write> SectionWriter<'w, W> {
    /// Writes sections to `out`, which holds a whole store part.
    pub fn new(out: &'w mut W) -> Self {
        SectionWriter { out, sections: 0 }
    }

    /// Streams one section — `name`, `cursor`, every record of `records`, its trailer —
    /// and returns its record count. An error from `records` stops it (the stream is then
    /// unusable).
    pub fn section<E: From<StoreError>>(
        &mut self,
        name: &str,
        cursor: u64,
        records: impl IntoIterator<Item = Result<SectionRecord, E>>,
    ) -> Result<u64, E> {
        if name.len() > NAME_BYTES_MAX {
            return Err(StoreError::Corrupt(format!(
                "section name {name:?} is over {NAME_BYTES_MAX} bytes"
            ))
            .into());
        }
        let mut writer = HashingWriter::new(&mut *self.out);
        writer.write(&[SECTION])?;
        writer.field(name.as_bytes())?;
        writer.write(&cursor.to_le_bytes())?;
        let mut count = 0_u64;
        for record in records {
            let (key, value) = record?;
            writer.write(&[RECORD])?;
            writer.field(&key)?;
            writer.field(&value)?;
            count += 1;
        }
        writer.write(&[TRAILER])?;
        writer.write(&count.to_le_bytes())?;
        let digest = writer.hasher.finalize();
        writer.raw(digest.as_bytes())?;
        self.sections += 1;
        Ok(count)
    }

    /// Writes the end marker; returns the number of sections.
    pub fn finish(self) -> Result<u32, StoreError> {
        let mut end = [SECTIONS_END, 0, 0, 0, 0];
        end[1..].copy_from_slice(&self.sections.to_le_bytes());
        self.out.write_all(&end).map_err(snapshot_io)?;
        Ok(self.sections)
    }
}

/// Reads the sections after the store's part of a snapshot stream record by record,
/// checking each section's trailer and the end marker.
pub struct SectionReader<'r, R: Read> {
    input: &'r mut R,
    /// The open section's running hash and records read so far.
    open: Option<(blake3::Hasher, u64)>,
    /// Sections opened so far.
    sections: u32,
    /// Whether the end marker was read.
    ended: bool,
}

impl<'r, R: Read> SectionReader<'r, R> {
    /// Reads sections from `input`, positioned just past the store's part.
    pub fn new(input: &'r mut R) -> Self {
        SectionReader {
            input,
            open: None,
            sections: 0,
            ended: false,
        }
    }

    /// The next section's name and cursor, or `None` after the last. What is left of the
    /// previous section is read (and checked) first.
    pub fn next_section(&mut self) -> Result<Option<(String, u64)>, StoreError> {
        while self.open.is_some() {
            self.next_record()?;
        }
        if self.ended {
            return Ok(None);
        }
        let Some(tag) = self.tag_or_end()? else {
            return Err(StoreError::Corrupt(
                "snapshot truncated: its sections have no end marker".into(),
            ));
        };
        match tag {
            SECTION => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&[SECTION]);
                let name = read_field(self.input, &mut hasher, NAME_BYTES_MAX)?;
                let name = String::from_utf8(name).map_err(|_| {
                    StoreError::Corrupt("snapshot section name is not UTF-8".into())
                })?;
                let mut cursor = [0_u8; 8];
                read_hashed(self.input, &mut hasher, &mut cursor)?;
                self.open = Some((hasher, 0));
                self.sections += 1;
                Ok(Some((name, u64::from_le_bytes(cursor))))
            }
            SECTIONS_END => {
                let mut count = [0_u8; 4];
                self.input.read_exact(&mut count).map_err(snapshot_io)?;
                let count = u32::from_le_bytes(count);
                if count != self.sections {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot end marker says {count} sections, found {}",
                        self.sections
                    )));
                }
                // What follows the end marker (a snapshot's log part) is not ours: never
                // read past it.
                self.ended = true;
                Ok(None)
            }
            other => Err(StoreError::Corrupt(format!(
                "snapshot section tag {other:#x}"
            ))),
        }
    }

    /// The open section's next record, or `None` once its trailer checked out (or when
    /// no section is open).
    pub fn next_record(&mut self) -> Result<Option<SectionRecord>, StoreError> {
        let Some((hasher, count)) = self.open.as_mut() else {
            return Ok(None);
        };
        let mut tag = [0_u8; 1];
        read_hashed(self.input, hasher, &mut tag)?;
        match tag[0] {
            RECORD => {
                let key = read_field(self.input, hasher, FIELD_BYTES_MAX)?;
                let value = read_field(self.input, hasher, FIELD_BYTES_MAX)?;
                *count += 1;
                Ok(Some((key, value)))
            }
            TRAILER => {
                let mut trailer_count = [0_u8; 8];
                read_hashed(self.input, hasher, &mut trailer_count)?;
                let trailer_count = u64::from_le_bytes(trailer_count);
                let expected = hasher.finalize();
                let mut digest = [0_u8; 32];
                self.input.read_exact(&mut digest).map_err(snapshot_io)?;
                if digest != *expected.as_bytes() {
                    return Err(StoreError::Corrupt(
                        "snapshot section checksum mismatch".into(),
                    ));
                }
                if trailer_count != *count {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot section trailer says {trailer_count} records, found {count}"
                    )));
                }
                self.open = None;
                Ok(None)
            }
            other => Err(StoreError::Corrupt(format!(
                "snapshot section record tag {other:#x}"
            ))),
        }
    }

    /// The next byte, or `None` at the end of the stream.
    fn tag_or_end(&mut self) -> Result<Option<u8>, StoreError> {
        let mut tag = [0_u8; 1];
        loop {
            match self.input.read(&mut tag) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(tag[0])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(snapshot_io(e)),
            }
        }
    }
}
