//! Registering a build's outputs (CppNix 2.8 `registerOutputs` + `checkOutputs`, with the
//! fixed-output hardening of the 2024 and 2026 advisories).
//!
//! The outputs are wherever the builder left them: in the chroot's store (sandboxed) or in
//! the real store (unsandboxed); all work is relative to that directory's descriptor and
//! never follows a symlink.
//!
//! 1. per output: `lstat` (missing → "builder for '…' failed to produce output path for
//!    output '…' at '…'"); refuse a non-symlink that is group- or world-writable, or an
//!    object not owned by the build user ("suspicious ownership or permission on …");
//!    canonicalise with the ownership check (`nixnest_store::canonicalise`); dump it as a NAR once,
//!    feeding both the NAR hash and the reference scanner (candidates: input closure ∪
//!    outputs ∪ paths added by recursive Nix ∪ what the caller adds);
//! 2. outputs that refer to each other must not form a cycle ("cycle detected in build of
//!    …");
//! 3. fixed-output: first copy the output into a fresh, private (0700) directory that we
//!    create inside the store, restoring it from its NAR (new inodes: a descriptor smuggled
//!    out by the builder now points at the deleted original — CVE-2024-27297 — and the copy
//!    is never inside the chroot, where a builder could have planted symlinks —
//!    CVE-2026-39860); then hash it (flat: the file's bytes, which must be a non-executable
//!    regular file; recursive: the NAR modulo its own hash part, CppNix's `HashModuloSink`)
//!    and compute its path. A hash different from the declared one is still registered
//!    under the path it really has, then reported as CppNix does ("hash mismatch in
//!    fixed-output derivation '…':\n  specified: sha256-…\n     got:    sha256-…");
//! 4. `allowedReferences`, `allowedRequisites`, `disallowedReferences`,
//!    `disallowedRequisites` (store paths or output names; requisite checks ignore self
//!    references in plain mode), and in structured mode `outputChecks.<output>` with
//!    `maxSize`/`maxClosureSize` too;
//! 5. only now is anything moved into the store (`rename`; any invalid leftover at the
//!    destination is deleted first), optimised when `auto-optimise-store` is on, and all
//!    outputs are registered in **one** transaction with deriver, `ultimate` and the
//!    current time. If registration fails the moved outputs are deleted again: a failure
//!    never leaves a half-registered build.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nixnest_core::nar::{self, NarHasher, NarReader};
use nixnest_core::store_path::output_path_name;
use nixnest_core::{
    ContentAddress, ContentAddressMethod, DerivationOutput, Hash, HashAlgo, Hasher, RefScanner,
    StorePath, ValidPathInfo,
};
use nixnest_store::{LocalStore, NullLogger, TempRoots};
use rustix::fs::{FileType, Mode, RenameFlags};
use rustix::io::Errno;
use serde_json::Value;

use crate::drvattrs::DrvAttrs;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use nixnest_store::canonicalise::{self as canon, InodesSeen};

/// What registration needs.
pub struct RegisterJob<'a> {
    pub store: &'a LocalStore,
    pub drv_path: &'a StorePath,
    pub attrs: &'a DrvAttrs<'a>,
    /// The outputs to register: name → path the builder had to produce.
    pub outputs: &'a BTreeMap<String, StorePath>,
    /// Where the builder left them (chroot store or real store).
    pub location: BorrowedFd<'a>,
    pub location_path: &'a Path,
    /// Whether `location` is the real store (unsandboxed build).
    pub in_real_store: bool,
    pub build_uid: Option<u32>,
    pub candidates: &'a BTreeSet<StorePath>,
    pub temp_roots: &'a TempRoots,
}

/// The result of registration.
#[derive(Debug)]
pub enum Registration {
    Registered(BTreeMap<String, ValidPathInfo>),
    /// The build's outputs were refused (OutputRejected). A fixed-output hash mismatch has
    /// registered the output under its real path first.
    Rejected {
        message: String,
        hash_mismatch: bool,
        registered: BTreeMap<String, ValidPathInfo>,
    },
}

fn rejected(message: String) -> Registration {
    Registration::Rejected {
        message,
        hash_mismatch: false,
        registered: BTreeMap::new(),
    }
}

