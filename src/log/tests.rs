//! Scenarios for the segmented log, each on a fresh temporary directory: appends across
//! rolled segments and reopening, range reads, crash leftovers (torn tails, torn headers,
//! missing sidecars), corruption in rolled and active segments, truncation at every kind of
//! place, retention, checkpoints and installs, metadata, refused requests, and concurrent
//! appends, syncs and reads.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::*;

/// Small enough that a few records roll several segments.
const SMALL_SEGMENT_BYTES: u64 = 256;

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes_max: SMALL_SEGMENT_BYTES,
        verify_on_open: false,
        intact_through: None,
    }
}

fn open(dir: &Path) -> Log {
    Log::open(options(dir)).expect("open the log")
}

/// The payload the tests store at `index`: 10 to 99 bytes derived from the index.
fn payload(index: u64) -> Vec<u8> {
    let len = 10 + (index * 37 % 90) as usize;
    (0..len)
        .map(|i| (index as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// A different payload for `index`, to tell rewritten records from the originals.
fn other(index: u64) -> Vec<u8> {
    format!("rewritten record {index}").into_bytes()
}

/// Appends `[from, to]` with `content`, `per_call` records per append.
fn append_with(log: &Log, from: u64, to: u64, per_call: u64, content: fn(u64) -> Vec<u8>) {
    let mut start = from;
    while start <= to {
        let end = (start + per_call - 1).min(to);
        let payloads: Vec<Vec<u8>> = (start..=end).map(content).collect();
        let records: Vec<(u64, &[u8])> = (start..=end)
            .zip(payloads.iter().map(Vec::as_slice))
            .collect();
        log.append(&records).expect("append");
        start = end + 1;
    }
}

/// Checks that the log holds exactly `[from, to]` with `content`.
fn assert_holds(log: &Log, from: u64, to: u64, content: fn(u64) -> Vec<u8>) {
    assert_eq!(
        (log.first_index(), log.last_index()),
        (Some(from), Some(to))
    );
    assert_records(log, from, to, content);
    assert_eq!(log.read(to + 1).expect("read past the end"), None);
    if from > 0 {
        assert_eq!(log.read(from - 1).expect("read before the start"), None);
    }
}

/// Checks that the log holds `[from, to]` with `content` (and maybe more).
fn assert_records(log: &Log, from: u64, to: u64, content: fn(u64) -> Vec<u8>) {
    for index in from..=to {
        assert_eq!(
            log.read(index).expect("read"),
            Some(content(index)),
            "index {index}"
        );
    }
}

/// A log holding `[1, 60]` in several segments, synced.
fn build(dir: &Path) -> Log {
    let log = open(dir);
    append_with(&log, 1, 60, 2, payload);
    log.sync().expect("sync");
    assert!(
        log.segments().len() >= 5,
        "expected several segments, got {:?}",
        log.segments()
    );
    log
}

/// Where the frame of `index` is: its file and byte range.
fn frame_location(log: &Log, index: u64) -> (PathBuf, u64, u64) {
    let state = log.inner.read_state();
    let segment = &state.segments[state.segment_of(index).expect("index in the log")];
    let (start, end) = segment.frame_span(index).expect("frame span");
    (segment.file.path.clone(), start, end)
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    file.write_all_at(&[byte[0] ^ 0xff], offset)
        .expect("write byte");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(bytes).expect("append bytes");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

/// One encoded frame, as the log writes it.
fn frame(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    segment::encode_frame(&mut buf, index, payload, payload.len() as u32);
    buf
}

fn assert_corrupt(result: Result<impl std::fmt::Debug, LogError>, mentions: &[&str]) {
    match result {
        Err(LogError::Corrupt(message)) => {
            for needle in mentions {
                assert!(
                    message.contains(needle),
                    "{message:?} should mention {needle:?}"
                );
            }
        }
        other => panic!("expected Corrupt mentioning {mentions:?}, got {other:?}"),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn appends_roll_segments_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let log = open(dir.path());
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        append_with(&log, 1, 60, 2, payload);
        log.sync().expect("sync");
        assert_holds(&log, 1, 60, payload);
        let segments = log.segments();
        let (rolled, active) = segments.split_at(segments.len() - 1);
        assert!(rolled.len() >= 4);
        for (segment, next) in segments.iter().zip(&segments[1..]) {
            assert_eq!(
                Some(next.first_index - 1),
                segment.last_index,
                "segments are contiguous"
            );
        }
        for segment in rolled {
            assert!(!segment.active && segment.bytes >= SMALL_SEGMENT_BYTES);
            assert!(segment::index_path(dir.path(), segment.first_index).exists());
        }
        assert!(
            active[0].active && !segment::index_path(dir.path(), active[0].first_index).exists()
        );
        let on_disk: u64 = segments.iter().map(|s| file_len(&s.path)).sum();
        assert_eq!(log.total_bytes(), on_disk);
        segments
    };
    let log = open(dir.path());
    assert_eq!(log.segments(), before);
    assert_holds(&log, 1, 60, payload);
    append_with(&log, 61, 70, 3, payload);
    assert_holds(&log, 1, 70, payload);
}

#[test]
fn read_range_visits_in_order_skips_deleted_records_and_stops_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let mut seen = Vec::new();
    log.read_range(5, 42, |index, bytes| {
        assert_eq!(bytes, payload(index).as_slice());
        seen.push(index);
        Ok(true)
    })
    .expect("read_range");
    assert_eq!(seen, (5..=42).collect::<Vec<_>>());

    seen.clear();
    log.read_range(10, 60, |index, _| {
        seen.push(index);
        Ok(index < 13)
    })
    .expect("stopped read_range");
    assert_eq!(seen, vec![10, 11, 12, 13]);

    let kept_from = log.segments()[2].first_index;
    log.delete_segments_before(kept_from).expect("retention");
    seen.clear();
    log.read_range(0, 1000, |index, _| {
        seen.push(index);
        Ok(true)
    })
    .expect("read_range over more than the log");
    assert_eq!(seen, (kept_from..=60).collect::<Vec<_>>());

    let error = log.read_range(1, 60, |_, _| {
        Err(LogError::Invalid("visitor gave up".into()))
    });
    assert!(matches!(error, Err(LogError::Invalid(m)) if m == "visitor gave up"));
}

#[test]
fn a_torn_tail_is_cut_at_open_and_appending_continues() {
    let torn_frame = frame(41, &[7u8; 100]);
    let mut bad_crc = frame(41, &payload(41));
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let tails: [(&str, Vec<u8>); 5] = [
        ("a partial frame", torn_frame[..60].to_vec()),
        ("a partial frame header", torn_frame[..9].to_vec()),
        ("garbage", b"\xde\xad\xbe\xef garbage".to_vec()),
        ("a whole frame with a bad crc", bad_crc),
        (
            "a valid frame with the wrong index",
            frame(45, &payload(45)),
        ),
    ];
    for (what, tail) in tails {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = {
            let log = open(dir.path());
            append_with(&log, 1, 40, 3, payload);
            log.sync().expect("sync");
            log.segments().pop().expect("active segment").path
        };
        append_bytes(&active, &tail);
        let log = open(dir.path());
        assert_holds(&log, 1, 40, payload);
        let segments = log.segments();
        let active_info = segments.last().expect("active");
        assert_eq!(
            file_len(&active),
            active_info.bytes,
            "{what}: the tail is cut off the file"
        );
        append_with(&log, 41, 45, 1, payload);
        drop(log);
        assert_holds(&open(dir.path()), 1, 45, payload);
    }
}

#[test]
fn a_bad_frame_below_the_durable_index_is_refused_not_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (active, first) = {
        let log = open(dir.path());
        append_with(&log, 1, 40, 3, payload);
        log.sync().expect("sync");
        let info = log.segments().pop().expect("active segment");
        (info.path, info.first_index)
    };
    // Flip one byte in the middle of the active segment's first frame's payload.
    let mut bytes = std::fs::read(&active).expect("read");
    let at = (segment::SEGMENT_HEADER_BYTES + segment::FRAME_HEADER_BYTES) as usize + 3;
    bytes[at] ^= 0xff;
    std::fs::write(&active, &bytes).expect("write");
    let length = bytes.len() as u64;

    // The caller knows records up to 40 were durable: damage, refused, nothing cut.
    let refused = Log::open(LogOptions {
        intact_through: Some(40),
        ..options(dir.path())
    });
    let Err(LogError::Corrupt(message)) = refused else {
        panic!("a damaged durable record must be refused");
    };
    assert!(
        message.contains(&format!("record {first} is damaged")),
        "{message}"
    );
    assert_eq!(file_len(&active), length, "nothing was cut");

    // Knowing only that records before the damage were durable, it is a torn tail.
    let log = Log::open(LogOptions {
        intact_through: Some(first - 1),
        ..options(dir.path())
    })
    .expect("a torn tail after the durable records is cut");
    assert_holds(&log, 1, first - 1, payload);
}

#[test]
fn a_segment_created_just_before_a_crash_is_accepted_empty_or_with_its_header_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(build(dir.path()));
    // A crash during a roll: the next segment exists with a torn header, or with its header.
    let next = segment::segment_path(dir.path(), 61);
    std::fs::write(&next, b"TANDEM").expect("torn header");
    let log = open(dir.path());
    assert_holds(&log, 1, 60, payload);
    let active = log.segments().pop().expect("active");
    assert_eq!(
        (active.first_index, active.last_index, active.bytes),
        (61, None, SEGMENT_HEADER_BYTES)
    );
    assert_eq!(file_len(&next), SEGMENT_HEADER_BYTES);
    append_with(&log, 61, 62, 1, payload);
    drop(log);
    assert_holds(&open(dir.path()), 1, 62, payload);
}

#[test]
fn a_damaged_rolled_segment_is_reported_by_reads_by_a_verifying_open_and_by_a_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, start) = {
        let log = build(dir.path());
        let (path, start, end) = frame_location(&log, 2);
        flip_byte(&path, end - 3);
        (path, start)
    };
    let name = file_name(&path);
    let offset = format!("offset {start}");

    // Default open trusts the sidecar; the damage shows on the reads that touch it.
    let log = open(dir.path());
    assert_corrupt(log.read(2), &[&name, &offset, "crc"]);
    assert_corrupt(log.read_range(1, 5, |_, _| Ok(true)), &[&name, &offset]);
    assert_eq!(log.read(3).expect("read a good record"), Some(payload(3)));
    drop(log);

    let verifying = LogOptions {
        verify_on_open: true,
        ..options(dir.path())
    };
    assert_corrupt(Log::open(verifying), &[&name, &offset]);

    let first_index = 1;
    std::fs::remove_file(segment::index_path(dir.path(), first_index)).expect("remove sidecar");
    assert_corrupt(Log::open(options(dir.path())), &[&name, &offset]);
}

