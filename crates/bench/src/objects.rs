//! Synthetic store objects, and the two ways the benchmarks feed them to a store: an
//! export stream for the real `nix-store --import`, and NAR files for `AddToStoreNar`.
//!
//! Objects are content-addressed "source" paths (`makeFixedOutputPath(NixArchive,
//! sha256)`), so the same recipe gives the same paths on every store with the same store
//! dir, and a daemon would accept them even with `require-sigs`. Every store a benchmark
//! makes has a store dir of the same length (`/tmp/nixnest-XXXXXX/store`), so every daemon
//! gets the same amount of work.
//!
//! The export stream (`nix-store --export`) is, per path:
//! ```text
//! u64 1, NAR, u64 0x4558494e, string path, u64 n, n × string reference, string deriver, u64 0
//! ```
//! and a final `u64 0`; strings are `u64 length` + bytes + zero padding to 8. The trailing
//! `u64 0` of a record says "no signature".

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use nixnest_core::nar::{NarHasher, NarWriter};
use nixnest_core::{ContentAddress, ContentAddressMethod, Hash, HashAlgo, StoreDir, ValidPathInfo};

use crate::error::{IoContext, Result};

/// `"NIXE"`: the magic after each NAR of an export stream.
const EXPORT_MAGIC: u64 = 0x4558_494e;

/// A store object with its NAR.
#[derive(Clone, Debug)]
pub struct Object {
    pub info: ValidPathInfo,
    pub nar: Vec<u8>,
}

/// How objects of a set refer to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// No references.
    None,
    /// Object `i` refers to `i-1` and `i/2`: the closure of the last object is the whole
    /// set, and the graph is a DAG with some fan-in rather than a plain chain.
    Dag,
}

/// `n` small regular-file objects named `<tag>-<i>`, each `size` bytes (at least its
/// header line and the printed paths it refers to, which it contains like a real build
/// output would).
pub fn small_objects(
    store_dir: &StoreDir,
    tag: &str,
    n: usize,
    size: usize,
    links: Links,
) -> Result<Vec<Object>> {
    let mut objects: Vec<Object> = Vec::with_capacity(n);
    for i in 0..n {
        let mut refs = BTreeSet::new();
        if links == Links::Dag && i > 0 {
            for j in [i - 1, i / 2] {
                if let Some(o) = objects.get(j) {
                    refs.insert(o.info.path.clone());
                }
            }
        }
        let mut contents = format!("nixnest-bench {tag} {i}\n");
        for r in &refs {
            contents.push_str(&store_dir.print(r));
            contents.push('\n');
        }
        let mut contents = contents.into_bytes();
        if contents.len() < size {
            contents.resize(size, b'.');
        }
        let mut nar = Vec::with_capacity(contents.len() + 128);
        let mut w = NarWriter::new(&mut nar)?;
        w.regular(false, contents.len() as u64, contents.as_slice())?;
        w.finish()?;
        let nar_hash = Hash::sha256(&nar);
        let name = format!("{tag}-{i}");
        let path = store_dir.make_fixed_output_path(
            &name,
            ContentAddressMethod::NixArchive,
            &nar_hash,
            &refs,
            false,
        )?;
        let mut info = ValidPathInfo::new(path, nar_hash);
        info.nar_size = nar.len() as u64;
        info.references = refs;
        info.ca = Some(ContentAddress::new(
            ContentAddressMethod::NixArchive,
            nar_hash,
        )?);
        objects.push(Object { info, nar });
    }
    Ok(objects)
}

/// The `nix-store --export` stream of `objects` (in order: references first).
pub fn export_stream(store_dir: &StoreDir, objects: &[Object]) -> Vec<u8> {
    let mut out = Vec::with_capacity(objects.iter().map(|o| o.nar.len() + 256).sum());
    for o in objects {
        put_u64(&mut out, 1);
        out.extend_from_slice(&o.nar);
        put_u64(&mut out, EXPORT_MAGIC);
        put_str(&mut out, store_dir.print(&o.info.path).as_bytes());
        put_u64(&mut out, o.info.references.len() as u64);
        for r in &o.info.references {
            put_str(&mut out, store_dir.print(r).as_bytes());
        }
        put_str(&mut out, b"");
        put_u64(&mut out, 0);
    }
    put_u64(&mut out, 0);
    out
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// The shape of a big object to import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BigShape {
    /// One regular file of `bytes` bytes.
    OneFile { bytes: u64 },
    /// A directory of `files` regular files sharing `bytes` bytes.
    ManyFiles { files: u64, bytes: u64 },
}

/// A NAR written to a file, with what `AddToStoreNar` needs to know about it.
#[derive(Clone, Debug)]
pub struct NarFile {
    pub file: std::path::PathBuf,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub name: String,
}

