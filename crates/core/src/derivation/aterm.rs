//! The ATerm text of a `.drv` file: parser and printer.
//!
//! ```text
//! Derive([<outputs>],[<inputDrvs>],[<inputSrcs>],"<system>","<builder>",[<args>],[<env>])
//! output   = ("<name>","<path>","<hashAlgo>","<hash>")      written sorted by name
//! inputDrv = ("<drv path>",["<out1>",…])                     sorted by path; outputs sorted
//! inputSrc = "<store path>"                                   sorted
//! env      = ("<key>","<value>")                              sorted by key
//! ```
//! No whitespace anywhere. Strings: the writer escapes `"`→`\"`, `\`→`\\`, LF→`\n`,
//! CR→`\r`, TAB→`\t` and copies every other byte; the reader maps `\n \r \t` and takes any
//! other `\X` as `X`. Like Nix, the writer does *not* escape output names, paths, hash
//! fields, input output names, input sources and `system`: they are printed verbatim
//! because they cannot (or, for `system`, must not) contain special characters. A `system`
//! containing `"` or `\` is refused by the printer, since the file could not be read back.
//!
//! The reader is stricter than Nix's in ways no Nix-written file can notice: list elements
//! must be separated by exactly one comma, nothing may follow the closing `)`, and
//! duplicate outputs, input derivations, input sources or environment keys are errors
//! (Nix would silently keep one). Element order and the encoding of fixed-output hashes are
//! accepted as Nix accepts them; the printer always writes the canonical form.
//!
//! Bounds: the input is at most [`MAX_DRV_LEN`] bytes; the grammar has a fixed depth (no
//! recursion), and every allocation is proportional to bytes consumed.
//!
//! Non-UTF-8: `.drv` files are read as UTF-8; other bytes are a parse error at their offset.
//! (Nix strings may in principle hold arbitrary bytes, but no evaluator-produced `.drv` the
//! daemon needs to build has been seen to; refusing is safer than a lossy conversion, which
//! would change the derivation's hash.)
//!
//! `DrvWithVersion("xp-dyn-drv",…)` (experimental dynamic derivations) is refused with an
//! explicit message.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::{Derivation, DerivationOutput};
use crate::error::{Error, Result, excerpt};
use crate::store_path::{StoreDir, StorePath, validate_output_name};

/// The largest `.drv` text accepted (the largest in nixpkgs are a few hundred KiB).
pub const MAX_DRV_LEN: usize = 64 << 20;

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, at: usize, reason: impl Into<String>) -> Error {
        Error::DrvParse {
            offset: at,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or_default()
    }

    fn found(&self) -> String {
        let rest = self.rest();
        if rest.is_empty() {
            "end of input".into()
        } else {
            let snippet: String = rest.chars().take(20).collect();
            format!("'{}'", snippet.escape_default())
        }
    }

    fn expect(&mut self, lit: &str) -> Result<()> {
        if self.rest().starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.err(
                self.pos,
                format!("expected '{lit}', found {}", self.found()),
            ))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.rest().as_bytes().first().copied()
    }

    /// A quoted string, unescaped.
    fn string(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos;
        self.expect("\"")?;
        let body = self.rest();
        let bytes = body.as_bytes();
        // Find the closing quote, skipping escaped characters.
        let mut i = 0;
        let mut has_escape = false;
        loop {
            match bytes.get(i) {
                None => return Err(self.err(start, "unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    has_escape = true;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
        let raw = body
            .get(..i)
            .ok_or_else(|| self.err(start, "unterminated string"))?;
        self.pos += i + 1;
        if !has_escape {
            return Ok(Cow::Borrowed(raw));
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => return Err(self.err(start, "unterminated string")),
                }
            } else {
                out.push(c);
            }
        }
        Ok(Cow::Owned(out))
    }

    /// `[` elem (`,` elem)* `]` or `[]`.
    fn list(&mut self, mut elem: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect("[")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            elem(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => {
                    return Err(self.err(
                        self.pos,
                        format!("expected ',' or ']', found {}", self.found()),
                    ));
                }
            }
        }
    }

    fn store_path(&mut self, store_dir: &StoreDir) -> Result<StorePath> {
        let at = self.pos;
        let s = self.string()?;
        store_dir
            .parse_path(&s)
            .map_err(|e| self.err(at, e.to_string()))
    }

    fn output_name(&mut self) -> Result<String> {
        let at = self.pos;
        let s = self.string()?.into_owned();
        validate_output_name(&s).map_err(|e| self.err(at, e.to_string()))?;
        Ok(s)
    }
}

