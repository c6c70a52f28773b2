//! Nix's base-32 encoding ("nix32"), used for store path hash parts and for hashes in
//! content addresses and signatures' fingerprints.
//!
//! Alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no `e o u t`, so hashes never spell words).
//! An `n`-byte digest becomes `ceil(8n/5)` characters. The string is the big-endian base-32
//! number whose bits are taken little-endian from the bytes: the character at position `k`
//! (0 = leftmost) holds the 5 bits starting at bit `b = (len-1-k)*5`, where bit `b` is bit
//! `b % 8` of byte `b / 8`. So the *last* byte drives the *first* characters — this is not
//! RFC 4648 base32 and no generic crate implements it.
//!
//! Decoding rejects characters outside the alphabet, lengths that no byte count encodes to,
//! and non-zero bits beyond the last byte, so every byte string has exactly one encoding.

use crate::error::{Error, Result, excerpt};

/// The 32 characters, in value order (which is also ASCII order, so string order of equal-
/// length encodings equals numeric order).
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its 5-bit value, or `0xff` when not in [`ALPHABET`].
const REVERSE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Whether `c` is one of the 32 nix32 characters.
pub fn is_nix32_char(c: u8) -> bool {
    REVERSE[c as usize] != 0xff
}

/// Characters needed to encode `byte_len` bytes: `ceil(8 * byte_len / 5)`.
pub const fn encoded_len(byte_len: usize) -> usize {
    (byte_len * 8).div_ceil(5)
}

/// Bytes held by a `char_len`-character string: `floor(5 * char_len / 8)`.
///
/// Only lengths with `encoded_len(decoded_len(n)) == n` are accepted by [`decode`].
pub const fn decoded_len(char_len: usize) -> usize {
    char_len * 5 / 8
}

/// Encodes `bytes` in nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in 0..len {
        let b = (len - 1 - k) * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = u16::from(bytes.get(i).copied().unwrap_or(0)) >> j;
        let hi = u16::from(bytes.get(i + 1).copied().unwrap_or(0)) << (8 - j);
        let c = ((lo | hi) & 0x1f) as usize;
        out.push(char::from(ALPHABET[c]));
    }
    out
}

/// Decodes a nix32 string into exactly `out.len()` bytes.
///
/// The input must have length `encoded_len(out.len())`.
pub fn decode_into(input: &[u8], out: &mut [u8]) -> Result<()> {
    let bad = |reason: String| Error::BadNixBase32 {
        input: excerpt(input),
        reason,
    };
    if input.len() != encoded_len(out.len()) {
        return Err(bad(format!(
            "expected {} characters for {} bytes, got {}",
            encoded_len(out.len()),
            out.len(),
            input.len()
        )));
    }
    out.fill(0);
    let len = input.len();
    for (k, &c) in input.iter().enumerate() {
        let v = REVERSE[c as usize];
        if v == 0xff {
            return Err(bad(format!(
                "character '{}' at position {k} is not in the nix base-32 alphabet",
                char::from(c).escape_default()
            )));
        }
        let b = (len - 1 - k) * 5;
        let i = b / 8;
        let j = b % 8;
        let v = u16::from(v) << j;
        if let Some(byte) = out.get_mut(i) {
            *byte |= (v & 0xff) as u8;
        }
        let carry = (v >> 8) as u8;
        match out.get_mut(i + 1) {
            Some(byte) => *byte |= carry,
            None if carry != 0 => {
                return Err(bad("non-zero bits beyond the last byte".into()));
            }
            None => {}
        }
    }
    Ok(())
}

/// Decodes a nix32 string of any canonical length.
pub fn decode(input: impl AsRef<[u8]>) -> Result<Vec<u8>> {
    let input = input.as_ref();
    let n = decoded_len(input.len());
    if encoded_len(n) != input.len() {
        return Err(Error::BadNixBase32 {
            input: excerpt(input),
            reason: format!(
                "{} characters is not the length of any encoded byte string",
                input.len()
            ),
        });
    }
    let mut out = vec![0u8; n];
    decode_into(input, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    #[test]
    fn spec_vector_sha256() {
        // worker-protocol.md §8.1 / Appendix B (`nix-store -q --hash`).
        let h = hex("6af7914a359948903c64b4d071e48a438c7b6c43cd0852e1137939bcc0e95e6b");
        let s = "0ssyx70bqfbr2ghm426d8dn7p323ibj73l5lchy90j4r6m593xva";
        assert_eq!(encode(&h), s);
        assert_eq!(decode(s).unwrap(), h);
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        assert_eq!(decoded_len(32), 20);
        assert_eq!(decoded_len(52), 32);
        assert_eq!(decoded_len(103), 64);
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn small_values() {
        // One byte: 8 bits in two characters, high character holds the top 3 bits.
        assert_eq!(encode(&[0x00]), "00");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0x20]), "10");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
    }

    #[test]
    fn rejects_bad_input() {
        // `e`, `o`, `u`, `t` are not in the alphabet.
        for bad in ["0e", "0o", "0u", "0t", "0A", "0-"] {
            let err = decode(bad).unwrap_err();
            assert!(matches!(err, Error::BadNixBase32 { .. }), "{bad}: {err}");
        }
        // 3 characters = 15 bits: no byte count encodes to that length.
        assert!(decode("000").is_err());
        // "80" would need a 9th bit.
        let err = decode("80").unwrap_err();
        assert!(err.to_string().contains("non-zero bits"), "{err}");
        // 52 chars for 32 bytes leave 4 spare bits: the first character may be at most '1'.
        let mut s = "0".repeat(52);
        s.replace_range(0..1, "1");
        assert_eq!(decode(&s).unwrap().len(), 32);
        s.replace_range(0..1, "2");
        assert!(decode(&s).is_err());
    }

    #[test]
    fn decode_into_checks_length() {
        let mut out = [0u8; 20];
        assert!(decode_into(b"00", &mut out).is_err());
        decode_into("0".repeat(32).as_bytes(), &mut out).unwrap();
        assert_eq!(out, [0u8; 20]);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn string_order_is_reversed_byte_order(a in any::<[u8; 20]>(), b in any::<[u8; 20]>()) {
            let mut ra = a; ra.reverse();
            let mut rb = b; rb.reverse();
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), ra.cmp(&rb));
        }

        #[test]
        fn decode_never_panics(s in "[0-9a-z]{0,60}") {
            let _ = decode(&s);
        }
    }
}
