//! Streaming reference scanner: which candidate store paths does a byte stream mention?
//!
//! After a build, Nix serialises each output as a NAR (so file contents, names and symlink
//! targets are all covered) and searches the bytes for the 32-character hash parts of the
//! *candidate* paths (the input closure plus the outputs). Only the hash part is matched, so
//! `/nix/store/<hash>-foo`, a bare `<hash>` and `<hash>-renamed` all count, and nothing that
//! is not a candidate ever counts.
//!
//! Algorithm: a 32-byte window is looked up only if all 32 bytes are nix32 characters
//! (tracked as the length of the current run of such bytes, so each byte is inspected once);
//! a small bit filter on the window's first bytes avoids most map lookups. The scanner keeps
//! the last 31 bytes of the stream so that matches spanning chunk boundaries are found. Cost
//! is linear in the input.

use std::collections::{BTreeSet, HashMap};
use std::io;

use crate::nixbase32::is_nix32_char;
use crate::store_path::{HASH_PART_LEN, StorePath};

const FILTER_BITS: usize = 1 << 16;

/// Scans a stream for the hash parts of candidate store paths. Also an [`io::Write`] sink, so
/// a NAR dumper can write straight into it (or through a tee).
#[derive(Debug, Clone)]
pub struct RefScanner {
    /// Hash part → candidates with that hash part (normally one).
    candidates: HashMap<[u8; HASH_PART_LEN], Vec<StorePath>>,
    found: BTreeSet<StorePath>,
    /// Bit `filter_index(hash part)` is set for every candidate.
    filter: Vec<u64>,
    /// The last `HASH_PART_LEN - 1` bytes seen (fewer at the start).
    tail: Vec<u8>,
}

impl RefScanner {
    pub fn new(candidates: impl IntoIterator<Item = StorePath>) -> Self {
        let mut map: HashMap<[u8; HASH_PART_LEN], Vec<StorePath>> = HashMap::new();
        for p in candidates {
            let mut key = [0u8; HASH_PART_LEN];
            key.copy_from_slice(p.hash_part().as_bytes());
            let entry = map.entry(key).or_default();
            if !entry.contains(&p) {
                entry.push(p);
            }
        }
        let mut filter = vec![0u64; FILTER_BITS / 64];
        for key in map.keys() {
            let i = Self::filter_index(key);
            if let Some(w) = filter.get_mut(i / 64) {
                *w |= 1 << (i % 64);
            }
        }
        RefScanner {
            candidates: map,
            found: BTreeSet::new(),
            filter,
            tail: Vec::with_capacity(HASH_PART_LEN * 2),
        }
    }

    /// Scans the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.candidates.is_empty() || chunk.is_empty() {
            return;
        }
        // Windows that start in the tail and end in this chunk.
        if !self.tail.is_empty() {
            let take = chunk.len().min(HASH_PART_LEN - 1);
            let mut joint = std::mem::take(&mut self.tail);
            let tail_len = joint.len();
            joint.extend_from_slice(chunk.get(..take).unwrap_or_default());
            self.scan(&joint);
            // Restore the tail (the scan only reads it) before updating it below.
            joint.truncate(tail_len);
            self.tail = joint;
        }
        // Windows entirely inside this chunk.
        self.scan(chunk);
        // Keep the last HASH_PART_LEN-1 bytes of the stream.
        let keep = HASH_PART_LEN - 1;
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail
                .extend_from_slice(chunk.get(chunk.len() - keep..).unwrap_or_default());
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    fn scan(&mut self, data: &[u8]) {
        // `run` counts consecutive nix32 bytes ending at `i`; once it reaches 32 the window
        // ending here is a possible hash part. A 64 Kibit filter on its first bytes keeps
        // the full map lookup off the hot path for long runs of nix32-looking data.
        let mut run = 0usize;
        for (i, &c) in data.iter().enumerate() {
            if !is_nix32_char(c) {
                run = 0;
                continue;
            }
            run += 1;
            if run < HASH_PART_LEN {
                continue;
            }
            let Some(window) = data.get(i + 1 - HASH_PART_LEN..=i) else {
                continue;
            };
            if !self.filter_hit(window) {
                continue;
            }
            if let Some(paths) = self.candidates.remove(window) {
                self.found.extend(paths);
                if self.candidates.is_empty() {
                    return;
                }
            }
        }
    }

    fn filter_index(window: &[u8]) -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(window.get(..4).unwrap_or(&[0; 4]));
        (u32::from_le_bytes(b).wrapping_mul(0x9E37_79B1) >> 16) as usize
    }

    fn filter_hit(&self, window: &[u8]) -> bool {
        let i = Self::filter_index(window);
        self.filter
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The candidates found so far.
    pub fn found(&self) -> &BTreeSet<StorePath> {
        &self.found
    }

    pub fn into_found(self) -> BTreeSet<StorePath> {
        self.found
    }
}

