//! Adding paths to the store.
//!
//! Every add follows one pipeline, with memory independent of the payload size:
//!
//! 1. temp-root the target path (so no GC, ours or CppNix's, deletes it mid-add);
//! 2. already valid (and not repairing)? consume the input and return;
//! 3. lock `<path>.lock` (flock; exclusive against CppNix too), re-check validity;
//! 4. restore/write into a fresh temporary object *inside the store dir* while hashing
//!    exactly the bytes consumed (NAR SHA-256 + size, plus the content-address hash when
//!    needed). When the target path is known up front (AddToStoreNar, AddTextToStore)
//!    the object is named `<target's hash part>-tmp-<random>`: the target's temp root
//!    protects it too (every GC, ours and CppNix's, matches temp roots by hash part), so
//!    the session holds exactly CppNix's roots. Otherwise (AddToStore, whose path depends
//!    on the data) it is `<random hash>-<name>`, temp-rooted itself. Either way a crash
//!    leaves an unprotected, unregistered entry that the next GC deletes;
//! 5. verify the claimed NAR hash, size and content address; on any mismatch the temporary
//!    object is deleted and nothing is registered;
//! 6. canonicalise (see `canonicalise`), then atomically `rename` into place (exchanging
//!    with, then deleting, any invalid leftover or — when repairing — the old copy);
//! 7. optionally hard-link-optimise, then register in one transaction; if registration
//!    fails the object is removed again.
//!
//! Imports of input-addressed paths need a signature by a trusted key when
//! `require-sigs` is set, unless the caller waives the check (trusted clients).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nixnest_core::nar::{self, NarReader};
use nixnest_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, Hasher, StorePath, ValidPathInfo,
};
use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::canonicalise::{self, InodesSeen};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::lock::PathLocks;
use crate::logger::{Logger, Verbosity};
use crate::store::LocalStore;
use crate::temproots::TempRoots;

/// Copies everything read through it into a hasher, if there is one.
struct Tee<'a, R> {
    inner: R,
    hasher: Option<&'a mut Hasher>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_deref_mut() {
            h.update(buf.get(..n).unwrap_or_default());
        }
        Ok(n)
    }
}

/// A hasher for a NAR content address, unless the NAR's own SHA-256 is that hash: hashing
/// every byte twice with SHA-256 would cost as much as the rest of an import.
fn nar_ca_hasher(algo: HashAlgo) -> Option<Hasher> {
    (algo != HashAlgo::Sha256).then(|| Hasher::new(algo))
}

/// A temporary object in the store dir, deleted on drop unless moved into place.
pub(crate) struct TempObject<'a> {
    store: &'a LocalStore,
    dir: OwnedFd,
    name: String,
    live: bool,
}

impl TempObject<'_> {
    pub(crate) fn path(&self) -> PathBuf {
        self.store.real_store_dir().join(&self.name)
    }

    pub(crate) fn name(&self) -> &OsStr {
        OsStr::new(&self.name)
    }

    pub(crate) fn dir(&self) -> &OwnedFd {
        &self.dir
    }

    /// Moves the object to `base` in the store dir, replacing whatever is there.
    pub(crate) fn move_into_place(mut self, base: &str) -> Result<()> {
        let from = fsutil::component(OsStr::new(&self.name))?;
        let to = fsutil::component(OsStr::new(base))?;
        let target = self.store.real_store_dir().join(base);
        match rustix::fs::renameat_with(&self.dir, &from, &self.dir, &to, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                // An invalid leftover (or, when repairing, the old copy): swap, then delete
                // it under our temporary name.
                rustix::fs::renameat_with(&self.dir, &from, &self.dir, &to, RenameFlags::EXCHANGE)
                    .ctx("moving into place", &target)?;
                fsutil::delete_at(self.dir.as_fd(), &from, &self.path())?;
            }
            Err(e) => return Err(Error::io_at("moving into place", &target, e.into())),
        }
        self.live = false;
        Ok(())
    }
}

impl Drop for TempObject<'_> {
    fn drop(&mut self) {
        if self.live
            && let Ok(n) = fsutil::component(OsStr::new(&self.name))
        {
            let _ = fsutil::delete_at(self.dir.as_fd(), &n, &self.path());
        }
    }
}

fn random_hash_part() -> String {
    let mut b = [0u8; 20];
    for chunk in b.chunks_mut(8) {
        let r = crate::db::cheap_random().to_le_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(r.get(..n).unwrap_or_default());
    }
    nixnest_core::nixbase32::encode(&b)
}

