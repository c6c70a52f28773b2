//! Just enough of derivations to register them: the ATerm `.drv` syntax, Nix's
//! `hashDerivationModulo`, and the output-path check CppNix performs when a `.drv` is
//! registered (private helper until `nixnest-core` has a `Derivation` type).
//!
//! ```text
//! Derive([outputs],[inputDrvs],[inputSrcs],"system","builder",[args],[env])
//! output   = ("name","path","hashAlgo","hash")     ; hashAlgo "r:sha256", "sha256", "text:sha256" or ""
//! inputDrv = ("drvPath",["out",…])
//! env      = ("key","value")
//! string   = '"' { char | '\' char } '"'           ; \n \r \t decoded, any other char literal
//! ```
//!
//! An input-addressed output `o` of a derivation named `n` must be
//! `makeOutputPath(o, hashDerivationModulo(drv, mask outputs), n)`; a fixed output must be
//! the fixed-output path of its hash; and `env[o]` must equal the output path.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nixnest_core::{ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath};

use crate::error::{Error, Result};
use crate::store::LocalStore;

/// Largest `.drv` file we parse (real ones are kilobytes; Nixpkgs' largest well under 1 MiB).
const MAX_DRV_SIZE: u64 = 64 << 20;

/// One output: (path, hashAlgo, hash); path may be empty (floating CA / deferred).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Output {
    pub path: String,
    pub hash_algo: String,
    pub hash: String,
}

/// A parsed derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Derivation {
    pub outputs: BTreeMap<String, Output>,
    pub input_drvs: BTreeMap<String, BTreeSet<String>>,
    pub input_srcs: BTreeSet<String>,
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::BadInput(format!("invalid derivation: {what} at byte {}", self.pos))
    }

    fn expect(&mut self, lit: &[u8]) -> Result<()> {
        if self.s.get(self.pos..self.pos + lit.len()) == Some(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", String::from_utf8_lossy(lit))))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b"\"")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let c = self
                        .s
                        .get(self.pos + 1)
                        .copied()
                        .ok_or_else(|| self.err("unterminated escape"))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        c => c,
                    });
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }

    /// `[ item, item, … ]`
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.expect(b"[")?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }
}

/// Parses a `.drv` file's contents.
pub(crate) fn parse(text: &[u8]) -> Result<Derivation> {
    let mut p = Parser { s: text, pos: 0 };
    p.expect(b"Derive(")?;
    let outs = p.list(|p| {
        p.expect(b"(")?;
        let name = p.string()?;
        p.expect(b",")?;
        let path = p.string()?;
        p.expect(b",")?;
        let hash_algo = p.string()?;
        p.expect(b",")?;
        let hash = p.string()?;
        p.expect(b")")?;
        Ok((
            name,
            Output {
                path,
                hash_algo,
                hash,
            },
        ))
    })?;
    p.expect(b",")?;
    let inputs = p.list(|p| {
        p.expect(b"(")?;
        let path = p.string()?;
        p.expect(b",")?;
        let outs = p.list(Parser::string)?;
        p.expect(b")")?;
        Ok((path, outs.into_iter().collect::<BTreeSet<_>>()))
    })?;
    p.expect(b",")?;
    let srcs = p.list(Parser::string)?;
    p.expect(b",")?;
    let platform = p.string()?;
    p.expect(b",")?;
    let builder = p.string()?;
    p.expect(b",")?;
    let args = p.list(Parser::string)?;
    p.expect(b",")?;
    let env = p.list(|p| {
        p.expect(b"(")?;
        let k = p.string()?;
        p.expect(b",")?;
        let v = p.string()?;
        p.expect(b")")?;
        Ok((k, v))
    })?;
    p.expect(b")")?;
    if p.pos != text.len() {
        return Err(p.err("trailing garbage"));
    }
    Ok(Derivation {
        outputs: outs.into_iter().collect(),
        input_drvs: inputs.into_iter().collect(),
        input_srcs: srcs.into_iter().collect(),
        platform,
        builder,
        args,
        env: env.into_iter().collect(),
    })
}

