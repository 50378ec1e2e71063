//! The continuous archive of the committed log: what an archive object is, how it is
//! sealed and opened, and how a listing of them is judged (coverage, gaps, overlaps).
//!
//! An archive object holds the raw log records (as [`crate::cluster::log_store::record_of`]
//! lays them out: kind, log id, command) of one range of consecutive committed indexes
//! `[first, last]` of one cluster, under
//! ```text
//! archive/<cluster id>/<first:020>-<last:020>
//! ```
//! so that listing `archive/<cluster id>` gives every range without downloading anything,
//! and a restored cluster (a new cluster id) never writes into the old cluster's ranges.
//! Its bytes are
//! ```text
//! tandem-archive 1 <mac, 64 hex>\n
//! {header json}\n
//! age(zstd(frames))            frames = (u32 LE length, record)*
//! ```
//! The header says the range, the log time of its first and last timed entries (a batch's
//! proposal time, or a tick's) and the plaintext size; the MAC (keyed blake3 under the repo
//! key, bound to the object's name) covers the header and the ciphertext. So a node, which
//! holds the repo key but not the age identity, can check an object it finds (a
//! half-uploaded or damaged one fails), and only the operator can read the records.
//!
//! Invariants: every record of an object is the committed entry at its index (the decoder
//! checks each record's log id against its position); objects are written create-only, so
//! two writers never replace each other's; ranges of one cluster are meant to be
//! consecutive and disjoint, and [`continuity`] names every gap and overlap.

use serde::{Deserialize, Serialize};

use super::keys::Identities;
use super::{BackupError, Repository};
use crate::cluster::types::Entry;

/// Where archive objects live (one folder per cluster id).
pub const ARCHIVE: &str = "archive";
/// Largest plaintext of one archive object (records and their length prefixes), bytes.
pub const OBJECT_BYTES_MAX: u64 = 64 << 20;
/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
const HEADER: &str = "tandem-archive 1 ";
/// zstd level of archive objects (blocks are compressed already; this packs the framing).
const ZSTD_LEVEL: i32 = 3;
/// The folder of a cluster without an id (clusters older than cluster ids).
const NO_CLUSTER_ID: &str = "no-cluster-id";

/// What an archive object says about itself (authenticated, not encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format.
    pub format: u32,
    /// The cluster whose log it holds.
    pub cluster: String,
    /// Its first and last index (inclusive).
    pub first: u64,
    pub last: u64,
    /// Log time of its first and last timed entry (ingest batch or tick), ms since the
    /// epoch; `None` if no entry in it carries a time.
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Plaintext bytes (frames) inside.
    pub plain_bytes: u64,
}

/// One archive object as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Range {
    /// Its first and last index.
    pub first: u64,
    pub last: u64,
    /// Its object name.
    pub name: String,
    /// Stored bytes.
    pub size: u64,
}

/// The folder of `cluster`'s archive.
pub fn folder(cluster: Option<&str>) -> String {
    format!("{ARCHIVE}/{}", cluster.unwrap_or(NO_CLUSTER_ID))
}

/// The object name of `cluster`'s range `[first, last]`.
pub fn object_name(cluster: Option<&str>, first: u64, last: u64) -> String {
    format!("{}/{first:020}-{last:020}", folder(cluster))
}

/// The range an object name gives, if it is an archive object's name.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let file = name.rsplit('/').next()?;
    let (first, last) = file.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// The log time an entry carries: an ingest block's proposal time or a tick's.
pub fn entry_time_ms(entry: &Entry) -> Option<i64> {
    match &entry.payload {
        openraft::EntryPayload::Normal(crate::model::command::Command::Ingest(block)) => {
            block.head().ok().map(|head| head.time_ms)
        }
        openraft::EntryPayload::Normal(crate::model::command::Command::Tick { time_ms }) => {
            Some(*time_ms)
        }
        _ => None,
    }
}