#[test]
fn a_gap_between_segments_fails_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let middle = {
        let log = build(dir.path());
        log.segments()[2].clone()
    };
    std::fs::remove_file(&middle.path).expect("remove a middle segment");
    assert_corrupt(Log::open(options(dir.path())), &["gap"]);
}

#[test]
fn a_damaged_frame_in_the_active_segment_fails_its_read_then_is_cut_at_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(LogOptions::new(dir.path())).expect("open");
    append_with(&log, 1, 10, 4, payload);
    log.sync().expect("sync");
    let (path, start, end) = frame_location(&log, 10);
    flip_byte(&path, end - 1);
    assert_corrupt(
        log.read(10),
        &[&file_name(&path), &format!("offset {start}")],
    );
    assert_eq!(log.read(9).expect("read"), Some(payload(9)));
    drop(log);
    // At open the damaged last frame looks like a torn write: it is cut (documented).
    let log = Log::open(LogOptions::new(dir.path())).expect("reopen");
    assert_holds(&log, 1, 9, payload);
    assert_eq!(file_len(&path), start);
    append_with(&log, 10, 11, 1, payload);
    assert_holds(&log, 1, 11, payload);
}

#[test]
fn truncating_inside_the_active_segment_then_appending_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let before = log.segments();
    let active = before.last().expect("active").clone();
    assert!(
        active.last_index > Some(active.first_index),
        "the active segment has two records"
    );
    log.truncate_from(60).expect("truncate");
    assert_eq!(log.last_index(), Some(59));
    assert_eq!(log.segments().len(), before.len());
    assert_eq!(
        file_len(&active.path),
        log.segments().pop().expect("active").bytes
    );
    log.truncate_from(61)
        .expect("truncating past the end does nothing");
    append_with(&log, 60, 64, 2, other);
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.last_index(), Some(64));
    assert_records(&log, 1, 59, payload);
    assert_records(&log, 60, 64, other);
}