impl LocalStore {
    /// Reserves a temporary object name (not created yet), temp-rooted in `roots`.
    pub(crate) fn temp_object(&self, roots: &TempRoots, name: &str) -> Result<TempObject<'_>> {
        let dir = fsutil::open_dir(self.real_store_dir())?;
        let base = format!("{}-{name}", random_hash_part());
        roots.add(&format!("{}/{base}", self.store_dir_str()))?;
        Ok(TempObject {
            store: self,
            dir,
            name: base,
            live: true,
        })
    }

    /// Reserves a temporary object name (not created yet) for building `target`, which
    /// the caller has already temp-rooted: the name shares `target`'s hash part, so that
    /// root protects it (see the module docs).
    pub(crate) fn temp_object_for(&self, target: &StorePath) -> Result<TempObject<'_>> {
        let dir = fsutil::open_dir(self.real_store_dir())?;
        let base = format!("{}-tmp-{}", target.hash_part(), random_hash_part());
        Ok(TempObject {
            store: self,
            dir,
            name: base,
            live: true,
        })
    }

    fn check_references_valid(
        &self,
        path: Option<&StorePath>,
        refs: &BTreeSet<StorePath>,
    ) -> Result<()> {
        let others: BTreeSet<StorePath> =
            refs.iter().filter(|r| Some(*r) != path).cloned().collect();
        let valid = self.query_valid_paths(&others)?;
        if let Some(missing) = others.difference(&valid).next() {
            return Err(Error::InvalidPath(self.print(missing)));
        }
        Ok(())
    }

    fn lock_path(&self, path: &StorePath, logger: &dyn Logger) -> Result<PathLocks> {
        let real = self.real_store_dir().join(path.to_base_name());
        let mut lock = PathLocks::lock(&[&real], &|p| {
            logger.log(
                Verbosity::Info,
                &format!("waiting for lock on '{}'", p.display()),
            )
        })?;
        // Whatever happens, the lock file goes when we are done: later lockers re-check
        // validity first, and the `d` byte tells current waiters to reopen.
        lock.set_deletion(true);
        Ok(lock)
    }

    /// `path`'s lock, unless the path is already valid (`None`; never with `repair`).
    /// Validity is checked before locking and again under the lock: another adder may
    /// have finished the path while we waited.
    fn lock_unless_valid(
        &self,
        path: &StorePath,
        repair: bool,
        logger: &dyn Logger,
    ) -> Result<Option<PathLocks>> {
        if !repair && self.is_valid_path(path)? {
            return Ok(None);
        }
        let lock = self.lock_path(path, logger)?;
        if !repair && self.is_valid_path(path)? {
            return Ok(None);
        }
        Ok(Some(lock))
    }

    /// Whether an import of `info` lacks the signatures `require-sigs` demands.
    pub fn path_info_is_untrusted(&self, info: &ValidPathInfo) -> bool {
        if !self.config.require_sigs || info.is_content_addressed(self.store_dir()) {
            return false;
        }
        let keys =
            nixnest_core::signature::public_keys(self.config.trusted_public_keys.iter().cloned());
        info.count_valid_signatures(self.store_dir(), &keys) == 0
    }

    /// Adds a path from its NAR (`wopAddToStoreNar`, imports, substitution), reading
    /// exactly the NAR from `nar`. `check_sigs`: enforce `require-sigs`. If the path is
    /// already valid (and `repair` is off) the NAR is read, checked for syntax and
    /// discarded.
    pub fn add_to_store_nar(
        &self,
        info: &ValidPathInfo,
        nar: &mut dyn Read,
        repair: bool,
        check_sigs: bool,
        roots: &TempRoots,
        logger: &dyn Logger,
    ) -> Result<()> {
        let printed = self.print(&info.path);
        if check_sigs && self.path_info_is_untrusted(info) {
            return Err(Error::LacksSignature(printed));
        }
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(Error::BadInput(format!(
                "cannot add path '{printed}': its NAR hash must be sha256"
            )));
        }
        self.check_references_valid(Some(&info.path), &info.references)?;
        roots.add(&printed)?;
        let Some(lock) = self.lock_unless_valid(&info.path, repair, logger)? else {
            NarReader::new(nar).skip_to_end()?;
            return Ok(());
        };

        let tmp = self.temp_object_for(&info.path)?;
        // A second hasher only for a NAR content address with another algorithm.
        let mut ca_hasher = match &info.ca {
            Some(ca) if ca.method() == ContentAddressMethod::NixArchive => {
                nar_ca_hasher(ca.hash().algo())
            }
            _ => None,
        };
        let (hash, size) = {
            let tee = Tee {
                inner: nar,
                hasher: ca_hasher.as_mut(),
            };
            let mut hr = nar::HashingReader::new(tee);
            let mut reader = NarReader::new(&mut hr);
            nar::restore_at(&mut reader, tmp.dir().as_fd(), tmp.name())?;
            drop(reader);
            let (_, hs) = hr.into_parts();
            (Hash::new(HashAlgo::Sha256, &hs.sha256)?, hs.size)
        };
        if hash != info.nar_hash {
            return Err(Error::HashMismatch {
                path: printed,
                specified: info.nar_hash.to_typed_nix32(),
                got: hash.to_typed_nix32(),
            });
        }
        if size != info.nar_size {
            return Err(Error::SizeMismatch {
                path: printed,
                specified: info.nar_size,
                got: size,
            });
        }
        if let Some(ca) = &info.ca {
            let got = match ca.method() {
                ContentAddressMethod::NixArchive => match ca_hasher {
                    Some(h) => h.finish(),
                    None => hash,
                },
                ContentAddressMethod::Flat | ContentAddressMethod::Text => {
                    hash_regular_file(&tmp.path(), ca.hash().algo())?
                }
            };
            if &got != ca.hash() {
                return Err(Error::CaMismatch {
                    path: printed,
                    specified: ca.hash().to_typed_nix32(),
                    got: got.to_typed_nix32(),
                });
            }
        }
        self.finish_add(tmp, info, lock, logger)
    }

    /// Adds a path whose NAR was already restored (and hashed) into `tmp`.
    pub(crate) fn add_from_temp(
        &self,
        tmp: TempObject<'_>,
        info: &ValidPathInfo,
        check_sigs: bool,
        roots: &TempRoots,
        logger: &dyn Logger,
    ) -> Result<()> {
        if check_sigs && self.path_info_is_untrusted(info) {
            return Err(Error::LacksSignature(self.print(&info.path)));
        }
        self.check_references_valid(Some(&info.path), &info.references)?;
        roots.add(&self.print(&info.path))?;
        match self.lock_unless_valid(&info.path, false, logger)? {
            Some(lock) => self.finish_add(tmp, info, lock, logger),
            None => Ok(()),
        }
    }

    /// Canonicalise, move into place, optimise, register; undo the move on failure.
    fn finish_add(
        &self,
        tmp: TempObject<'_>,
        info: &ValidPathInfo,
        // Held until the path is registered; `lock_path` already marked it for deletion.
        _lock: PathLocks,
        logger: &dyn Logger,
    ) -> Result<()> {
        canonicalise::canonicalise_at(
            tmp.dir().as_fd(),
            tmp.name(),
            &tmp.path(),
            None,
            &mut InodesSeen::new(),
        )?;
        let base = info.path.to_base_name();
        let dir = tmp
            .dir()
            .try_clone()
            .ctx("duplicating", self.real_store_dir())?;
        tmp.move_into_place(&base)?;
        let undo = |e: Error| -> Error {
            if let Ok(n) = fsutil::component(OsStr::new(&base)) {
                let _ = fsutil::delete_at(dir.as_fd(), &n, &self.real_store_dir().join(&base));
            }
            e
        };
        if self.config.auto_optimise_store
            && let Err(e) = self.optimise_path(&self.real_store_dir().join(&base), logger)
        {
            logger.log(Verbosity::Warn, &format!("warning: {e}"));
        }
        self.register_valid_paths(std::slice::from_ref(info))
            .map_err(undo)?;
        Ok(())
    }

    /// Adds content-addressed data (`wopAddToStore`): for `NixArchive` the data is a NAR;
    /// for `Flat` and `Text` raw file bytes. Returns the new (or existing) path's info.
    #[allow(clippy::too_many_arguments)]
    pub fn add_to_store_ca(
        &self,
        name: &str,
        method: ContentAddressMethod,
        algo: HashAlgo,
        references: &BTreeSet<StorePath>,
        data: &mut dyn Read,
        repair: bool,
        roots: &TempRoots,
        logger: &dyn Logger,
    ) -> Result<ValidPathInfo> {
        nixnest_core::store_path::validate_name(name)?;
        let refs_allowed = match method {
            ContentAddressMethod::Text => algo == HashAlgo::Sha256,
            ContentAddressMethod::NixArchive => algo == HashAlgo::Sha256,
            ContentAddressMethod::Flat => false,
        };
        if method == ContentAddressMethod::Text && algo != HashAlgo::Sha256 {
            return Err(Error::BadInput(format!(
                "text hashing requires sha256, not {algo}"
            )));
        }
        if !references.is_empty() && !refs_allowed {
            return Err(Error::BadInput(format!(
                "a path added with method '{}' cannot have references",
                method.render_with_algo(algo)
            )));
        }
        self.check_references_valid(None, references)?;

        let tmp = self.temp_object(roots, name)?;
        let (ca_hash, nar_hash, nar_size) = match method {
            ContentAddressMethod::NixArchive => {
                let mut ca_hasher = nar_ca_hasher(algo);
                let tee = Tee {
                    inner: data,
                    hasher: ca_hasher.as_mut(),
                };
                let mut hr = nar::HashingReader::new(tee);
                let mut reader = NarReader::new(&mut hr);
                nar::restore_at(&mut reader, tmp.dir().as_fd(), tmp.name())?;
                drop(reader);
                let (_, hs) = hr.into_parts();
                let nar_hash = Hash::new(HashAlgo::Sha256, &hs.sha256)?;
                let ca_hash = match ca_hasher {
                    Some(h) => h.finish(),
                    None => nar_hash,
                };
                (ca_hash, nar_hash, hs.size)
            }
            ContentAddressMethod::Flat | ContentAddressMethod::Text => {
                let ca_hash = write_flat(&tmp, data, algo)?;
                let hs = nar::nar_hash_and_size(&tmp.path())?;
                (ca_hash, Hash::new(HashAlgo::Sha256, &hs.sha256)?, hs.size)
            }
        };
        let ca = ContentAddress::new(method, ca_hash)?;
        let path = self
            .store_dir()
            .make_path_from_ca(name, &ca, references, false)?;
        roots.add(&self.print(&path))?;
        let Some(lock) = self.lock_unless_valid(&path, repair, logger)? else {
            return self.path_info(&path);
        };
        let mut info = ValidPathInfo::new(path.clone(), nar_hash);
        info.nar_size = nar_size;
        info.references = references.clone();
        info.ca = Some(ca);
        self.finish_add(tmp, &info, lock, logger)?;
        self.path_info(&path)
    }

    /// `addTextToStore`: a `text:sha256` path with the given contents and references.
    /// The contents are at hand, so the path is computed first and is the only temp root
    /// the add takes (as in CppNix).
    pub fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
        roots: &TempRoots,
        logger: &dyn Logger,
    ) -> Result<ValidPathInfo> {
        nixnest_core::store_path::validate_name(name)?;
        self.check_references_valid(None, references)?;
        let ca = ContentAddress::new(
            ContentAddressMethod::Text,
            Hash::compute(HashAlgo::Sha256, contents),
        )?;
        let path = self
            .store_dir()
            .make_path_from_ca(name, &ca, references, false)?;
        roots.add(&self.print(&path))?;
        let Some(lock) = self.lock_unless_valid(&path, false, logger)? else {
            return self.path_info(&path);
        };
        let tmp = self.temp_object_for(&path)?;
        let mut data = contents;
        write_flat(&tmp, &mut data, HashAlgo::Sha256)?;
        let hs = nar::nar_hash_and_size(&tmp.path())?;
        let mut info = ValidPathInfo::new(path.clone(), Hash::new(HashAlgo::Sha256, &hs.sha256)?);
        info.nar_size = hs.size;
        info.references = references.clone();
        info.ca = Some(ca);
        self.finish_add(tmp, &info, lock, logger)?;
        self.path_info(&path)
    }

    /// Writes the NAR of a valid path (`wopNarFromPath`, exports). Returns its size.
    pub fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<u64> {
        if !self.is_valid_path(path)? {
            return Err(Error::InvalidPath(self.print(path)));
        }
        Ok(nar::dump_path(
            &self.real_store_dir().join(path.to_base_name()),
            out,
        )?)
    }
}

/// Writes raw bytes to a new regular file `tmp`, returning their hash.
fn write_flat(tmp: &TempObject<'_>, data: &mut dyn Read, algo: HashAlgo) -> Result<Hash> {
    let fd = rustix::fs::openat(
        tmp.dir(),
        tmp.name(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .ctx("creating", &tmp.path())?;
    let mut f = std::fs::File::from(fd);
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading data to add", e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        f.write_all(chunk).ctx("writing", &tmp.path())?;
    }
    Ok(hasher.finish())
}

/// Hash of a regular file's contents (for flat/text content addresses).
fn hash_regular_file(path: &Path, algo: HashAlgo) -> Result<Hash> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("opening", path)?;
    let st = rustix::fs::fstat(&fd).ctx("statting", path)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::BadInput(format!(
            "'{}' claims a flat or text content address but is not a regular file",
            path.display()
        )));
    }
    let mut f = std::fs::File::from(fd);
    let mut hasher = Hasher::new(algo);
    io::copy(&mut f, &mut hasher).ctx("reading", path)?;
    Ok(hasher.finish())
}