impl NarFile {
    /// The path info for `store_dir` (a "source" path of the NAR hash, no references).
    pub fn info(&self, store_dir: &StoreDir) -> Result<ValidPathInfo> {
        let path = store_dir.make_fixed_output_path(
            &self.name,
            ContentAddressMethod::NixArchive,
            &self.nar_hash,
            &BTreeSet::new(),
            false,
        )?;
        let mut info = ValidPathInfo::new(path, self.nar_hash);
        info.nar_size = self.nar_size;
        info.ca = Some(ContentAddress::new(
            ContentAddressMethod::NixArchive,
            self.nar_hash,
        )?);
        Ok(info)
    }
}

/// Writes the NAR of a `shape` object with pseudo-random (incompressible, deterministic)
/// contents to `file`, hashing it on the way.
pub fn write_big_nar(file: &Path, name: &str, shape: BigShape) -> Result<NarFile> {
    let f = std::fs::File::create(file).context(|| format!("creating {}", file.display()))?;
    let mut sink = HashingSink {
        inner: BufWriter::with_capacity(1 << 20, f),
        hasher: NarHasher::new(),
    };
    let mut w = NarWriter::new(&mut sink)?;
    let mut rng = Noise::new(0x006e_6978_6e65_7374);
    match shape {
        BigShape::OneFile { bytes } => {
            w.regular(false, bytes, (&mut rng).take(bytes))?;
        }
        BigShape::ManyFiles { files, bytes } => {
            let files = files.max(1);
            let each = bytes / files;
            w.directory()?;
            for i in 0..files {
                // Zero-padded names sort in the order they are written, as NAR requires.
                w.entry(format!("f{i:08}").as_bytes())?;
                w.regular(false, each, (&mut rng).take(each))?;
            }
            w.end()?;
        }
    }
    w.finish()?;
    sink.inner
        .flush()
        .context(|| format!("writing {}", file.display()))?;
    let hs = sink.hasher.finish();
    Ok(NarFile {
        file: file.to_owned(),
        nar_hash: Hash::new(HashAlgo::Sha256, &hs.sha256)?,
        nar_size: hs.size,
        name: name.to_owned(),
    })
}

struct HashingSink<W> {
    inner: W,
    hasher: NarHasher,
}

impl<W: Write> Write for HashingSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// xorshift64* bytes: fast, deterministic, incompressible enough that no layer can cheat.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.max(1))
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or_default());
        }
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn export_stream_layout() {
        let sd = StoreDir::new("/tmp/nixnest-abcdef/store").unwrap();
        let objs = small_objects(&sd, "t", 3, 64, Links::Dag).unwrap();
        // 2 refers to 1 (i-1) and 1 (i/2): one reference; 1 refers to 0.
        assert_eq!(objs[2].info.references.len(), 1);
        assert!(objs[2].info.references.contains(&objs[1].info.path));
        assert!(objs[0].info.references.is_empty());
        let s = export_stream(&sd, &objs[..1]);
        assert_eq!(&s[..8], &1u64.to_le_bytes());
        let nar_end = 8 + objs[0].nar.len();
        assert_eq!(&s[8..nar_end], objs[0].nar.as_slice());
        assert_eq!(&s[nar_end..nar_end + 8], &EXPORT_MAGIC.to_le_bytes());
        let printed = sd.print(&objs[0].info.path);
        let len = u64::from_le_bytes(s[nar_end + 8..nar_end + 16].try_into().unwrap());
        assert_eq!(len as usize, printed.len());
        // path (padded), 0 references, empty deriver, no signature, end of stream.
        let after_path = nar_end + 16 + printed.len().div_ceil(8) * 8;
        assert_eq!(s.len(), after_path + 8 + 8 + 8 + 8);
        assert!(s[after_path..].iter().all(|&b| b == 0));
    }

    #[test]
    fn same_recipe_same_paths() {
        let sd = StoreDir::new("/tmp/nixnest-abcdef/store").unwrap();
        let a = small_objects(&sd, "t", 5, 10, Links::Dag).unwrap();
        let b = small_objects(&sd, "t", 5, 10, Links::Dag).unwrap();
        assert_eq!(
            a.iter().map(|o| &o.info.path).collect::<Vec<_>>(),
            b.iter().map(|o| &o.info.path).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|o| o.nar.len() as u64 == o.info.nar_size));
    }

    #[test]
    fn big_nar_hash_matches_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.nar");
        let nf = write_big_nar(
            &f,
            "many",
            BigShape::ManyFiles {
                files: 10,
                bytes: 1000,
            },
        )
        .unwrap();
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(bytes.len() as u64, nf.nar_size);
        assert_eq!(Hash::sha256(&bytes), nf.nar_hash);
        // Ten entries of 100 bytes each, in a directory: a valid NAR that restores.
        let out = dir.path().join("restored");
        nixnest_core::nar::restore(bytes.as_slice(), &out).unwrap();
        let entries = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(entries, 10);
        assert_eq!(std::fs::metadata(out.join("f00000009")).unwrap().len(), 100);
    }
}
