//! Test helpers shared by the unit tests.

/// Parses whitespace-separated hex bytes (`"6f 69 78 64"`).
pub fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// The upstream vector directory `<vectors>/nix/libstore/<sub>`, from `NIXNEST_VECTORS`
/// or `<project root>/../shared/vectors`. Prints why and returns `None` when absent, so
/// the calling test skips.
pub fn vectors_dir(sub: &str) -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("NIXNEST_VECTORS") {
        Some(v) => std::path::PathBuf::from(v),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    };
    let dir = base.join("nix/libstore").join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: upstream vectors not found at {} (set NIXNEST_VECTORS)",
            dir.display()
        );
        None
    }
}