fn quote(out: &mut String, s: &str) {
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

fn list<T>(
    out: &mut String,
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(&mut String, T),
) {
    out.push('[');
    for (i, it) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, it);
    }
    out.push(']');
}

impl Derivation {
    /// The ATerm text; with `mask_outputs` output paths (and their env vars) are empty;
    /// `input_drvs` replaces the input derivation map (for hashing modulo).
    fn unparse(
        &self,
        mask_outputs: bool,
        input_drvs: &BTreeMap<String, BTreeSet<String>>,
    ) -> String {
        let mut s = String::from("Derive(");
        list(&mut s, &self.outputs, |s, (name, o)| {
            s.push('(');
            quote(s, name);
            s.push(',');
            quote(s, if mask_outputs { "" } else { &o.path });
            s.push(',');
            quote(s, &o.hash_algo);
            s.push(',');
            quote(s, &o.hash);
            s.push(')');
        });
        s.push(',');
        list(&mut s, input_drvs, |s, (p, outs)| {
            s.push('(');
            quote(s, p);
            s.push(',');
            list(s, outs, |s, o| quote(s, o));
            s.push(')');
        });
        s.push(',');
        list(&mut s, &self.input_srcs, |s, p| quote(s, p));
        s.push(',');
        quote(&mut s, &self.platform);
        s.push(',');
        quote(&mut s, &self.builder);
        s.push(',');
        list(&mut s, &self.args, |s, a| quote(s, a));
        s.push(',');
        list(&mut s, &self.env, |s, (k, v)| {
            s.push('(');
            quote(s, k);
            s.push(',');
            let masked = mask_outputs && self.outputs.contains_key(k.as_str());
            quote(s, if masked { "" } else { v });
            s.push(')');
        });
        s.push(')');
        s
    }

    /// A fixed-output derivation: exactly one output, `out`, with a hash.
    fn fixed_output(&self) -> Option<&Output> {
        match (self.outputs.len(), self.outputs.get("out")) {
            (1, Some(o)) if !o.hash.is_empty() => Some(o),
            _ => None,
        }
    }
}

/// Parses `fixed:`-style output hash fields: (`r:sha256`, hex) → method + hash.
fn output_hash(o: &Output) -> Result<(ContentAddressMethod, Hash)> {
    let (method, algo) = ContentAddressMethod::parse_drv_algo(&o.hash_algo)?;
    Ok((method, Hash::parse_any(&o.hash, Some(algo))?))
}

/// Reads and parses a derivation from the store dir.
pub(crate) fn read(store: &LocalStore, path: &StorePath) -> Result<Derivation> {
    use std::io::Read;
    let real = store.real_store_dir().join(path.to_base_name());
    let f = std::fs::File::open(&real).map_err(|e| Error::io_at("opening derivation", &real, e))?;
    let mut buf = Vec::new();
    f.take(MAX_DRV_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io_at("reading derivation", &real, e))?;
    if buf.len() as u64 > MAX_DRV_SIZE {
        return Err(Error::BadInput(format!(
            "derivation '{}' is larger than {MAX_DRV_SIZE} bytes",
            real.display()
        )));
    }
    parse(&buf).map_err(|e| Error::BadInput(format!("{} ('{}')", e, store.print(path))))
}

/// Nix's `hashDerivationModulo`, reading input derivations from the store.
pub(crate) fn hash_modulo(
    store: &LocalStore,
    drv: &Derivation,
    mask_outputs: bool,
    cache: &mut HashMap<String, Hash>,
    depth: usize,
) -> Result<Hash> {
    if depth > 4096 {
        return Err(Error::BadInput("derivation inputs nest too deeply".into()));
    }
    if let Some(o) = drv.fixed_output() {
        return Ok(Hash::sha256(format!(
            "fixed:out:{}:{}:{}",
            o.hash_algo, o.hash, o.path
        )));
    }
    let mut inputs = BTreeMap::new();
    for (p, outs) in &drv.input_drvs {
        let h = match cache.get(p) {
            Some(h) => *h,
            None => {
                let sp = store.parse_path(p)?;
                let d = read(store, &sp)?;
                let h = hash_modulo(store, &d, false, cache, depth + 1)?;
                cache.insert(p.clone(), h);
                h
            }
        };
        inputs.insert(h.to_base16(), outs.clone());
    }
    Ok(Hash::sha256(drv.unparse(mask_outputs, &inputs)))
}

