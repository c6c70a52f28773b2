//! Small hashing helpers the store needs before/independently of `nixnest-core`:
//! SHA-1/SHA-256 and Nix's base-32 encoding (`nixbase32`: alphabet
//! `0123456789abcdfghijklmnpqrsvwxyz`, least significant 5-bit group last).

use sha1::Digest as _;

const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Nix's base-32 encoding of `bytes`.
pub fn nix32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = bytes.get(i).map_or(0u16, |&x| u16::from(x) >> j);
        let hi = bytes.get(i + 1).map_or(0u16, |&x| u16::from(x) << (8 - j));
        let c = usize::from((lo | hi) & 0x1f);
        out.push(char::from(NIX32[c]));
    }
    out
}

/// SHA-1 digest.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    sha1::Sha1::digest(data).into()
}

/// SHA-256 digest.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indirect_root_name_vector() {
        // Checked against real `nix-store --add-root /tmp/x/result --indirect` (2.8); the
        // spec's Appendix B value for this input is wrong.
        assert_eq!(
            nix32(&sha1(b"/tmp/x/result")),
            "wf8j2y27a849c8408iw83avz1qa27anc"
        );
    }

    #[test]
    fn nar_hash_vector() {
        // Appendix B: the NAR of "hello world\n" and its fixed:r:sha256 CA (= NAR hash).
        let hex = "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            nix32(&bytes),
            "00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil"
        );
    }
}