#[test]
fn truncating_at_a_segment_boundary_reactivates_the_previous_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let before = log.segments();
    let [.., previous, active] = before.as_slice() else {
        panic!("two segments")
    };
    log.truncate_from(active.first_index).expect("truncate");
    assert!(!active.path.exists());
    let after = log.segments();
    assert_eq!(after.len(), before.len() - 1);
    let reactivated = after.last().expect("active");
    assert!(reactivated.active && reactivated.first_index == previous.first_index);
    assert!(
        !segment::index_path(dir.path(), previous.first_index).exists(),
        "an active segment has no sidecar"
    );
    assert_eq!(log.last_index(), previous.last_index);
    let next = active.first_index;
    append_with(&log, next, next + 4, 1, other);
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.last_index(), Some(next + 4));
    assert_records(&log, 1, next - 1, payload);
    assert_records(&log, next, next + 4, other);
}

#[test]
fn truncating_into_a_rolled_segment_makes_it_active_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let target = log.segments()[1].clone();
    let cut_at = target.first_index + 1;
    log.truncate_from(cut_at).expect("truncate");
    let after = log.segments();
    assert_eq!(after.len(), 2);
    assert!(after[1].active && after[1].last_index == Some(target.first_index));
    assert!(!segment::index_path(dir.path(), target.first_index).exists());
    assert_eq!(file_len(&target.path), after[1].bytes);
    append_with(&log, cut_at, cut_at + 20, 2, other);
    assert!(log.segments().len() > 2, "it rolls again once full");
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.last_index(), Some(cut_at + 20));
    assert_records(&log, 1, cut_at - 1, payload);
    assert_records(&log, cut_at, cut_at + 20, other);
}