/// An output after step 1.
struct Scanned {
    name: String,
    path: StorePath,
    refs: BTreeSet<StorePath>,
    nar: nar::NarHashAndSize,
    st: rustix::fs::Stat,
}

/// Where an output's final content sits before it is moved.
enum Source {
    /// In `location` under the output's own base name.
    Location,
    /// In a private temp dir as `out`.
    Fresh(FreshDir),
}

struct Ready {
    name: String,
    info: ValidPathInfo,
    source: Source,
}

/// A writer into two sinks.
struct Tee<'a>(&'a mut dyn Write, &'a mut dyn Write);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registers the outputs; see the module docs.
pub fn register_outputs(job: &RegisterJob<'_>) -> Result<Registration> {
    let sd = job.store.store_dir();
    let drv_s = sd.print(job.drv_path);
    let mut seen = InodesSeen::new();

    // 1. Check, canonicalise, hash and scan.
    let mut scanned = Vec::new();
    for (name, path) in job.outputs {
        let base = path.to_string();
        let cbase = fsutil::component(&base)?;
        let actual = job.location_path.join(&base);
        let Some(st) =
            fsutil::lstat_at(job.location, &cbase).ctx("getting attributes of path", &actual)?
        else {
            return Ok(rejected(format!(
                "builder for '{drv_s}' failed to produce output path for output '{name}' at '{}'",
                actual.display()
            )));
        };
        let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        if (!is_link && st.st_mode & 0o022 != 0) || job.build_uid.is_some_and(|u| st.st_uid != u) {
            return Ok(rejected(format!(
                "suspicious ownership or permission on '{}' for output '{name}'; rejecting this build output",
                actual.display()
            )));
        }
        match canon::canonicalise_at(
            job.location,
            OsStr::new(&base),
            &actual,
            job.build_uid,
            &mut seen,
        ) {
            Ok(()) => {}
            // Foreign ownership and unsupported file types are the build's fault.
            Err(e @ nixnest_store::Error::Other(_))
            | Err(e @ nixnest_store::Error::UnsupportedFileType(_)) => {
                return Ok(rejected(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        let mut scanner = RefScanner::new(job.candidates.iter().cloned());
        let mut hasher = NarHasher::new();
        nar::dump_path(
            &fsutil::path_in(job.location, OsStr::new(&base)),
            Tee(&mut scanner, &mut hasher),
        )?;
        scanned.push(Scanned {
            name: name.clone(),
            path: path.clone(),
            refs: scanner.into_found(),
            nar: hasher.finish(),
            st,
        });
    }

    // 2. No cycles between outputs.
    if let Some(m) = output_cycle(&drv_s, &scanned) {
        return Ok(rejected(m));
    }

    // 3. Path infos (fixed outputs: fresh copy, hash, real path).
    let drv = job.attrs.drv();
    let mut ready = Vec::new();
    let mut mismatch: Option<String> = None;
    for s in scanned {
        let output = drv
            .outputs
            .get(&s.name)
            .ok_or_else(|| Error::Other(format!("no output '{}'", s.name)))?;
        match output {
            DerivationOutput::CAFixed(wanted) => {
                let r = fixed_output(job, &s, wanted)?;
                match r {
                    FixedResult::Rejected(m) => return Ok(rejected(m)),
                    FixedResult::Ready(r, got) => {
                        let r = *r;
                        if got != *wanted.hash() {
                            mismatch = Some(format!(
                                "hash mismatch in fixed-output derivation '{drv_s}':\n  specified: {}\n     got:    {}",
                                wanted.hash().to_sri(),
                                got.to_sri()
                            ));
                        }
                        ready.push(r);
                    }
                }
            }
            DerivationOutput::InputAddressed(_) => {
                let mut info =
                    ValidPathInfo::new(s.path.clone(), Hash::new(HashAlgo::Sha256, &s.nar.sha256)?);
                info.nar_size = s.nar.size;
                info.references = s.refs;
                ready.push(Ready {
                    name: s.name,
                    info,
                    source: Source::Location,
                });
            }
            _ => {
                return Err(Error::BadDerivation(format!(
                    "output '{}' of '{drv_s}' is not input-addressed or fixed; nixnest cannot register it",
                    s.name
                )));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in &mut ready {
        r.info.deriver = Some(job.drv_path.clone());
        r.info.ultimate = true;
        r.info.registration_time = now;
    }

    // 4. Output checks.
    if mismatch.is_none()
        && let Some(m) = check_outputs(job, &ready)?
    {
        return Ok(rejected(m));
    }

    // 5. Move into the store and register.
    let store_fd = fsutil::open_dir(job.store.real_store_dir())?;
    let mut locks = Vec::new();
    let mut moved: Vec<StorePath> = Vec::new();
    let mut infos = BTreeMap::new();
    let result = (|| -> Result<()> {
        for r in &ready {
            let final_base = r.info.path.to_string();
            let declared = job.outputs.get(&r.name);
            if declared != Some(&r.info.path) {
                // Not known up front (a mismatching fixed output): lock it now.
                let real = job.store.real_store_dir().join(&final_base);
                let mut l = nixnest_store::lock::PathLocks::lock(&[real.as_path()], &|_| {})?;
                l.set_deletion(true);
                locks.push(l);
            }
            if job.store.is_valid_path(&r.info.path)? {
                // Produced by someone else in the meantime (content-addressed): keep theirs.
                continue;
            }
            match &r.source {
                Source::Location if job.in_real_store => {}
                Source::Location => {
                    move_into_store(
                        job.location,
                        &final_base,
                        store_fd.as_fd(),
                        &final_base,
                        job.store.real_store_dir(),
                    )?;
                    moved.push(r.info.path.clone());
                }
                Source::Fresh(dir) => {
                    move_into_store(
                        dir.fd.as_fd(),
                        "out",
                        store_fd.as_fd(),
                        &final_base,
                        job.store.real_store_dir(),
                    )?;
                    moved.push(r.info.path.clone());
                }
            }
            if job.store.config().auto_optimise_store {
                job.store
                    .optimise_path(&job.store.real_store_dir().join(&final_base), &NullLogger)?;
            }
        }
        let list: Vec<ValidPathInfo> = ready.iter().map(|r| r.info.clone()).collect();
        job.store.register_valid_paths(&list)?;
        Ok(())
    })();
    if let Err(e) = result {
        for p in &moved {
            if let Ok(c) = fsutil::component(p.to_string()) {
                let _ = fsutil::delete_tree_at(
                    store_fd.as_fd(),
                    &c,
                    &job.store.real_store_dir().join(p.to_string()),
                );
            }
        }
        return Err(e);
    }
    for r in ready {
        infos.insert(r.name, r.info);
    }
    drop(locks);
    match mismatch {
        Some(message) => Ok(Registration::Rejected {
            message,
            hash_mismatch: true,
            registered: infos,
        }),
        None => Ok(Registration::Registered(infos)),
    }
}

/// `rename`s `from_name` in `from` to `to_name` in the store, replacing an invalid
/// leftover. A directory we don't own with write permission is made writable for the move
/// (Linux needs that to update its `..`) and restored afterwards.
fn move_into_store(
    from: BorrowedFd<'_>,
    from_name: &str,
    to: BorrowedFd<'_>,
    to_name: &str,
    store: &Path,
) -> Result<()> {
    let f = fsutil::component(from_name)?;
    let t = fsutil::component(to_name)?;
    let target = store.join(to_name);
    let st = rustix::fs::statat(from, &f, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .ctx("getting attributes of", &target)?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    let make_writable =
        is_dir && rustix::process::geteuid().as_raw() != 0 && st.st_mode & 0o200 == 0;
    let dir_fd: Option<OwnedFd> = if make_writable {
        let fd = fsutil::open_dir_at(from, &f).ctx("opening", &target)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o200))
            .ctx("chmod", &target)?;
        Some(fd)
    } else {
        None
    };
    let r = loop {
        match rustix::fs::renameat_with(from, &f, to, &t, RenameFlags::NOREPLACE) {
            Ok(()) => break Ok(()),
            Err(Errno::EXIST) => {
                fsutil::delete_tree_at(to, &t, &target)?;
            }
            Err(e) => break Err(Error::io_at("moving output into the store at", &target, e)),
        }
    };
    if let Some(fd) = dir_fd {
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777));
    }
    r
}

fn output_cycle(drv_s: &str, scanned: &[Scanned]) -> Option<String> {
    let by_path: BTreeMap<&StorePath, &str> =
        scanned.iter().map(|s| (&s.path, s.name.as_str())).collect();
    let edges: BTreeMap<&str, Vec<&str>> = scanned
        .iter()
        .map(|s| {
            let deps = s
                .refs
                .iter()
                .filter(|r| **r != s.path)
                .filter_map(|r| by_path.get(r).copied())
                .collect();
            (s.name.as_str(), deps)
        })
        .collect();
    // Depth-first search with colours; report the first back edge.
    #[derive(Clone, Copy, PartialEq)]
    enum C {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, C> = edges.keys().map(|k| (*k, C::White)).collect();
    fn visit<'a>(
        n: &'a str,
        parent: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        colour: &mut BTreeMap<&'a str, C>,
    ) -> Option<(String, String)> {
        match colour.get(n).copied() {
            Some(C::Grey) => return Some((n.to_owned(), parent.to_owned())),
            Some(C::Black) => return None,
            _ => {}
        }
        colour.insert(n, C::Grey);
        for d in edges.get(n).map(Vec::as_slice).unwrap_or_default() {
            if let Some(c) = visit(d, n, edges, colour) {
                return Some(c);
            }
        }
        colour.insert(n, C::Black);
        None
    }
    for n in edges.keys() {
        if let Some((path, parent)) = visit(n, n, &edges, &mut colour) {
            return Some(format!(
                "cycle detected in build of '{drv_s}' in the references of output '{path}' from output '{parent}'"
            ));
        }
    }
    None
}

/// A private temporary directory in the store (`<random hash>-nixnest-output`, 0700,
/// temp-rooted), deleted on drop.
struct FreshDir {
    store_fd: OwnedFd,
    name: CString,
    path: PathBuf,
    fd: OwnedFd,
}

impl FreshDir {
    fn create(store: &LocalStore, roots: &TempRoots) -> Result<FreshDir> {
        let store_fd = fsutil::open_dir(store.real_store_dir())?;
        loop {
            let mut b = [0u8; 20];
            // SAFETY: filling a local buffer.
            let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            if n != 20 {
                return Err(Error::io("getrandom", io::Error::last_os_error()));
            }
            let base = format!("{}-nixnest-output", nixnest_core::nixbase32::encode(&b));
            roots.add(&format!("{}/{base}", store.store_dir().as_str()))?;
            let name = fsutil::component(&base)?;
            match fsutil::mkdir_at(store_fd.as_fd(), &name, 0o700) {
                Ok(fd) => {
                    return Ok(FreshDir {
                        path: store.real_store_dir().join(&base),
                        store_fd,
                        name,
                        fd,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(Error::io_at(
                        "creating",
                        &store.real_store_dir().join(base),
                        e,
                    ));
                }
            }
        }
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        let _ = fsutil::delete_tree_at(self.store_fd.as_fd(), &self.name, &self.path);
    }
}

enum FixedResult {
    Rejected(String),
    Ready(Box<Ready>, Hash),
}

fn fixed_output(
    job: &RegisterJob<'_>,
    s: &Scanned,
    wanted: &ContentAddress,
) -> Result<FixedResult> {
    let sd = job.store.store_dir();
    let drv = job.attrs.drv();
    let base = s.path.to_string();
    let actual = job.location_path.join(&base);
    let method = wanted.method();
    let algo = wanted.hash().algo();
    let ft = FileType::from_raw_mode(s.st.st_mode);
    if method == ContentAddressMethod::Flat
        && (ft != FileType::RegularFile || s.st.st_mode & 0o100 != 0)
    {
        return Ok(FixedResult::Rejected(format!(
            "output path '{}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)",
            actual.display()
        )));
    }
    // A fresh copy in a private directory of ours.
    let fresh = FreshDir::create(job.store, job.temp_roots)?;
    copy_via_nar(
        &fsutil::path_in(job.location, OsStr::new(&base)),
        fresh.fd.as_fd(),
    )?;
    fsutil::delete_tree_at(job.location, &fsutil::component(&base)?, &actual)?;
    nar::canonicalise_at(fresh.fd.as_fd(), OsStr::new("out"))?;
    let copy = fresh.path.join("out");

    let self_hash = s.path.hash_part();
    let got = match method {
        ContentAddressMethod::NixArchive => {
            let mut sink = ModuloHasher::new(algo, self_hash.as_bytes());
            nar::dump_path(&copy, &mut sink)?;
            sink.finish()
        }
        ContentAddressMethod::Flat | ContentAddressMethod::Text => {
            let mut h = HashSink(Hasher::new(algo));
            let mut f = std::fs::File::open(&copy).ctx("opening", &copy)?;
            io::copy(&mut f, &mut h).ctx("reading", &copy)?;
            h.0.finish()
        }
    };
    let self_ref = s.refs.contains(&s.path);
    let others: BTreeSet<StorePath> = s.refs.iter().filter(|r| **r != s.path).cloned().collect();
    let final_path = match sd.make_fixed_output_path(
        &output_path_name(&drv.name, &s.name),
        method,
        &got,
        &others,
        self_ref,
    ) {
        Ok(p) => p,
        Err(e) => return Ok(FixedResult::Rejected(e.to_string())),
    };
    if final_path != s.path && self_ref {
        // Rewrite the self-references to the real path's hash part.
        let from = self_hash.clone();
        let to = final_path.hash_part();
        let rewritten = fresh.path.join("out.rewritten");
        {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| Error::io("pipe", e))?;
            let src = copy.clone();
            let from_b = from.into_bytes();
            let to_b = to.into_bytes();
            let writer = std::thread::spawn(move || -> Result<()> {
                let mut rw = Rewriter::new(std::fs::File::from(w), &from_b, &to_b);
                nar::dump_path(&src, &mut rw)?;
                rw.flush_all().map_err(|e| Error::io("rewriting", e))?;
                Ok(())
            });
            let mut reader = NarReader::new(std::fs::File::from(r));
            let restored =
                nar::restore_at(&mut reader, fresh.fd.as_fd(), OsStr::new("out.rewritten"));
            drop(reader);
            writer
                .join()
                .map_err(|_| Error::Other("rewriting thread panicked".into()))??;
            restored?;
        }
        fsutil::delete_tree_at(fresh.fd.as_fd(), c"out", &copy)?;
        rustix::fs::renameat(fresh.fd.as_fd(), c"out.rewritten", fresh.fd.as_fd(), c"out")
            .ctx("renaming", &rewritten)?;
        nar::canonicalise_at(fresh.fd.as_fd(), OsStr::new("out"))?;
    }
    let nh = nar::nar_hash_and_size(&copy)?;
    let mut info = ValidPathInfo::new(final_path.clone(), Hash::new(HashAlgo::Sha256, &nh.sha256)?);
    info.nar_size = nh.size;
    info.references = others;
    if self_ref {
        info.references.insert(final_path);
    }
    info.ca = Some(ContentAddress::new(method, got)?);
    Ok(FixedResult::Ready(
        Box::new(Ready {
            name: s.name.clone(),
            info,
            source: Source::Fresh(fresh),
        }),
        got,
    ))
}

/// Copies the tree at `src` as `out` inside `dir` by dumping and restoring its NAR (so only
/// regular files, directories and symlinks are created, with fresh inodes).
fn copy_via_nar(src: &Path, dir: BorrowedFd<'_>) -> Result<()> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io("pipe", e))?;
    let src = src.to_owned();
    let writer = std::thread::spawn(move || nar::dump_path(&src, std::fs::File::from(w)));
    let mut reader = NarReader::new(std::fs::File::from(r));
    let restored = nar::restore_at(&mut reader, dir, OsStr::new("out"));
    drop(reader);
    let dumped = writer
        .join()
        .map_err(|_| Error::Other("copying thread panicked".into()))?;
    restored?;
    dumped?;
    Ok(())
}

/// A hasher as a `Write` sink.
struct HashSink(Hasher);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams bytes to `inner`, replacing every occurrence of `from` by `to` (same length) and
/// remembering where they were (CppNix's `RewritingSink`).
struct Rewriter<W: Write> {
    inner: W,
    from: Vec<u8>,
    to: Vec<u8>,
    /// Bytes not yet passed on: fewer than `from.len()`, or a possible match prefix.
    pending: Vec<u8>,
    /// Stream offset of `pending[0]`.
    offset: u64,
    matches: Vec<u64>,
}

impl<W: Write> Rewriter<W> {
    fn new(inner: W, from: &[u8], to: &[u8]) -> Self {
        Rewriter {
            inner,
            from: from.to_vec(),
            to: to.to_vec(),
            pending: Vec::new(),
            offset: 0,
            matches: Vec::new(),
        }
    }

    fn process(&mut self, last: bool) -> io::Result<()> {
        let n = self.from.len();
        let mut out = Vec::with_capacity(self.pending.len());
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending.get(i..i + n) == Some(self.from.as_slice()) {
                self.matches.push(self.offset + i as u64);
                out.extend_from_slice(&self.to);
                i += n;
            } else if !last && i + n > self.pending.len() {
                break;
            } else {
                out.push(self.pending.get(i).copied().unwrap_or_default());
                i += 1;
            }
        }
        self.inner.write_all(&out)?;
        self.pending.drain(..i);
        self.offset += i as u64;
        Ok(())
    }

    fn flush_all(&mut self) -> io::Result<()> {
        self.process(true)?;
        self.inner.flush()
    }
}

impl<W: Write> Write for Rewriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= 64 * 1024 {
            self.process(false)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// CppNix's `HashModuloSink`: the hash of the stream with the modulus (the output's own hash
/// part) replaced by zeros, followed by `|<offset>` for each place it was found.
struct ModuloHasher {
    rw: Rewriter<HashSink>,
}

impl ModuloHasher {
    fn new(algo: HashAlgo, modulus: &[u8]) -> Self {
        ModuloHasher {
            rw: Rewriter::new(
                HashSink(Hasher::new(algo)),
                modulus,
                &vec![0u8; modulus.len()],
            ),
        }
    }

    fn finish(mut self) -> Hash {
        let _ = self.rw.process(true);
        for pos in std::mem::take(&mut self.rw.matches) {
            self.rw.inner.0.update(format!("|{pos}").as_bytes());
        }
        self.rw.inner.0.finish()
    }
}

impl Write for ModuloHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.rw.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Output checks; `Some(message)` if an output is refused.
fn check_outputs(job: &RegisterJob<'_>, ready: &[Ready]) -> Result<Option<String>> {
    let sd = job.store.store_dir();
    let drv_s = sd.print(job.drv_path);
    let by_path: BTreeMap<&StorePath, &ValidPathInfo> =
        ready.iter().map(|r| (&r.info.path, &r.info)).collect();
    let outputs: BTreeMap<&str, &StorePath> = ready
        .iter()
        .map(|r| (r.name.as_str(), &r.info.path))
        .collect();

    let closure = |start: &StorePath| -> Result<(BTreeSet<StorePath>, u64)> {
        let mut done = BTreeSet::new();
        let mut size = 0u64;
        let mut todo = VecDeque::from([start.clone()]);
        while let Some(p) = todo.pop_front() {
            if !done.insert(p.clone()) {
                continue;
            }
            let (refs, n) = match by_path.get(&p) {
                Some(i) => (i.references.clone(), i.nar_size),
                None => {
                    let i = job.store.path_info(&p)?;
                    (i.references, i.nar_size)
                }
            };
            size = size.saturating_add(n);
            todo.extend(refs);
        }
        Ok((done, size))
    };

    struct Checks {
        ignore_self_refs: bool,
        max_size: Option<u64>,
        max_closure_size: Option<u64>,
        lists: [(Option<Vec<String>>, bool, bool); 4],
    }

    for r in ready {
        let info = &r.info;
        let checks = if let Some(structured) = job.attrs.structured() {
            let Some(oc) = structured.get("outputChecks").and_then(|v| v.get(&r.name)) else {
                continue;
            };
            let list = |key: &str| -> Result<Option<Vec<String>>> {
                match oc.get(key) {
                    None => Ok(None),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_owned).ok_or_else(|| {
                                Error::BadDerivation(format!(
                                    "attribute '{key}' of derivation '{drv_s}' must be a list of strings"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                        .map(Some),
                    Some(_) => Err(Error::BadDerivation(format!(
                        "attribute '{key}' of derivation '{drv_s}' must be a list of strings"
                    ))),
                }
            };
            Checks {
                ignore_self_refs: false,
                max_size: oc.get("maxSize").and_then(Value::as_u64),
                max_closure_size: oc.get("maxClosureSize").and_then(Value::as_u64),
                lists: [
                    (list("allowedReferences")?, true, false),
                    (list("allowedRequisites")?, true, true),
                    (list("disallowedReferences")?, false, false),
                    (list("disallowedRequisites")?, false, true),
                ],
            }
        } else {
            Checks {
                ignore_self_refs: true,
                max_size: None,
                max_closure_size: None,
                lists: [
                    (job.attrs.get_strings("allowedReferences")?, true, false),
                    (job.attrs.get_strings("allowedRequisites")?, true, true),
                    (job.attrs.get_strings("disallowedReferences")?, false, false),
                    (job.attrs.get_strings("disallowedRequisites")?, false, true),
                ],
            }
        };
        if let Some(max) = checks.max_size
            && info.nar_size > max
        {
            return Ok(Some(format!(
                "path '{}' is too large at {} bytes; limit is {max} bytes",
                sd.print(&info.path),
                info.nar_size
            )));
        }
        if let Some(max) = checks.max_closure_size {
            let (_, size) = closure(&info.path)?;
            if size > max {
                return Ok(Some(format!(
                    "closure of path '{}' is too large at {size} bytes; limit is {max} bytes",
                    sd.print(&info.path)
                )));
            }
        }
        for (value, allowed, recursive) in &checks.lists {
            let Some(value) = value else { continue };
            let mut spec = BTreeSet::new();
            for i in value {
                if let Ok(p) = sd.parse_path(i) {
                    spec.insert(p);
                } else if let Some(p) = outputs.get(i.as_str()) {
                    spec.insert((*p).clone());
                } else {
                    return Ok(Some(format!(
                        "derivation contains an illegal reference specifier '{i}'"
                    )));
                }
            }
            let mut used = if *recursive {
                closure(&info.path)?.0
            } else {
                info.references.clone()
            };
            if *recursive && checks.ignore_self_refs {
                used.remove(&info.path);
            }
            let bad: Vec<&StorePath> = used
                .iter()
                .filter(|p| {
                    if *allowed {
                        !spec.contains(*p)
                    } else {
                        spec.contains(*p)
                    }
                })
                .collect();
            if !bad.is_empty() {
                let list: String = bad.iter().map(|p| format!("\n  {}", sd.print(p))).collect();
                return Ok(Some(format!(
                    "output '{}' is not allowed to refer to the following paths:{list}",
                    sd.print(&info.path)
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewriter_replaces_across_chunks() {
        let mut out = Vec::new();
        {
            let mut rw = Rewriter::new(&mut out, b"abc", b"XYZ");
            rw.write_all(b"..ab").unwrap();
            rw.write_all(b"c..abc").unwrap();
            rw.write_all(b"ab").unwrap();
            rw.flush_all().unwrap();
            assert_eq!(rw.matches, vec![2, 7]);
        }
        assert_eq!(out, b"..XYZ..XYZab");
    }

    #[test]
    fn modulo_hash_without_occurrences_is_plain_hash() {
        let mut m = ModuloHasher::new(HashAlgo::Sha256, b"0123456789abcdfghijklmnpqrsvwxyz");
        m.write_all(b"hello world").unwrap();
        assert_eq!(m.finish(), Hash::sha256(b"hello world"));
        // With an occurrence: zeros plus "|<offset>".
        let mut m = ModuloHasher::new(HashAlgo::Sha256, b"ab");
        m.write_all(b"xxab").unwrap();
        assert_eq!(m.finish(), Hash::sha256(b"xx\0\0|2"));
    }
}
