//! A service's own storage: one fjall database per service (`<data>/services/<name>/`), so
//! a service that hangs mid-write can never hold up another service or the node's state.
//!
//! A service's derived state and its feed cursor change together in one atomic batch
//! ([`ServiceDb::commit`]): after a crash or a restart the service resumes from a cursor
//! that matches its state — nothing skipped, nothing applied twice.
//!
//! For Raft snapshots the state and cursor are exported together from one fjall snapshot
//! ([`ServiceDb::export_view`]) and imported in place of the whole database
//! ([`ServiceDb::import`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

/// One stored entry: key and value bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Errors of a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Its storage failed.
    #[error("service storage: {0}")]
    Storage(String),
    /// Reading the node's state failed.
    #[error("reading the node's state: {0}")]
    State(#[from] crate::store::StoreError),
    /// Stored data does not decode.
    #[error("corrupt service data: {0}")]
    Corrupt(String),
}

impl From<fjall::Error> for ServiceError {
    fn from(error: fjall::Error) -> Self {
        ServiceError::Storage(error.to_string())
    }
}

const CURSOR: &str = "cursor";
/// Key of the layout version of a service's records. It lives among the records (in the
/// data keyspace) so it travels in snapshots with the records it describes; no service's
/// own keys start with a zero byte.
const LAYOUT: &[u8] = b"\0layout";
/// Records written per batch while importing.
const IMPORT_BATCH_RECORDS: usize = 10_000;

fn decode_cursor(bytes: Option<fjall::Slice>) -> Result<u64, ServiceError> {
    match bytes {
        Some(bytes) => {
            let array: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| ServiceError::Corrupt("cursor is not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(array))
        }
        None => Ok(0),
    }
}

/// One service's database.
#[derive(Clone)]
pub struct ServiceDb {
    db: Database,
    data: Keyspace,
    meta: Keyspace,
}

impl ServiceDb {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<ServiceDb, ServiceError> {
        let db = crate::store::database_builder(dir, 32 << 20)?.open()?;
        let data = db.keyspace("data", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(8 << 20)
                .data_block_compression_policy(crate::store::data_block_compression())
        })?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        Ok(ServiceDb { db, data, meta })
    }

    /// The feed position processed so far (0 = nothing).
    pub fn cursor(&self) -> Result<u64, ServiceError> {
        decode_cursor(self.meta.get(CURSOR)?)
    }

    /// The layout version its records were written in (`None`: never stamped — records
    /// from before layouts were stamped, or none at all).
    pub fn layout(&self) -> Result<Option<u32>, ServiceError> {
        match self.data.get(LAYOUT)? {
            Some(bytes) => {
                let array: [u8; 4] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| ServiceError::Corrupt("layout is not 4 bytes".into()))?;
                Ok(Some(u32::from_be_bytes(array)))
            }
            None => Ok(None),
        }
    }

    /// Stages the layout stamp `layout` (committed with the next [`ServiceDb::commit`]).
    pub fn stamp_layout(writes: &mut Writes, layout: u32) {
        writes.put(LAYOUT.to_vec(), layout.to_be_bytes().to_vec());
    }

    /// A stored value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.data.get(key)?.map(|v| v.to_vec()))
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order, after `after`
    /// (exclusive) when given, at most `limit`.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, ServiceError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match after {
            // Seek straight past `after` rather than walking the prefix from its start.
            Some(after) if after >= prefix => Box::new(
                self.data
                    .range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)),
            ),
            _ => Box::new(self.data.prefix(prefix)),
        };
        for guard in iter {
            let (key, value) = guard.into_inner()?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of keys starting with `prefix` (reads them all).
    pub fn count(&self, prefix: &[u8]) -> Result<u64, ServiceError> {
        let mut count = 0;
        for guard in self.data.prefix(prefix) {
            guard.key()?;
            count += 1;
        }
        Ok(count)
    }

    /// Writes `writes` (a `None` value deletes) and moves the cursor, atomically.
    pub fn commit(&self, writes: Writes, cursor: u64) -> Result<(), ServiceError> {
        let mut batch = self.db.batch();
        for (key, value) in writes.staged {
            match value {
                Some(value) => batch.insert(&self.data, key, value),
                None => batch.remove(&self.data, key),
            }
        }
        batch.insert(&self.meta, CURSOR, cursor.to_be_bytes());
        batch.commit()?;
        Ok(())
    }

    /// Makes everything committed so far durable.
    pub fn persist(&self) -> Result<(), ServiceError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Deletes everything (before importing a snapshot's copy).
    pub fn clear(&self) -> Result<(), ServiceError> {
        for keyspace in [&self.data, &self.meta] {
            loop {
                let keys: Vec<_> = keyspace
                    .iter()
                    .take(10_000)
                    .map(|guard| guard.key())
                    .collect::<Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = self.db.batch();
                for key in keys {
                    batch.remove(keyspace, key);
                }
                batch.commit()?;
            }
        }
        Ok(())
    }

    /// A consistent view of the state and its cursor, for a snapshot: a commit
    /// ([`ServiceDb::commit`]) is one atomic batch, so the view holds all of it or none.
    pub fn export_view(&self) -> ExportView {
        ExportView {
            snapshot: self.db.snapshot(),
            data: self.data.clone(),
            meta: self.meta.clone(),
        }
    }

    /// Replaces the whole state with `records` at `cursor`, then fsyncs; returns the
    /// number of records. Streams, in batches of `IMPORT_BATCH_RECORDS`; the cursor is
    /// written with the last batch. Not atomic: the caller keeps workers away while it runs
    /// and redoes it if it was interrupted (a crash leaves part of the records and no
    /// cursor).
    pub fn import(
        &self,
        cursor: u64,
        records: impl IntoIterator<Item = Result<KeyValue, ServiceError>>,
    ) -> Result<u64, ServiceError> {
        self.clear()?;
        let mut batch = self.db.batch();
        let (mut count, mut in_batch) = (0_u64, 0_usize);
        for record in records {
            let (key, value) = record?;
            batch.insert(&self.data, key, value);
            count += 1;
            in_batch += 1;
            if in_batch == IMPORT_BATCH_RECORDS {
                batch.commit()?;
                batch = self.db.batch();
                in_batch = 0;
            }
        }
        batch.insert(&self.meta, CURSOR, cursor.to_be_bytes());
        batch.commit()?;
        self.persist()?;
        Ok(count)
    }
}

/// One consistent view of a service's database ([`ServiceDb::export_view`]). Hold it
/// briefly: fjall keeps every version it sees until it is dropped.
pub struct ExportView {
    snapshot: Snapshot,
    data: Keyspace,
    meta: Keyspace,
}

impl ExportView {
    /// The feed position the viewed state reflects.
    pub fn cursor(&self) -> Result<u64, ServiceError> {
        decode_cursor(self.snapshot.get(&self.meta, CURSOR)?)
    }

    /// Every stored `(key, value)`, in key order, streamed.
    pub fn records(&self) -> impl Iterator<Item = Result<KeyValue, ServiceError>> + '_ {
        self.snapshot.iter(&self.data).map(|guard| {
            let (key, value) = guard.into_inner()?;
            Ok((key.to_vec(), value.to_vec()))
        })
    }

    /// How many records the view holds and a blake3 hash of them all (each key and value
    /// with its length, in key order), hex. The cursor is not included: callers report it
    /// beside the hash.
    pub fn hash(&self) -> Result<(u64, String), ServiceError> {
        let mut hasher = blake3::Hasher::new();
        let mut count = 0_u64;
        for guard in self.snapshot.iter(&self.data) {
            let (key, value) = guard.into_inner()?;
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(&key);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(&value);
            count += 1;
        }
        hasher.update(&count.to_le_bytes());
        Ok((count, hasher.finalize().to_hex().to_string()))
    }
}

