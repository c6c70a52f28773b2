//! A toolchain for test derivations without nixpkgs: a static busybox, and Nix expressions
//! that use it as their builder.
//!
//! [`install`] makes a directory
//!
//! ```text
//! bb/bin/busybox          copy of the host's static /bin/busybox (package busybox-static)
//! bb/bin/<applet> -> busybox   for sh and the usual coreutils (APPLETS)
//! ```
//!
//! which an expression imports as a source path: `"${./bb}/bin/sh"` makes Nix add the whole
//! directory to the store (one content-addressed path `…-bb`) and gives the derivation an
//! input source with a shell and tools. A static binary is needed because a sandboxed build
//! sees only its inputs — no `/lib`, no `/bin/sh` (Debian's 2.8 sets no `sandbox-paths`).
//!
//! [`Derivation`] renders the `derivation { … }` call:
//!
//! ```nix
//! derivation {
//!   name = "hello";
//!   system = builtins.currentSystem;
//!   builder = "${./bb}/bin/sh";
//!   args = [ "-c" "<script>" ];
//!   PATH = "${./bb}/bin";
//!   <extra attributes>
//! }
//! ```

use std::path::{Path, PathBuf};

/// Applets linked next to `busybox`: enough for build scripts (`$out` handling, text, hashes,
/// archives) and for probing the sandbox.
pub const APPLETS: &[&str] = &[
    "sh",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dirname",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "grep",
    "head",
    "hostname",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mktemp",
    "mv",
    "printf",
    "pwd",
    "readlink",
    "rm",
    "sed",
    "seq",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tar",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "xargs",
];

/// The busybox to copy: env `NIXNEST_BUSYBOX`, else `/bin/busybox`.
pub fn source() -> PathBuf {
    std::env::var_os("NIXNEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Creates `dir/bin/busybox` and the [`APPLETS`] symlinks. Panics if the busybox is missing
/// or dynamically linked (then install `busybox-static`, not `busybox`).
pub fn install(dir: &Path) {
    let src = source();
    let bytes = std::fs::read(&src).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (install busybox-static: tests/setup-host)",
            src.display()
        )
    });
    assert!(
        is_static_elf(&bytes),
        "{} is not a static ELF executable; install busybox-static (not busybox)",
        src.display()
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("creating bb/bin");
    std::fs::copy(&src, bin.join("busybox")).expect("copying busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("linking applet");
    }
}

/// Whether `elf` is a 64-bit little-endian ELF with no `PT_INTERP` program header, i.e. it
/// needs no dynamic loader.
fn is_static_elf(elf: &[u8]) -> bool {
    fn u16_at(b: &[u8], at: usize) -> Option<usize> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
    }
    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    fn u64_at(b: &[u8], at: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
    }
    const PT_INTERP: u32 = 3;
    let check = || -> Option<bool> {
        if elf.get(..6)? != b"\x7fELF\x02\x01" {
            return Some(false);
        }
        let phoff = u64_at(elf, 0x20)?;
        let phentsize = u16_at(elf, 0x36)?;
        let phnum = u16_at(elf, 0x38)?;
        for i in 0..phnum {
            if u32_at(elf, phoff + i * phentsize)? == PT_INTERP {
                return Some(false);
            }
        }
        Some(true)
    };
    check().unwrap_or(false)
}

/// A Nix string literal (`"…"`) holding `s` verbatim: `\`, `"` and `${` are escaped.
pub fn nix_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `derivation { … }` expression built by busybox `sh -c <script>`; see the module docs.
/// The expression refers to `./bb`, so write it with [`crate::TestStore::write_expr`].
#[derive(Clone, Debug)]
pub struct Derivation {
    name: String,
    script: String,
    attrs: Vec<(String, String)>,
}

impl Derivation {
    /// A derivation called `name` whose builder runs `script` (in `/build` with `$out` set).
    pub fn new(name: &str, script: &str) -> Self {
        Derivation {
            name: name.to_owned(),
            script: script.to_owned(),
            attrs: Vec::new(),
        }
    }

    /// Adds an attribute with a string value (an environment variable of the build).
    pub fn env(self, key: &str, value: &str) -> Self {
        self.attr(key, &nix_str(value))
    }

    /// Adds an attribute whose value is the Nix expression `expr`, e.g.
    /// `attr("outputs", r#"[ "out" "dev" ]"#)` or `attr("dep", "other")` for a `let` binding.
    pub fn attr(mut self, key: &str, expr: &str) -> Self {
        self.attrs.push((key.to_owned(), expr.to_owned()));
        self
    }

    /// The expression text.
    pub fn to_nix(&self) -> String {
        let mut s = String::from("derivation {\n");
        s.push_str(&format!("  name = {};\n", nix_str(&self.name)));
        s.push_str("  system = builtins.currentSystem;\n");
        s.push_str("  builder = \"${./bb}/bin/sh\";\n");
        s.push_str(&format!("  args = [ \"-c\" {} ];\n", nix_str(&self.script)));
        s.push_str("  PATH = \"${./bb}/bin\";\n");
        for (key, expr) in &self.attrs {
            s.push_str(&format!("  {} = {expr};\n", nix_attr_name(key)));
        }
        s.push('}');
        s
    }
}

/// An attribute name, quoted unless it is a plain identifier.
fn nix_attr_name(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c));
    if plain { key.to_owned() } else { nix_str(key) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_str_escapes_what_nix_interprets() {
        assert_eq!(nix_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(nix_str("echo ${x} $y"), r#""echo \${x} $y""#);
        assert_eq!(nix_str("l1\nl2"), r#""l1\nl2""#);
    }

    #[test]
    fn derivation_text() {
        let d = Derivation::new("t", "echo hi > $out").env("FOO", "bar");
        assert_eq!(
            d.to_nix(),
            "derivation {\n  name = \"t\";\n  system = builtins.currentSystem;\n  builder = \"${./bb}/bin/sh\";\n  args = [ \"-c\" \"echo hi > $out\" ];\n  PATH = \"${./bb}/bin\";\n  FOO = \"bar\";\n}"
        );
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(b""));
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }
}