/// Parses ATerm text. `name` is the derivation name (the `.drv` store path name without
/// `.drv`); it is needed to check fixed-output paths.
pub(super) fn parse(store_dir: &StoreDir, text: &[u8], name: &str) -> Result<Derivation> {
    if text.len() > MAX_DRV_LEN {
        return Err(Error::DrvParse {
            offset: MAX_DRV_LEN,
            reason: format!(
                "derivation is {} bytes, more than the limit of {MAX_DRV_LEN}",
                text.len()
            ),
        });
    }
    let s = std::str::from_utf8(text).map_err(|e| Error::DrvParse {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8 (nixnest reads .drv files as UTF-8)".into(),
    })?;
    let mut p = Parser { s, pos: 0 };

    if s.starts_with("DrvWithVersion(") {
        p.pos = "DrvWithVersion(".len();
        let at = p.pos;
        let version = p.string()?;
        return Err(p.err(
            at,
            if version == "xp-dyn-drv" {
                "derivation uses the experimental 'xp-dyn-drv' format (dynamic derivations), which nixnest does not support".to_string()
            } else {
                format!("unknown derivation ATerm format version '{}'", excerpt(version.as_bytes()))
            },
        ));
    }
    p.expect("Derive(")?;

    let mut outputs = BTreeMap::new();
    p.list(|p| {
        let at = p.pos;
        p.expect("(")?;
        let out_name = p.output_name()?;
        p.expect(",")?;
        let path_at = p.pos;
        let path = p.string()?;
        p.expect(",")?;
        let algo = p.string()?;
        p.expect(",")?;
        let hash = p.string()?;
        p.expect(")")?;
        let output =
            DerivationOutput::from_aterm_fields(store_dir, name, &out_name, &path, &algo, &hash)
                .map_err(|e| p.err(path_at, e.to_string()))?;
        if outputs.insert(out_name, output).is_some() {
            return Err(p.err(at, "duplicate output"));
        }
        Ok(())
    })?;

    p.expect(",")?;
    let mut input_drvs = BTreeMap::new();
    p.list(|p| {
        let at = p.pos;
        p.expect("(")?;
        let drv = p.store_path(store_dir)?;
        p.expect(",")?;
        if p.peek() == Some(b'(') {
            return Err(p.err(
                p.pos,
                "dynamic derivation input (nested outputs) is not allowed in a 'Derive' derivation",
            ));
        }
        let mut outs = BTreeSet::new();
        p.list(|p| {
            let out_at = p.pos;
            if !outs.insert(p.output_name()?) {
                return Err(p.err(out_at, "duplicate output name"));
            }
            Ok(())
        })?;
        if outs.is_empty() {
            return Err(p.err(at, "input derivation entry names no outputs"));
        }
        p.expect(")")?;
        if input_drvs.insert(drv, outs).is_some() {
            return Err(p.err(at, "duplicate input derivation"));
        }
        Ok(())
    })?;

    p.expect(",")?;
    let mut input_srcs = BTreeSet::new();
    p.list(|p| {
        let at = p.pos;
        if !input_srcs.insert(p.store_path(store_dir)?) {
            return Err(p.err(at, "duplicate input source"));
        }
        Ok(())
    })?;

    p.expect(",")?;
    let platform = p.string()?.into_owned();
    p.expect(",")?;
    let builder = p.string()?.into_owned();

    p.expect(",")?;
    let mut args = Vec::new();
    p.list(|p| {
        args.push(p.string()?.into_owned());
        Ok(())
    })?;

    p.expect(",")?;
    let mut env = BTreeMap::new();
    p.list(|p| {
        let at = p.pos;
        p.expect("(")?;
        let key = p.string()?.into_owned();
        p.expect(",")?;
        let value = p.string()?.into_owned();
        p.expect(")")?;
        if env.insert(key, value).is_some() {
            return Err(p.err(at, "duplicate environment variable"));
        }
        Ok(())
    })?;
    p.expect(")")?;
    if p.pos != s.len() {
        return Err(p.err(
            p.pos,
            format!("trailing data after the derivation: {}", p.found()),
        ));
    }

    Ok(Derivation {
        name: name.to_owned(),
        outputs,
        input_drvs,
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}

fn push_escaped(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a field Nix writes without escaping.
fn push_verbatim(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(s);
    out.push('"');
}

/// What the printer writes in place of the input derivations.
pub(super) enum Inputs<'a> {
    /// The derivation's own input derivations (a real `.drv` file).
    Paths,
    /// Hash-modulo keys (base16) instead of paths, as in `hashDerivationModulo`.
    Replaced(&'a BTreeMap<String, BTreeSet<String>>),
}

/// Prints ATerm text. `mask` blanks output paths and the environment variables named like
/// outputs (the form hashed to compute input-addressed output paths).
pub(super) fn print(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask: bool,
    inputs: Inputs<'_>,
) -> Result<String> {
    if drv.platform.contains(['"', '\\']) {
        return Err(Error::BadDerivation {
            name: excerpt(&drv.name),
            reason: format!(
                "system '{}' contains '\"' or '\\', which Nix writes unescaped; the .drv could not be read back",
                excerpt(&drv.platform)
            ),
        });
    }
    let mut s = String::with_capacity(1024);
    s.push_str("Derive([");
    for (i, (name, output)) in drv.outputs.iter().enumerate() {
        validate_output_name(name)?;
        if i > 0 {
            s.push(',');
        }
        let (path, algo, hash) = output.to_aterm_fields(store_dir, &drv.name, name)?;
        s.push('(');
        push_verbatim(&mut s, name);
        s.push(',');
        push_verbatim(&mut s, if mask { "" } else { &path });
        s.push(',');
        push_verbatim(&mut s, &algo);
        s.push(',');
        push_verbatim(&mut s, &hash);
        s.push(')');
    }
    s.push_str("],[");
    let push_input = |s: &mut String, i: usize, key: &str, outs: &BTreeSet<String>| -> Result<()> {
        if i > 0 {
            s.push(',');
        }
        s.push('(');
        push_verbatim(s, key);
        s.push_str(",[");
        for (j, o) in outs.iter().enumerate() {
            validate_output_name(o)?;
            if j > 0 {
                s.push(',');
            }
            push_verbatim(s, o);
        }
        s.push_str("])");
        Ok(())
    };
    match inputs {
        Inputs::Paths => {
            for (i, (path, outs)) in drv.input_drvs.iter().enumerate() {
                push_input(&mut s, i, &store_dir.print(path), outs)?;
            }
        }
        Inputs::Replaced(map) => {
            for (i, (key, outs)) in map.iter().enumerate() {
                push_input(&mut s, i, key, outs)?;
            }
        }
    }
    s.push_str("],[");
    for (i, p) in drv.input_srcs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_verbatim(&mut s, &store_dir.print(p));
    }
    s.push_str("],");
    push_verbatim(&mut s, &drv.platform);
    s.push(',');
    push_escaped(&mut s, &drv.builder);
    s.push_str(",[");
    for (i, a) in drv.args.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_escaped(&mut s, a);
    }
    s.push_str("],[");
    for (i, (k, v)) in drv.env.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('(');
        push_escaped(&mut s, k);
        s.push(',');
        let masked = mask && drv.outputs.contains_key(k);
        push_escaped(&mut s, if masked { "" } else { v });
        s.push(')');
    }
    s.push_str("])");
    Ok(s)
}