impl io::Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Scans one buffer.
pub fn scan_for_references(
    data: &[u8],
    candidates: impl IntoIterator<Item = StorePath>,
) -> BTreeSet<StorePath> {
    let mut s = RefScanner::new(candidates);
    s.feed(data);
    s.into_found()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(h: &str, name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{h}-{name}")).unwrap()
    }

    const A: &str = "h8v50zwdsfhidk5zbcmzg82db28md31c";
    const B: &str = "z45ailnkm27lnvhimqkhy08f6sh5m17d";
    const C: &str = "0nblvv9yf6ffiw3dj9mbcqw5hxfc617g";

    #[test]
    fn finds_only_candidates() {
        let cands = [path(A, "a"), path(B, "b"), path(C, "c")];
        let data = format!("x /nix/store/{A}-a/bin and {B} but not {C}x"); // C followed by 'x' still matches
        let found = scan_for_references(data.as_bytes(), cands.clone());
        assert_eq!(found, BTreeSet::from(cands.clone()));
        let found = scan_for_references(format!("only {A}").as_bytes(), cands.clone());
        assert_eq!(found, BTreeSet::from([cands[0].clone()]));
        // A 31-char prefix is not a match.
        let found = scan_for_references(&A.as_bytes()[..31], cands.clone());
        assert!(found.is_empty());
        // Embedded in a longer nix32 run, it still matches (Nix behaves the same).
        let found = scan_for_references(format!("aaaa{A}aaaa").as_bytes(), cands);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn matches_across_every_split() {
        let cands = [path(A, "a")];
        let data = format!("prefix-{A}-suffix");
        for split in 0..=data.len() {
            let mut s = RefScanner::new(cands.clone());
            let (x, y) = data.as_bytes().split_at(split);
            s.feed(x);
            s.feed(y);
            assert_eq!(s.found().len(), 1, "split at {split}");
        }
        // One byte at a time.
        let mut s = RefScanner::new(cands);
        for b in data.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.found().len(), 1);
    }

    #[test]
    fn same_hash_part_reports_all() {
        let cands = [path(A, "a"), path(A, "other")];
        assert_eq!(scan_for_references(A.as_bytes(), cands).len(), 2);
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(
            noise in proptest::collection::vec(prop::sample::select(b"0123456789abcdfgz-/ \n".to_vec()), 0..200),
            at in 0usize..200,
            splits in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let cands = vec![path(A, "a"), path(B, "b")];
            let mut data = noise.clone();
            let at = at.min(data.len());
            data.splice(at..at, A.bytes());
            let whole = scan_for_references(&data, cands.clone());
            let mut s = RefScanner::new(cands);
            let mut points: Vec<usize> = splits.into_iter().map(|p| p.min(data.len())).collect();
            points.sort();
            let mut prev = 0;
            for p in points {
                s.feed(&data[prev..p]);
                prev = p;
            }
            s.feed(&data[prev..]);
            prop_assert!(whole.contains(&path(A, "a")));
            prop_assert_eq!(s.into_found(), whole);
        }
    }
}