/// Seals the records `[(index, record)]` (consecutive, committed, of `cluster`) as one
/// archive object; returns its name, bytes and header.
pub fn seal(
    repository: &Repository,
    cluster: Option<&str>,
    records: &[(u64, Vec<u8>)],
) -> Result<(String, Vec<u8>, Header), BackupError> {
    let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else {
        return Err(BackupError::Invalid(
            "an archive object needs records".into(),
        ));
    };
    let (mut first_ms, mut last_ms) = (None, None);
    let mut frames = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + 4).sum());
    for (index, record) in records {
        let entry = crate::cluster::log_store::entry_of(record)
            .map_err(|e| BackupError::Invalid(format!("log record {index}: {e}")))?;
        if let Some(ms) = entry_time_ms(&entry) {
            first_ms = first_ms.or(Some(ms));
            last_ms = Some(ms);
        }
        let len = u32::try_from(record.len())
            .map_err(|_| BackupError::Invalid(format!("log record {index} is too large")))?;
        frames.extend_from_slice(&len.to_le_bytes());
        frames.extend_from_slice(record);
    }
    let header = Header {
        format: FORMAT,
        cluster: cluster.unwrap_or(NO_CLUSTER_ID).to_owned(),
        first: *first,
        last: *last,
        first_ms,
        last_ms,
        plain_bytes: frames.len() as u64,
    };
    let compressed = zstd::bulk::compress(&frames, ZSTD_LEVEL)
        .map_err(|e| BackupError::Crypto(format!("compressing an archive object: {e}")))?;
    let ciphertext =
        super::keys::Recipients::parse(&repository.config.recipients)?.encrypt(&compressed)?;
    let name = object_name(cluster, *first, *last);
    let mut body = serde_json::to_vec(&header)
        .map_err(|e| BackupError::Invalid(format!("encoding {name}: {e}")))?;
    body.push(b'\n');
    body.extend_from_slice(&ciphertext);
    let mut out = format!("{HEADER}{}\n", repository.key.mac(&name, &body)).into_bytes();
    out.extend_from_slice(&body);
    Ok((name, out, header))
}

/// Checks object `name` (MAC under the repo key, header against the name); returns its
/// header and its ciphertext. Needs no age identity: nodes use it.
pub fn open<'a>(
    repository: &Repository,
    name: &str,
    bytes: &'a [u8],
) -> Result<(Header, &'a [u8]), BackupError> {
    let corrupt = |check: &str, detail: String| BackupError::Corrupt {
        object: name.to_owned(),
        check: check.to_owned(),
        detail,
    };
    let line = |from: usize| {
        bytes[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|at| from + at)
            .ok_or_else(|| corrupt("header", "truncated before its header ends".into()))
    };
    let end_mac = line(0)?;
    let mac = std::str::from_utf8(&bytes[..end_mac])
        .ok()
        .and_then(|h| h.strip_prefix(HEADER))
        .ok_or_else(|| corrupt("header", "not a tandem archive object".into()))?;
    let body = &bytes[end_mac + 1..];
    if !repository.key.check_mac(name, body, mac) {
        return Err(corrupt(
            "MAC (keyed blake3 under the repo key)",
            "the object was changed, truncated (a half-finished upload?) or moved from another \
             name"
                .into(),
        ));
    }
    let end_header = line(end_mac + 1)?;
    let header: Header = serde_json::from_slice(&bytes[end_mac + 1..end_header])
        .map_err(|e| corrupt("header JSON", e.to_string()))?;
    if header.format != FORMAT || parse_name(name) != Some((header.first, header.last)) {
        return Err(corrupt(
            "header",
            format!(
                "format {} range [{}, {}] does not match the name",
                header.format, header.first, header.last
            ),
        ));
    }
    Ok((header, &bytes[end_header + 1..]))
}