/// Checks a derivation's recorded outputs (CppNix's `checkDerivationOutputs`) and returns
/// the `DerivationOutputs` rows: (output name, printed path) for outputs with a path.
pub(crate) fn checked_outputs(
    store: &LocalStore,
    drv_path: &StorePath,
) -> Result<Vec<(String, String)>> {
    let drv = read(store, drv_path)?;
    let sd: &StoreDir = store.store_dir();
    let drv_name = drv_path.derivation_name().ok_or_else(|| {
        Error::BadInput(format!("'{}' is not a derivation", store.print(drv_path)))
    })?;
    let mut modulo: Option<Hash> = None;
    let mut rows = Vec::new();
    for (name, o) in &drv.outputs {
        if o.path.is_empty() {
            continue;
        }
        let expected = if let Some(fo) = drv.fixed_output() {
            let (method, hash) = output_hash(fo)?;
            sd.make_fixed_output_path(
                &nixnest_core::store_path::output_path_name(drv_name, name),
                method,
                &hash,
                &BTreeSet::new(),
                false,
            )?
        } else if o.hash.is_empty() && o.hash_algo.is_empty() {
            if modulo.is_none() {
                modulo = Some(hash_modulo(store, &drv, true, &mut HashMap::new(), 0)?);
            }
            let Some(h) = &modulo else { continue };
            sd.make_output_path(name, h, drv_name)?
        } else {
            // Floating content-addressed output with a path: nothing to check statically.
            sd.parse_path(&o.path)?
        };
        let expected_s = sd.print(&expected);
        let bad = |expected: String| Error::BadDerivationOutput {
            drv: store.print(drv_path),
            output: name.clone(),
            expected,
        };
        if o.path != expected_s {
            return Err(bad(expected_s));
        }
        if drv.env.get(name).is_some_and(|v| *v != expected_s) {
            return Err(bad(expected_s));
        }
        rows.push((name.clone(), o.path.clone()));
    }
    let _ = HashAlgo::Sha256;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BD: &str = r#"Derive([("out","/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test","","")],[],["/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir"],"x86_64-linux","/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir/sh",["-c","echo built by BuildDerivation; echo bd > $out"],[("builder","/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir/sh"),("name","bd-test"),("out","/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test"),("outputs","out"),("system","x86_64-linux")])"#;

    #[test]
    fn round_trip_and_modulo_hash_vector() {
        let d = parse(BD.as_bytes()).unwrap();
        assert_eq!(d.unparse(false, &d.input_drvs), BD);
        let masked = d.unparse(true, &d.input_drvs);
        assert_eq!(
            Hash::sha256(masked).to_base16(),
            "74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783"
        );
        let sd = StoreDir::default();
        let h = Hash::parse_any(
            "sha256:74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783",
            None,
        )
        .unwrap();
        assert_eq!(
            sd.print(&sd.make_output_path("out", &h, "bd-test").unwrap()),
            "/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test"
        );
    }

    #[test]
    fn escapes() {
        let t = r#"Derive([],[],[],"a\"b\\c\nd","",[],[])"#;
        let d = parse(t.as_bytes()).unwrap();
        assert_eq!(d.platform, "a\"b\\c\nd");
        assert_eq!(d.unparse(false, &d.input_drvs), t);
    }

    #[test]
    fn rejects_garbage() {
        for t in [
            "",
            "Derive(",
            "Derive([],[],[],\"\",\"\",[],[])x",
            "Derive([(\"out\"],[],[],\"\",\"\",[],[])",
        ] {
            assert!(parse(t.as_bytes()).is_err(), "{t}");
        }
    }
}
