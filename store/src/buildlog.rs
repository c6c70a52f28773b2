//! Build logs: `<log dir>/drvs/<first 2 chars of the .drv base name>/<rest>.bz2`, written
//! bzip2-compressed through a temporary file and `rename` (CppNix's `addBuildLog`), read
//! back from that place or the flat `drvs/<base name>` layout, plain or `.bz2` — so
//! `nix-store -l` reads what we write and we read what CppNix wrote.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;

use nixnest_core::StorePath;

use crate::error::{Error, IoContext, Result};
use crate::store::LocalStore;

/// A log being written; call [`BuildLogWriter::finish`] to publish it.
pub struct BuildLogWriter {
    enc: Option<bzip2::write::BzEncoder<File>>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for BuildLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.enc {
            Some(e) => e.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.enc {
            Some(e) => e.flush(),
            None => Ok(()),
        }
    }
}

impl BuildLogWriter {
    /// Completes the compressed stream and moves the log into place.
    pub fn finish(mut self) -> Result<()> {
        let Some(enc) = self.enc.take() else {
            return Ok(());
        };
        let f = enc.finish().ctx("compressing", &self.tmp)?;
        f.sync_all().ctx("writing", &self.tmp)?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest).ctx("renaming to", &self.dest)
    }
}

impl Drop for BuildLogWriter {
    fn drop(&mut self) {
        // Unfinished: remove the temporary file (a no-op after a successful finish).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl LocalStore {
    fn log_path(&self, drv: &StorePath) -> (PathBuf, PathBuf) {
        let base = drv.to_base_name();
        let (a, b) = base.split_at(2.min(base.len()));
        let drvs = self.config.log_dir.join("drvs");
        (drvs.join(a).join(b), drvs.join(&base))
    }

    /// Starts writing the log of `drv`; `Ok(None)` if it already has one (CppNix keeps the
    /// first).
    pub fn build_log_writer(&self, drv: &StorePath) -> Result<Option<BuildLogWriter>> {
        if !drv.is_derivation() {
            return Err(Error::BadInput(format!(
                "'{}' is not a derivation",
                self.print(drv)
            )));
        }
        let (nested, _) = self.log_path(drv);
        let mut dest = nested.into_os_string();
        dest.push(".bz2");
        let dest = PathBuf::from(dest);
        if dest.exists() {
            return Ok(None);
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).ctx("creating", dir)?;
        }
        let mut tmp = dest.clone().into_os_string();
        tmp.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            crate::db::cheap_random() % 1_000_000
        ));
        let tmp = PathBuf::from(tmp);
        let f = File::create(&tmp).ctx("creating", &tmp)?;
        Ok(Some(BuildLogWriter {
            enc: Some(bzip2::write::BzEncoder::new(f, bzip2::Compression::best())),
            tmp,
            dest,
        }))
    }

    /// Stores `log` as the build log of `drv` (`wopAddBuildLog`).
    pub fn add_build_log(&self, drv: &StorePath, log: &[u8]) -> Result<()> {
        if let Some(mut w) = self.build_log_writer(drv)? {
            w.write_all(log)
                .map_err(|e| Error::io("writing build log", e))?;
            w.finish()?;
        }
        Ok(())
    }

    /// The build log of `path` (or of its deriver, for outputs), decompressed on the fly.
    pub fn build_log_reader(&self, path: &StorePath) -> Result<Option<Box<dyn Read + Send>>> {
        let drv = if path.is_derivation() {
            path.clone()
        } else {
            match self.query_path_info(path)?.and_then(|i| i.deriver) {
                Some(d) => d,
                None => return Ok(None),
            }
        };
        let (nested, flat) = self.log_path(&drv);
        for p in [nested, flat] {
            if let Ok(f) = File::open(&p) {
                return Ok(Some(Box::new(f)));
            }
            let mut bz = p.into_os_string();
            bz.push(".bz2");
            if let Ok(f) = File::open(&bz) {
                return Ok(Some(Box::new(bzip2::read::MultiBzDecoder::new(
                    BufReader::new(f),
                ))));
            }
        }
        Ok(None)
    }

    /// The whole build log, if there is one (at most `limit` bytes are read).
    pub fn read_build_log(&self, path: &StorePath, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(r) = self.build_log_reader(path)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        r.take(limit)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("reading build log", e))?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;

    #[test]
    fn write_then_read_back() {
        let (_d, s) = new_store();
        let drv = s.parse_path(&fake_store_path(&s, "x.drv")).unwrap();
        s.add_build_log(&drv, b"line 1\nline 2\n").unwrap();
        let base = drv.to_base_name();
        let file = s
            .config()
            .log_dir
            .join("drvs")
            .join(&base[..2])
            .join(format!("{}.bz2", &base[2..]));
        assert!(file.exists());
        assert_eq!(&std::fs::read(&file).unwrap()[..3], b"BZh");
        assert_eq!(
            s.read_build_log(&drv, 1 << 20).unwrap().unwrap(),
            b"line 1\nline 2\n"
        );
        // The first log wins.
        s.add_build_log(&drv, b"other").unwrap();
        assert_eq!(
            s.read_build_log(&drv, 1 << 20).unwrap().unwrap(),
            b"line 1\nline 2\n"
        );
        // Plain flat-layout logs (older Nix) are read too.
        let other = s.parse_path(&fake_store_path(&s, "y.drv")).unwrap();
        std::fs::write(
            s.config().log_dir.join("drvs").join(other.to_base_name()),
            b"plain",
        )
        .unwrap();
        assert_eq!(s.read_build_log(&other, 10).unwrap().unwrap(), b"plain");
        let none = s.parse_path(&fake_store_path(&s, "z.drv")).unwrap();
        assert!(s.read_build_log(&none, 10).unwrap().is_none());
    }
}
