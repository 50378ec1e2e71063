//! How often each acknowledged `messageId` was found while `verify` reads the stored events.
//!
//! Only ids registered with [`Counts::expect`] (those in the acknowledged-events file) are
//! counted; stored events from other runs are ignored.

use std::collections::HashMap;

/// How often each acknowledged messageId was found. UUIDs in canonical form (all that
/// `tandem load` writes) are kept as 128-bit integers: a few million of them then fit in
/// tens of megabytes.
#[derive(Debug, Default)]
pub struct Counts {
    /// Canonical UUID ids, as integers.
    uuids: HashMap<u128, u32>,
    /// Every other id, as text.
    others: HashMap<String, u32>,
}

impl Counts {
    fn uuid_key(id: &str) -> Option<u128> {
        // Only the lower-case hyphenated form maps back to the same text.
        if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        uuid::Uuid::try_parse(id).ok().map(|u| u.as_u128())
    }

    /// Registers an acknowledged id, found zero times so far.
    pub fn expect(&mut self, id: &str) {
        match Self::uuid_key(id) {
            Some(key) => {
                self.uuids.entry(key).or_insert(0);
            }
            None => {
                if !self.others.contains_key(id) {
                    self.others.insert(id.to_owned(), 0);
                }
            }
        }
    }

    /// Counts one stored occurrence; ids not in the file are ignored.
    pub fn observe(&mut self, id: &str) {
        let count = match Self::uuid_key(id) {
            Some(key) => self.uuids.get_mut(&key),
            None => self.others.get_mut(id),
        };
        if let Some(count) = count {
            *count = count.saturating_add(1);
        }
    }

    pub fn get(&self, id: &str) -> u32 {
        let count = match Self::uuid_key(id) {
            Some(key) => self.uuids.get(&key),
            None => self.others.get(id),
        };
        count.copied().unwrap_or(0)
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.uuids.values().chain(self.others.values()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_track_uuids_compactly_and_other_ids_as_text() {
        let mut counts = Counts::default();
        let uuid = "6f1c8e0a-1b2c-4d3e-8f40-123456789abc";
        for id in [uuid, "custom-1", "6F1C8E0A-1B2C-4D3E-8F40-123456789ABC"] {
            counts.expect(id);
        }
        assert_eq!((counts.uuids.len(), counts.others.len()), (1, 2));
        counts.observe(uuid);
        counts.observe(uuid);
        counts.observe("custom-1");
        counts.observe("not-acknowledged");
        assert_eq!(counts.get(uuid), 2);
        assert_eq!(counts.get("custom-1"), 1);
        assert_eq!(counts.get("6F1C8E0A-1B2C-4D3E-8F40-123456789ABC"), 0);
        assert_eq!(counts.get("not-acknowledged"), 0);
        let mut values: Vec<u32> = counts.values().collect();
        values.sort_unstable();
        assert_eq!(values, [0, 1, 2]);
    }
}
