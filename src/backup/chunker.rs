//! Content-defined chunking: files are cut where a rolling "gear" hash of the last bytes
//! hits a pattern, so an insertion or a change moves only the cuts near it and the chunks
//! around it keep their names (and are not uploaded again). Sealed log segments never
//! change, so their chunks repeat exactly from one backup to the next; the state file
//! changes where profiles changed.
//!
//! Chunks are between [`CHUNK_BYTES_MIN`] and [`CHUNK_BYTES_MAX`], about
//! [`CHUNK_BYTES_AVG`] on random data. The gear table is derived from a fixed seed: the
//! cut points are part of the repository format (changing them only costs deduplication,
//! never correctness).

use std::io::Read;

/// Smallest chunk, bytes (except a file's last).
pub const CHUNK_BYTES_MIN: usize = 64 << 10;
/// Typical chunk, bytes.
pub const CHUNK_BYTES_AVG: usize = 256 << 10;
/// Largest chunk of any kind, bytes (what a restore accepts).
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// Where one kind of file is cut: past `min` bytes, where the top `avg_bits` bits of the
/// gear hash are zero (about every `2^avg_bits` bytes), and at `max` at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Smallest chunk, bytes (except a file's last).
    pub min: usize,
    /// log2 of the typical distance past `min` to a cut.
    pub avg_bits: u32,
    /// Largest chunk, bytes (at most [`CHUNK_BYTES_MAX`]).
    pub max: usize,
}

/// The default sizes (log segments): 64 KiB / ~256 KiB / 1 MiB.
pub const SIZES: Sizes = Sizes {
    min: CHUNK_BYTES_MIN,
    avg_bits: 18,
    max: CHUNK_BYTES_MAX,
};

fn gear() -> &'static [u64; 256] {
    static GEAR: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    GEAR.get_or_init(|| {
        // splitmix64 from a fixed seed.
        let mut state = 0x7461_6e64_656d_0001_u64;
        let mut table = [0_u64; 256];
        for slot in &mut table {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *slot = z ^ (z >> 31);
        }
        table
    })
}

/// Where the chunk starting at `data[0]` ends: a cut point, or `data.len()` when no cut
/// is found before it (the caller passes at least [`CHUNK_BYTES_MAX`] bytes unless at the
/// end of the file).
pub fn next_cut(data: &[u8]) -> usize {
    next_cut_sized(data, SIZES)
}

/// [`next_cut`] with other sizes.
pub fn next_cut_sized(data: &[u8], sizes: Sizes) -> usize {
    let end = data.len().min(sizes.max).min(CHUNK_BYTES_MAX);
    if end <= sizes.min {
        return end;
    }
    let bits = sizes.avg_bits.clamp(1, 63);
    let mask = ((1_u64 << bits) - 1) << (64 - bits);
    let gear = gear();
    let mut hash = 0_u64;
    for (i, byte) in data[sizes.min..end].iter().enumerate() {
        hash = (hash << 1).wrapping_add(gear[usize::from(*byte)]);
        if hash & mask == 0 {
            return sizes.min + i + 1;
        }
    }
    end
}

/// Reads `input` chunk by chunk, calling `each` with every chunk in order; returns the
/// bytes read.
pub fn for_each_chunk<E>(
    input: &mut impl Read,
    each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E>
where
    E: From<std::io::Error>,
{
    for_each_chunk_sized(input, SIZES, each)
}

/// [`for_each_chunk`] with other sizes.
pub fn for_each_chunk_sized<E>(
    input: &mut impl Read,
    sizes: Sizes,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E>
where
    E: From<std::io::Error>,
{
    let mut buf = vec![0_u8; CHUNK_BYTES_MAX];
    let mut filled = 0;
    let mut total = 0_u64;
    let mut eof = false;
    loop {
        while !eof && filled < buf.len() {
            let n = input.read(&mut buf[filled..])?;
            if n == 0 {
                eof = true;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(total);
        }
        let cut = next_cut_sized(&buf[..filled], sizes);
        each(&buf[..cut])?;
        total += cut as u64;
        buf.copy_within(cut..filled, 0);
        filled -= cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_chunk::<std::io::Error>(&mut &data[..], |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0_u8; len];
        rng.fill_bytes(&mut data);
        data
    }

    #[test]
    fn chunks_cover_the_file_within_bounds() {
        let data = random(9 << 20, 1);
        let pieces = chunks(&data);
        assert_eq!(pieces.concat(), data);
        for piece in &pieces[..pieces.len() - 1] {
            assert!((CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&piece.len()));
        }
        assert!(
            pieces.len() >= 5,
            "about 512 KiB each on random data: {}",
            pieces.len()
        );
        assert!(chunks(&[]).is_empty());
        assert_eq!(chunks(b"small"), vec![b"small".to_vec()]);
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = random(8 << 20, 2);
        let mut edited = data.clone();
        edited.splice(4 << 20..4 << 20, b"a few new bytes".iter().copied());
        let before: std::collections::HashSet<Vec<u8>> = chunks(&data).into_iter().collect();
        let after = chunks(&edited);
        let changed = after.iter().filter(|c| !before.contains(*c)).count();
        assert!(changed <= 2, "{changed} of {} chunks changed", after.len());
    }
}