/// Writes staged during one batch of processing; reads see them (read-your-writes).
#[derive(Debug, Default)]
pub struct Writes {
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Writes {
    /// Stages `value` under `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    /// Stages a delete of `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// The value of `key`: staged if any, else stored.
    pub fn get(&self, db: &ServiceDb, key: &[u8]) -> Result<Option<Vec<u8>>, ServiceError> {
        match self.staged.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => db.get(key),
        }
    }

    /// Staged entries whose key starts with `prefix` (`None`: a staged delete).
    pub fn staged_with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.staged
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Up to `limit` entries whose key starts with `prefix`, after `after` (exclusive) when
    /// given, in key order, as they stand with the staged writes laid over the stored ones
    /// (a staged delete hides a stored entry) — what a commit of these writes would leave.
    pub fn scan(
        &self,
        db: &ServiceDb,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, ServiceError> {
        let mut out: Vec<KeyValue> = Vec::new();
        let mut stored: std::collections::VecDeque<KeyValue> = Default::default();
        let mut stored_after: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        let mut stored_done = false;
        let mut staged = self
            .staged_with_prefix(prefix)
            .filter(|(key, _)| after.is_none_or(|after| *key > after))
            .peekable();
        while out.len() < limit {
            if stored.is_empty() && !stored_done {
                let page = db.scan(prefix, stored_after.as_deref(), limit)?;
                stored_done = page.len() < limit;
                if let Some((last, _)) = page.last() {
                    stored_after = Some(last.clone());
                }
                stored.extend(page);
            }
            let staged_first = match (stored.front(), staged.peek()) {
                (None, None) => break,
                (Some((stored_key, _)), Some((staged_key, _))) => {
                    if *staged_key == stored_key.as_slice() {
                        stored.pop_front();
                        true
                    } else {
                        *staged_key < stored_key.as_slice()
                    }
                }
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if staged_first {
                if let Some((key, Some(value))) = staged.next() {
                    out.push((key.to_vec(), value.to_vec()));
                }
            } else if let Some(entry) = stored.pop_front() {
                out.push(entry);
            }
        }
        Ok(out)
    }
}