#[test]
fn truncating_everything_empties_the_log_which_then_starts_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    log.truncate_from(0).expect("truncate everything");
    assert_eq!(
        (log.first_index(), log.last_index(), log.segments().len()),
        (None, None, 0)
    );
    append_with(&log, 1000, 1010, 4, payload);
    drop(log);
    assert_holds(&open(dir.path()), 1000, 1010, payload);
}

#[test]
fn retention_deletes_whole_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let before = log.segments();
    assert_eq!(
        log.delete_segments_before(before[0].last_index.expect("records"))
            .expect("nothing to delete"),
        0
    );
    let keep_from = before[2].first_index + 1;
    assert_eq!(log.delete_segments_before(keep_from).expect("retention"), 2);
    assert!(
        !before[0].path.exists()
            && !segment::index_path(dir.path(), before[0].first_index).exists()
    );
    assert_holds(&log, before[2].first_index, 60, payload);

    let deleted = log
        .delete_segments_before(u64::MAX)
        .expect("retention of everything");
    assert_eq!(deleted, before.len() - 3);
    let active = before.last().expect("active");
    assert_eq!(log.segments().len(), 1);
    assert_holds(&log, active.first_index, 60, payload);
    drop(log);
    let log = open(dir.path());
    assert_holds(&log, active.first_index, 60, payload);
    append_with(&log, 61, 62, 1, payload);
}