/// Decrypts and decodes object `name` (already [`open`]ed): its entries in order, each
/// checked to be the entry of its index, with its raw record.
pub fn decode(
    identities: &Identities,
    name: &str,
    header: &Header,
    ciphertext: &[u8],
) -> Result<Vec<(Entry, Vec<u8>)>, BackupError> {
    let corrupt = |check: &str, detail: String| BackupError::Corrupt {
        object: name.to_owned(),
        check: check.to_owned(),
        detail,
    };
    if header.plain_bytes > OBJECT_BYTES_MAX {
        return Err(corrupt(
            "size",
            format!("{} plaintext bytes", header.plain_bytes),
        ));
    }
    let compressed = identities.decrypt(ciphertext, name)?;
    let frames = zstd::bulk::decompress(&compressed, header.plain_bytes as usize)
        .map_err(|e| corrupt("zstd", e.to_string()))?;
    let mut out = Vec::new();
    let mut at = 0_usize;
    let mut index = header.first;
    while at < frames.len() {
        let len = frames
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| corrupt("framing", format!("short length at byte {at}")))?;
        let record = frames
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt("framing", format!("record {index} runs past the end")))?;
        let entry = crate::cluster::log_store::entry_of(record)
            .map_err(|e| corrupt("record", format!("index {index}: {e}")))?;
        if entry.log_id.index != index {
            return Err(corrupt(
                "record index",
                format!("record {index} holds entry {}", entry.log_id.index),
            ));
        }
        out.push((entry, record.to_vec()));
        at += 4 + len;
        index += 1;
    }
    if index != header.last + 1 {
        return Err(corrupt(
            "record count",
            format!(
                "{} records for the range [{}, {}]",
                out.len(),
                header.first,
                header.last
            ),
        ));
    }
    Ok(out)
}

/// Every archive object of `cluster`, by first index.
pub async fn list(
    repository: &Repository,
    cluster: Option<&str>,
) -> Result<Vec<Range>, BackupError> {
    let mut ranges: Vec<Range> = repository
        .repo
        .list(&folder(cluster))
        .await?
        .into_iter()
        .filter_map(|l| {
            parse_name(&l.name).map(|(first, last)| Range {
                first,
                last,
                name: l.name,
                size: l.size,
            })
        })
        .collect();
    ranges.sort_by_key(|r| (r.first, r.last));
    Ok(ranges)
}

/// Every gap and overlap between consecutive `ranges` (sorted by first index), named.
pub fn continuity(ranges: &[Range]) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in ranges.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.first > a.last + 1 {
            problems.push(format!(
                "gap: indexes {}..={} are in no archive object (between {} and {})",
                a.last + 1,
                b.first - 1,
                a.name,
                b.name
            ));
        } else if b.first <= a.last {
            problems.push(format!(
                "overlap: {} and {} both hold indexes {}..={}",
                a.name,
                b.name,
                b.first,
                a.last.min(b.last)
            ));
        }
    }
    problems
}

/// The consecutive run of `ranges` that continues from index `from`: the ranges to read
/// to replay from `from` on, and where that run ends. A gap stops it.
pub fn run_from(ranges: &[Range], from: u64) -> (Vec<&Range>, Option<u64>) {
    let mut run = Vec::new();
    let mut next = from;
    for range in ranges {
        if range.last < next {
            continue;
        }
        if range.first > next {
            break;
        }
        next = range.last + 1;
        run.push(range);
    }
    let end = next.checked_sub(1).filter(|end| *end >= from);
    (run, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64) -> Range {
        Range {
            first,
            last,
            name: object_name(Some("c"), first, last),
            size: 1,
        }
    }

    #[test]
    fn names_give_ranges_and_sort_by_index() {
        let name = object_name(Some("c1"), 7, 42);
        assert_eq!(name, "archive/c1/00000000000000000007-00000000000000000042");
        assert_eq!(parse_name(&name), Some((7, 42)));
        assert!(object_name(None, 9, 9) < object_name(None, 10, 10));
        for bad in [
            "archive/c/7-42",
            "archive/c/x",
            "archive/c/00000000000000000042-00000000000000000007",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn gaps_and_overlaps_are_named_and_a_run_stops_at_a_gap() {
        let ranges = [range(1, 10), range(11, 20), range(25, 30), range(28, 40)];
        let problems = continuity(&ranges);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("gap: indexes 21..=24"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("overlap:"), "{problems:?}");
        assert!(continuity(&ranges[..2]).is_empty());
        let (run, end) = run_from(&ranges, 6);
        assert_eq!((run.len(), end), (2, Some(20)));
        let (run, end) = run_from(&ranges, 21);
        assert!(run.is_empty());
        assert_eq!(end, None);
        assert_eq!(run_from(&ranges, 26).1, Some(40));
    }
}
