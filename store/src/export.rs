//! `nix-store --export` / `--import` streams (worker protocol §6.4).
//!
//! ```text
//! stream = { u64 1, record } u64 0
//! record = NAR, u64 0x4558494e ("NIXE"), str path, u64 n, n × str reference,
//!          str deriver-or-"", u64 0   (or u64 1, str legacy-signature: ignored)
//! str    = u64 length, bytes, zero padding to a multiple of 8
//! ```
//!
//! Integers are little-endian. Imports never buffer a NAR: it is restored into a
//! temporary object in the store while hashed, because the path it belongs to only
//! follows it in the stream.

use std::io::{Read, Write};

use nixnest_core::nar::{self, NarReader};
use nixnest_core::{Hash, HashAlgo, StorePath, ValidPathInfo};

use crate::error::{Error, Result};
use crate::logger::Logger;
use crate::store::LocalStore;
use crate::temproots::TempRoots;

const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest string we accept in an export record (paths are far shorter).
const MAX_STRING: u64 = 64 * 1024;
/// Most references we accept for one path.
const MAX_REFS: u64 = 1 << 20;

fn io(e: std::io::Error) -> Error {
    Error::io("export stream", e)
}

fn write_u64(w: &mut dyn Write, v: u64) -> Result<()> {
    w.write_all(&v.to_le_bytes()).map_err(io)
}

fn write_str(w: &mut dyn Write, s: &[u8]) -> Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s).map_err(io)?;
    let pad = (8 - s.len() % 8) % 8;
    w.write_all(&[0u8; 8][..pad]).map_err(io)
}

fn read_u64(r: &mut dyn Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(io)?;
    Ok(u64::from_le_bytes(b))
}

fn read_str(r: &mut dyn Read) -> Result<String> {
    let len = read_u64(r)?;
    if len > MAX_STRING {
        return Err(Error::BadInput(format!(
            "string of {len} bytes in export stream is too long"
        )));
    }
    let padded = usize::try_from(len.div_ceil(8) * 8)
        .map_err(|_| Error::BadInput("string too long".into()))?;
    let mut buf = vec![0u8; padded];
    r.read_exact(&mut buf).map_err(io)?;
    let n = usize::try_from(len).unwrap_or(0);
    if buf.get(n..).is_some_and(|p| p.iter().any(|&b| b != 0)) {
        return Err(Error::BadInput("non-zero padding in export stream".into()));
    }
    buf.truncate(n);
    String::from_utf8(buf)
        .map_err(|_| Error::BadInput("string in export stream is not UTF-8".into()))
}

impl LocalStore {
    /// Writes one export record for a valid path (what `ExportPath` sends).
    pub fn export_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<()> {
        let info = self.path_info(path)?;
        self.nar_from_path(path, out)?;
        write_u64(out, EXPORT_MAGIC)?;
        write_str(out, self.print(path).as_bytes())?;
        write_u64(out, info.references.len() as u64)?;
        for r in &info.references {
            write_str(out, self.print(r).as_bytes())?;
        }
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| self.print(d))
            .unwrap_or_default();
        write_str(out, deriver.as_bytes())?;
        write_u64(out, 0)
    }

    /// Writes a whole `nix-store --export` stream for `paths` (in the order given; callers
    /// usually pass a closure in topological order).
    pub fn export_paths(&self, paths: &[StorePath], out: &mut dyn Write) -> Result<()> {
        for p in paths {
            write_u64(out, 1)?;
            self.export_path(p, out)?;
        }
        write_u64(out, 0)
    }

    /// Reads a `nix-store --export` stream and adds every path in it. The NAR hash and
    /// size are computed from the stream. `check_sigs`: enforce `require-sigs` (export
    /// streams carry no signatures, so input-addressed paths then fail).
    pub fn import_paths(
        &self,
        input: &mut dyn Read,
        check_sigs: bool,
        roots: &TempRoots,
        logger: &dyn Logger,
    ) -> Result<Vec<StorePath>> {
        let mut imported = Vec::new();
        loop {
            match read_u64(input)? {
                0 => return Ok(imported),
                1 => {}
                _ => {
                    return Err(Error::BadInput(
                        "input doesn't look like something created by 'nix-store --export'".into(),
                    ));
                }
            }
            let tmp = self.temp_object(roots, "import")?;
            let (hash, size) = {
                let mut hr = nar::HashingReader::new(&mut *input);
                let mut reader = NarReader::new(&mut hr);
                nar::restore_at(&mut reader, std::os::fd::AsFd::as_fd(tmp.dir()), tmp.name())?;
                drop(reader);
                let (_, hs) = hr.into_parts();
                (Hash::new(HashAlgo::Sha256, &hs.sha256)?, hs.size)
            };
            if read_u64(input)? != EXPORT_MAGIC {
                return Err(Error::BadInput(
                    "Nix archive cannot be imported; wrong format".into(),
                ));
            }
            let path = self.parse_path(&read_str(input)?)?;
            let mut info = ValidPathInfo::new(path, hash);
            info.nar_size = size;
            let nrefs = read_u64(input)?;
            if nrefs > MAX_REFS {
                return Err(Error::BadInput(format!("too many references ({nrefs})")));
            }
            for _ in 0..nrefs {
                info.references.insert(self.parse_path(&read_str(input)?)?);
            }
            let deriver = read_str(input)?;
            if !deriver.is_empty() {
                info.deriver = Some(self.parse_path(&deriver)?);
            }
            if read_u64(input)? == 1 {
                read_str(input)?; // legacy signature, ignored as by CppNix
            }
            self.add_from_temp(tmp, &info, check_sigs, roots, logger)?;
            imported.push(info.path);
        }
    }
}