#[test]
fn a_checkpoint_installs_into_another_log_and_never_changes_afterwards() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let [source_dir, checkpoint_dir, target_dir] = dirs.each_ref().map(|d| d.path());
    let source = build(source_dir);
    let segments = source.segments();
    let up_to = segments[2].first_index + 1;
    let files = source
        .checkpoint_to(checkpoint_dir, up_to)
        .expect("checkpoint");
    assert_eq!(files.len(), 3);
    assert_eq!(
        std::fs::metadata(&files[0]).expect("metadata").nlink(),
        2,
        "rolled segments are hard-linked"
    );
    assert_eq!(
        std::fs::metadata(&files[2]).expect("metadata").nlink(),
        1,
        "the last one is a copy"
    );
    assert_eq!(
        validate_segment_file(&files[2]).expect("valid copy"),
        (Some((segments[2].first_index, up_to)), 2)
    );

    // The source moves on, truncating into a hard-linked segment: the checkpoint stays.
    append_with(&source, 61, 70, 2, payload);
    let cut_at = segments[1].first_index + 1;
    source.truncate_from(cut_at).expect("truncate the source");
    append_with(&source, cut_at, cut_at + 5, 2, other);
    let linked = (
        segments[1].first_index,
        segments[1].last_index.expect("records"),
    );
    assert_eq!(
        validate_segment_file(&files[1]).expect("valid link"),
        (Some(linked), linked.1 - linked.0 + 1)
    );

    let target = open(target_dir);
    append_with(&target, 500, 530, 3, other);
    target.install(&files, up_to).expect("install");
    assert_holds(&target, 1, up_to, payload);
    append_with(&target, up_to + 1, up_to + 10, 2, other);
    target
        .truncate_from(2)
        .expect("the installed log is ordinary");
    drop(target);
    assert_holds(&open(target_dir), 1, 1, payload);

    assert_eq!(source.last_index(), Some(cut_at + 5));
    assert_records(&source, 1, cut_at - 1, payload);
    assert_records(&source, cut_at, cut_at + 5, other);
    assert!(files.iter().all(|f| !f.exists()), "install moved the files");
    let refused = source
        .checkpoint_to(target_dir, 1)
        .map_err(|e| e.to_string());
    assert_eq!(
        refused,
        Err(format!(
            "invalid log request: checkpoint directory {} is not empty",
            target_dir.display()
        ))
    );
}

#[test]
fn a_checkpoint_of_the_whole_log_copies_the_active_segment() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let [source_dir, checkpoint_dir, target_dir] = dirs.each_ref().map(|d| d.path());
    let source = build(source_dir);
    assert!(matches!(
        source.checkpoint_to(checkpoint_dir, 61),
        Err(LogError::Invalid(_))
    ));
    let files = source
        .checkpoint_to(checkpoint_dir, 60)
        .expect("checkpoint");
    assert_eq!(files.len(), source.segments().len());
    append_with(&source, 61, 64, 1, payload);
    let target = open(target_dir);
    target.install(&files, 60).expect("install");
    assert_holds(&target, 1, 60, payload);
    append_with(&target, 61, 64, 1, other);
    assert_holds(&source, 1, 64, payload);
}

#[test]
fn install_refuses_a_bad_file_set_and_leaves_the_live_log_alone() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let [source_dir, checkpoint_dir, target_dir] = dirs.each_ref().map(|d| d.path());
    let source = build(source_dir);
    let files = source
        .checkpoint_to(checkpoint_dir, 60)
        .expect("checkpoint");
    let target = open(target_dir);
    append_with(&target, 500, 530, 3, other);
    let target_segments = target.segments();

    let gap = [files[0].clone(), files[2].clone()];
    assert_corrupt(
        target.install(&gap, 60),
        &[&file_name(&files[2]), "expected"],
    );
    assert!(matches!(target.install(&files, 59), Err(LogError::Invalid(m)) if m.contains("59")));
    assert!(matches!(target.install(&[], 0), Err(LogError::Invalid(_))));
    let live = [target_segments[0].path.clone()];
    assert!(
        matches!(target.install(&live, 500), Err(LogError::Invalid(m)) if m.contains("inside the log directory"))
    );
    let (damaged, _, end) = frame_location(&source, 60);
    drop(source);
    let in_checkpoint = checkpoint_dir.join(file_name(&damaged));
    flip_byte(&in_checkpoint, end - 1);
    assert_corrupt(
        target.install(&files, 60),
        &[&file_name(&in_checkpoint), "crc"],
    );

    assert_eq!(target.segments(), target_segments);
    assert!(
        files.iter().all(|f| f.exists()),
        "refused files stay where they were"
    );
    drop(target);
    for index in 500..=530 {
        assert_eq!(
            open(target_dir).read(index).expect("read"),
            Some(other(index))
        );
    }
}

