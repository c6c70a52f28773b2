//! NAR, the Nix ARchive: the canonical serialisation of a file-system object.
//!
//! A NAR is what `narHash`/`narSize` are computed over, what `AddToStore`, `AddToStoreNar`,
//! `AddMultipleToStore`, `NarFromPath` and export files carry, and what the store restores
//! into `/nix/store`. Only regular files (with their owner-execute bit), symlinks and
//! directories are representable; no owners, timestamps or other permission bits.
//!
//! # Grammar
//!
//! Every token is a *string* in the worker protocol's sense: a u64 little-endian length,
//! the bytes, then zero padding up to a multiple of 8.
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" body ")"
//! body  = "regular" [ "executable" "" ] "contents" <file bytes as one string>
//!       | "symlink" "target" <target>
//!       | "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! # Bounds (those of current upstream Nix; 2.8 was laxer)
//!
//! * Nodes nest at most [`MAX_DEPTH`] = 64 deep, **counting the root as depth 1**: the
//!   deepest accepted node sits under 63 directories (63 entry names). This is exactly
//!   upstream's rule, which numbers the root 0 and rejects depth ≥ 64. The writer and
//!   [`dump_path`] refuse deeper trees too, so we never emit a NAR we would refuse to read.
//! * Tags (keywords) are at most [`MAX_TAG_LEN`] = 32 bytes, names at most [`MAX_NAME_LEN`]
//!   = 255, symlink targets 1..=[`MAX_TARGET_LEN`] = 4095 bytes without NUL.
//! * Names are never empty, `.`, `..`, and contain neither `/` nor NUL; the entries of a
//!   directory are strictly increasing in byte order (so there are no duplicates).
//! * Padding is zero; `executable` (whose value is the empty string) comes before
//!   `contents`; every token comes exactly where the grammar puts it.
//!
//! Every length word is checked against its bound before anything is allocated, and file
//! contents (which have no bound) are only ever streamed in bounded chunks. Under these
//! rules a NAR has exactly one encoding, so parsing and re-emitting reproduces its bytes.
//!
//! # Pieces
//!
//! * [`NarWriter`]: event encoder (`directory` / `entry` / `end`, `regular`, `symlink`).
//! * [`dump_path`]: serialise a file-system tree (dirfd-relative, never following symlinks).
//! * [`NarReader`]: streaming pull parser yielding [`NarEvent`]s. It reads **exactly** the
//!   archive's bytes from its `Read`, never more, so a NAR embedded in a larger stream
//!   (old `AddToStore`, `NarFromPath`, export files) ends where the parser stops.
//! * [`restore`] / [`restore_at`]: materialise a NAR below a path that must not exist yet,
//!   creating everything relative to directory fds with exclusive, no-follow creation, so
//!   no NAR can write outside its target.
//! * [`canonicalise_path_metadata`]: the permission and mtime part of the store's
//!   canonicalisation (0444/0555, mtime 1). Ownership and xattrs are store policy and are
//!   left to the store crate.
//! * [`copy_nar`], [`nar_hash_and_size`], [`NarHasher`], [`HashingReader`]: validate,
//!   hash and count NARs.

mod dump;
mod error;
mod hash;
mod reader;
mod restore;
mod writer;

#[cfg(test)]
mod tests;

pub use dump::dump_path;
pub use error::{Malformation, NarError, NarPath};
pub use hash::{HashingReader, NarHashAndSize, NarHasher, copy_nar, nar_hash_and_size};
pub use reader::{Contents, NarEvent, NarReader};
pub use restore::{canonicalise_at, canonicalise_path_metadata, restore, restore_at};
pub use writer::NarWriter;

/// The first token of every NAR.
pub const NAR_VERSION_MAGIC: &[u8] = b"nix-archive-1";

/// Maximum nesting depth of nodes, the root counting as 1.
pub const MAX_DEPTH: usize = 64;

/// Maximum length of a grammar keyword such as `regular` or `entry`.
pub const MAX_TAG_LEN: u64 = 32;

/// Maximum length of a directory entry name.
pub const MAX_NAME_LEN: u64 = 255;

/// Maximum length of a symlink target.
pub const MAX_TARGET_LEN: u64 = 4095;

/// Size of the buffers file contents are streamed through.
const CHUNK: usize = 64 * 1024;

/// Number of zero bytes that follow a string of `len` bytes.
fn padding_len(len: u64) -> usize {
    // The result is in 0..8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// Why `name` cannot be a directory entry name, if it cannot.
fn check_name(name: &[u8]) -> Option<Malformation> {
    if name.len() as u64 > MAX_NAME_LEN {
        return Some(Malformation::TooLong {
            what: "entry name",
            len: name.len() as u64,
            limit: MAX_NAME_LEN,
        });
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Some(Malformation::InvalidName(name.to_vec()));
    }
    None
}

/// Why `name` cannot follow `previous` in a directory, if it cannot.
fn check_order(previous: Option<&[u8]>, name: &[u8]) -> Option<Malformation> {
    match previous {
        Some(previous) if name == previous => Some(Malformation::DuplicateName(name.to_vec())),
        Some(previous) if name < previous => Some(Malformation::NotSorted {
            previous: previous.to_vec(),
            name: name.to_vec(),
        }),
        _ => None,
    }
}

/// Why `target` cannot be a symlink target, if it cannot.
fn check_target(target: &[u8]) -> Option<Malformation> {
    if target.len() as u64 > MAX_TARGET_LEN {
        return Some(Malformation::TooLong {
            what: "symlink target",
            len: target.len() as u64,
            limit: MAX_TARGET_LEN,
        });
    }
    let reason = if target.is_empty() {
        "it is empty"
    } else if target.contains(&0) {
        "it contains a NUL byte"
    } else {
        return None;
    };
    Some(Malformation::InvalidSymlinkTarget {
        target: target.to_vec(),
        reason,
    })
}
