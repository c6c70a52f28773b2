//! Store-path base names as CppNix 2.8 parses them (`StorePath::StorePath(baseName)`):
//!
//! ```text
//! base-name = hash-part <any char> name      ; CppNix does not check that char is '-'
//! hash-part = 32 × [0-9a-z] except e o u t   ; nix32 alphabet
//! name      = 1*211 [0-9a-zA-Z+\-._?=]
//! ```
//!
//! The GC needs exactly this rule to decide what in the store dir is a store path (and so
//! protected by hash-part temp roots, e.g. `<hash>-x.lock`) and what is junk.

/// Length of a store path's hash part.
pub const HASH_PART_LEN: usize = 32;

/// Longest allowed name.
pub const MAX_NAME_LEN: usize = 211;

/// True for the 32 characters of Nix's base-32 alphabet.
pub fn is_nix32_char(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'z') && !matches!(c, b'e' | b'o' | b'u' | b't')
}

/// True for characters allowed in a store path name.
pub fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// Returns the hash part if `base` is a store path base name by CppNix 2.8's rule.
pub fn hash_part_of(base: &str) -> Option<&str> {
    let b = base.as_bytes();
    if b.len() < HASH_PART_LEN + 2 {
        return None;
    }
    let (hash, rest) = b.split_at(HASH_PART_LEN);
    let name = rest.get(1..)?;
    if !hash.iter().all(|&c| is_nix32_char(c))
        || name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.iter().all(|&c| is_name_char(c))
    {
        return None;
    }
    base.get(..HASH_PART_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        let h = "z45ailnkm27lnvhimqkhy08f6sh5m17d";
        assert_eq!(hash_part_of(&format!("{h}-hello.txt")), Some(h));
        assert_eq!(hash_part_of(&format!("{h}-x.lock")), Some(h));
        assert_eq!(hash_part_of(&format!("{h}-x.drv.chroot")), Some(h));
        assert_eq!(hash_part_of(&format!("{h}-")), None);
        assert_eq!(hash_part_of(&format!("{h}-a b")), None);
        assert_eq!(hash_part_of(&format!("{h}-{}", "a".repeat(211))), Some(h));
        assert_eq!(hash_part_of(&format!("{h}-{}", "a".repeat(212))), None);
        assert_eq!(hash_part_of("e45ailnkm27lnvhimqkhy08f6sh5m17d-x"), None);
        assert_eq!(hash_part_of(".links"), None);
        assert_eq!(hash_part_of("junk"), None);
        assert_eq!(hash_part_of(".tmp-link-123-456"), None);
    }
}