#[test]
fn metadata_round_trips_and_damage_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert_eq!(log.read_meta("vote").expect("read"), None);
    log.write_meta("vote", b"term 3, voted for 2", true)
        .expect("write");
    log.write_meta("vote", b"term 4", false).expect("overwrite");
    log.write_meta("empty", b"", true).expect("write empty");
    assert_eq!(
        log.read_meta("vote").expect("read"),
        Some(b"term 4".to_vec())
    );
    assert_eq!(log.read_meta("empty").expect("read"), Some(Vec::new()));
    for bad in [
        "",
        "../escape",
        "dots.tmp",
        &"x".repeat(META_NAME_BYTES_MAX + 1),
    ] {
        assert!(
            matches!(log.write_meta(bad, b"x", false), Err(LogError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        log.write_meta("big", &vec![0; META_BYTES_MAX + 1], false),
        Err(LogError::Invalid(_))
    ));

    let path = dir.path().join("meta-vote");
    flip_byte(&path, 0);
    assert_corrupt(log.read_meta("vote"), &["meta-vote", "crc"]);
    std::fs::write(&path, b"ab").expect("torn");
    assert_corrupt(log.read_meta("vote"), &["meta-vote"]);

    std::fs::write(dir.path().join("meta-vote.tmp"), b"half a write").expect("leftover");
    drop(log);
    let log = open(dir.path());
    assert!(
        !dir.path().join("meta-vote.tmp").exists(),
        "leftover temporary files are removed at open"
    );
    assert_eq!(log.read_meta("empty").expect("read"), Some(Vec::new()));
}

#[test]
fn appends_that_break_the_rules_are_refused_without_changing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    log.append(&[]).expect("an empty append is fine");
    append_with(&log, 7, 9, 3, payload);
    let before = log.segments();
    type Records = Vec<(u64, Vec<u8>)>;
    let refused: [(&str, Records); 5] = [
        ("a gap before", vec![(11, payload(11))]),
        ("an overlap", vec![(9, payload(9))]),
        ("a gap inside", vec![(10, payload(10)), (12, payload(12))]),
        (
            "a payload too large",
            vec![(10, vec![0; FRAME_PAYLOAD_BYTES_MAX + 1])],
        ),
        (
            "a repeated index",
            vec![(10, payload(10)), (10, payload(10))],
        ),
    ];
    for (what, records) in refused {
        let records: Vec<(u64, &[u8])> = records.iter().map(|(i, p)| (*i, p.as_slice())).collect();
        assert!(
            matches!(log.append(&records), Err(LogError::Invalid(_))),
            "{what}"
        );
        assert_eq!(log.segments(), before, "{what}");
    }
    assert_holds(&log, 7, 9, payload);

    let reserved = tempfile::tempdir().expect("tempdir");
    let log = open(reserved.path());
    log.append(&[(u64::MAX - 1, b"last".as_slice())])
        .expect("the last usable index");
    assert!(matches!(
        log.append(&[(u64::MAX, b"x".as_slice())]),
        Err(LogError::Invalid(_))
    ));
    drop(log);
    assert_eq!(
        open(reserved.path()).read(u64::MAX - 1).expect("read"),
        Some(b"last".to_vec())
    );
}

#[test]
fn missing_or_damaged_sidecars_are_rebuilt_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = build(dir.path()).segments();
    let missing = segment::index_path(dir.path(), segments[1].first_index);
    let damaged = segment::index_path(dir.path(), segments[2].first_index);
    let stale = segment::index_path(dir.path(), segments[3].first_index);
    let originals = [&missing, &damaged, &stale].map(|p| std::fs::read(p).expect("sidecar"));
    std::fs::remove_file(&missing).expect("remove");
    flip_byte(&damaged, 0);
    std::fs::write(&stale, &originals[2][4..]).expect("a sidecar missing its first offset");
    let orphan = segment::index_path(dir.path(), 9999);
    std::fs::write(&orphan, b"no segment").expect("orphan");

    let log = open(dir.path());
    assert_holds(&log, 1, 60, payload);
    for (path, original) in [&missing, &damaged, &stale].iter().zip(&originals) {
        assert_eq!(
            &std::fs::read(path).expect("rebuilt sidecar"),
            original,
            "{}",
            path.display()
        );
    }
    assert!(!orphan.exists());
}

#[test]
fn a_directory_is_opened_once_and_foreign_formats_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert!(
        matches!(Log::open(options(dir.path())), Err(LogError::Invalid(m)) if m.contains("already open"))
    );
    append_with(&log, 1, 3, 3, payload);
    let path = log.segments()[0].path.clone();
    drop(log);
    let bad_size = LogOptions {
        segment_bytes_max: 0,
        ..options(dir.path())
    };
    assert!(matches!(Log::open(bad_size), Err(LogError::Invalid(_))));

    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&2u32.to_le_bytes(), 12)
        .expect("write version");
    assert_corrupt(
        Log::open(options(dir.path())),
        &["version 2", &file_name(&path)],
    );
    file.write_all_at(b"NOTALOG", 0).expect("write magic");
    assert_corrupt(Log::open(options(dir.path())), &["magic"]);
}

#[test]
fn validate_segment_file_rejects_what_install_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = build(dir.path());
    let segments = log.segments();
    let rolled = &segments[1];
    let expected = (rolled.first_index, rolled.last_index.expect("records"));
    assert_eq!(
        validate_segment_file(&rolled.path).expect("valid"),
        (Some(expected), expected.1 - expected.0 + 1)
    );
    drop(log);
    let copy = dir.path().join("copy");
    std::fs::copy(&rolled.path, &copy).expect("copy");
    append_bytes(&copy, b"trailing");
    assert_corrupt(
        validate_segment_file(&copy),
        &["copy", &format!("offset {}", rolled.bytes)],
    );
}

#[test]
fn appends_syncs_and_reads_run_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(LogOptions {
        segment_bytes_max: 64 << 10,
        ..options(dir.path())
    })
    .expect("open");
    let total = 3000u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for start in (1..=total).step_by(3) {
                append_with(&log, start, (start + 2).min(total), 3, payload);
            }
            done.store(true, Ordering::Release);
        });
        scope.spawn(|| {
            while !done.load(Ordering::Acquire) {
                log.sync().expect("sync");
            }
        });
        for reader in 0..2u64 {
            let log = log.clone();
            let done = &done;
            scope.spawn(move || {
                let mut probe = reader;
                while !done.load(Ordering::Acquire) {
                    let Some(last) = log.last_index() else {
                        continue;
                    };
                    probe = probe
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let index = 1 + (probe >> 33) % last;
                    assert_eq!(
                        log.read(index).expect("read"),
                        Some(payload(index)),
                        "index {index}"
                    );
                    let mut next = index;
                    log.read_range(index, last, |i, bytes| {
                        assert_eq!((i, bytes), (next, payload(i).as_slice()));
                        next += 1;
                        Ok(next < index + 50)
                    })
                    .expect("read_range");
                }
            });
        }
    });
    log.sync().expect("final sync");
    assert!(log.segments().len() > 3);
    drop(log);
    assert_holds(&open(dir.path()), 1, total, payload);
}

#[test]
fn a_crash_at_any_byte_of_the_active_segment_recovers_the_whole_frames_before_it() {
    let source = tempfile::tempdir().expect("tempdir");
    let (path, frame_ends) = {
        let log = Log::open(LogOptions::new(source.path())).expect("open");
        append_with(&log, 1, 6, 2, payload);
        let ends: Vec<u64> = (1..=6).map(|index| frame_location(&log, index).2).collect();
        (log.segments()[0].path.clone(), ends)
    };
    let bytes = std::fs::read(&path).expect("segment bytes");
    for len in 0..=bytes.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(file_name(&path)), &bytes[..len]).expect("cut copy");
        let log = Log::open(LogOptions::new(dir.path())).expect("open a cut log");
        let whole = frame_ends
            .iter()
            .take_while(|&&end| end <= len as u64)
            .count() as u64;
        assert_eq!(
            log.last_index(),
            (whole > 0).then_some(whole),
            "cut at byte {len}"
        );
        if whole > 0 {
            assert_holds(&log, 1, whole, payload);
        }
        append_with(&log, whole + 1, whole + 1, 1, payload);
        assert_holds(&log, 1, whole + 1, payload);
    }
}
