//! Garbage collection and GC roots, CppNix 2.8's algorithm (`collectGarbage`).
//!
//! Roots:
//! * `<state>/gcroots` and `<state>/profiles`, walked recursively: a symlink into the
//!   store is a root (if valid, else "skipping invalid root"); a symlink elsewhere is an
//!   indirect root — followed once, and if its target is missing and the link lives in
//!   `gcroots/auto` it is removed ("removing stale link from … to …"); a regular file
//!   named like a valid store path is a root.
//! * runtime roots from `/proc/<pid>/{exe,cwd,fd/*,maps,environ}` and
//!   `/proc/sys/kernel/{modprobe,fbsplash,poweroff_cmd}`;
//! * temp roots (files in `<state>/temproots` and, during a GC, the roots socket), matched
//!   by hash part only, so a temp root on `X` also protects `X.lock`, `X.chroot`, `X.check`;
//! * extra roots given by the caller (the daemon's running builds).
//!
//! The run: delete `db/reserved` (when deleting), take `gc.lock` exclusively, serve the
//! roots socket, find roots, load the whole reference graph with one read transaction,
//! then for every entry of the store dir (directory order) either delete it (not a store
//! path name) or walk its referrers (plus outputs of derivations with `keep-derivations`,
//! plus derivers with `keep-outputs`): a walk that meets a root or a live path marks the
//! start and the root's closure alive; otherwise the walked set is dead and is deleted
//! referrers-first (each deletion: re-check temp roots, publish the hash part as pending,
//! invalidate in the db, delete on disk without following symlinks). Finally `.links`
//! entries with one link are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nixnest_core::StorePath;
use rustix::fs::AtFlags;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::gcsocket::{RootsServer, SharedState};
use crate::lock::{self, LockType};
use crate::logger::{Logger, Verbosity, quote_path, render_size};
use crate::paths::hash_part_of;
use crate::store::LocalStore;
use crate::temproots::{self, CENSORED};

/// What a GC run does (wire values of `wopCollectGarbage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum GcAction {
    /// Return the live paths (`--print-live`).
    ReturnLive = 0,
    /// Return the dead paths (`--print-dead`).
    ReturnDead = 1,
    /// Delete everything unreachable (`--gc`).
    DeleteDead = 2,
    /// Delete the given paths, failing if one is alive (`--delete`).
    DeleteSpecific = 3,
}

/// Parameters of a GC run.
#[derive(Clone, Debug)]
pub struct GcOptions {
    pub action: GcAction,
    /// For `DeleteSpecific`: the paths to delete.
    pub paths_to_delete: BTreeSet<StorePath>,
    /// Ignore all roots (never allowed for daemon clients).
    pub ignore_liveness: bool,
    /// Stop once more than this many bytes were freed (`u64::MAX` = no limit; `0` =
    /// delete nothing).
    pub max_freed: u64,
    /// More roots from the caller (e.g. outputs of builds in progress). Like temp roots
    /// they are matched by hash part, so they also protect `<path>.lock` etc.
    pub extra_roots: BTreeSet<StorePath>,
    /// `keep-outputs`: a live derivation keeps its outputs alive. Per run, because it is
    /// the requesting session's setting (a trusted client may override it for its own
    /// requests), not the store's.
    pub keep_outputs: bool,
    /// `keep-derivations`: a live output keeps its deriver alive. Per run, as
    /// `keep_outputs`.
    pub keep_derivations: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            action: GcAction::DeleteDead,
            paths_to_delete: BTreeSet::new(),
            ignore_liveness: false,
            max_freed: u64::MAX,
            extra_roots: BTreeSet::new(),
            // nix.conf's defaults.
            keep_outputs: false,
            keep_derivations: true,
        }
    }
}

/// Result of a GC run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcResults {
    /// Deleted entries (store paths and junk, as `<store>/<name>`), or the live/dead set.
    pub paths: BTreeSet<String>,
    /// Bytes freed (CppNix's accounting: sizes of files with ≤ 2 links).
    pub bytes_freed: u64,
}

impl GcResults {
    /// CppNix's summary line, "N store paths deleted, X MiB freed".
    pub fn summary(&self) -> String {
        format!(
            "{} store paths deleted, {:.2} MiB freed",
            self.paths.len(),
            self.bytes_freed as f64 / (1024.0 * 1024.0)
        )
    }
}

/// Roots: store path → where each root was found (link path, `{temp:<pid>}`,
/// `/proc/<pid>/…`, or `{censored}`) — CppNix's `Roots`, what `wopFindRoots` reports.
pub type Roots = BTreeMap<StorePath, BTreeSet<String>>;

/// [`Roots`] keyed by printed path, as found.
type RawRoots = BTreeMap<String, BTreeSet<String>>;

/// The whole reference graph, loaded at once for the GC.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub index: HashMap<String, u32>,
    pub paths: Vec<String>,
    pub deriver: Vec<Option<String>>,
    pub references: Vec<Vec<u32>>,
    pub referrers: Vec<Vec<u32>>,
    /// drv → statically known output paths (may be invalid).
    pub drv_outputs: HashMap<u32, Vec<String>>,
    /// output path → derivations that list it.
    pub valid_derivers: HashMap<String, Vec<u32>>,
}

impl Graph {
    fn id(&self, path: &str) -> Option<u32> {
        self.index.get(path).copied()
    }

    fn path(&self, id: u32) -> &str {
        self.paths
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    fn is_drv(&self, id: u32) -> bool {
        self.path(id).ends_with(".drv")
    }

    /// Valid outputs of `drv` (from DerivationOutputs).
    fn valid_outputs(&self, drv: u32) -> impl Iterator<Item = u32> + '_ {
        self.drv_outputs
            .get(&drv)
            .into_iter()
            .flatten()
            .filter_map(|p| self.id(p))
    }

    fn references_of(&self, id: u32) -> &[u32] {
        self.references
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn referrers_of(&self, id: u32) -> &[u32] {
        self.referrers
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn deriver_of(&self, id: u32) -> Option<&str> {
        self.deriver.get(id as usize).and_then(|d| d.as_deref())
    }
}

impl LocalStore {
    /// Loads ValidPaths, Refs and DerivationOutputs in one read transaction.
    pub(crate) fn load_graph(&self) -> Result<Graph> {
        self.db.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut g = Graph::default();
            let mut db_to_idx: HashMap<i64, u32> = HashMap::new();
            {
                let mut st = tx.prepare("select id, path, deriver from ValidPaths")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    let path: String = r.get(1)?;
                    let deriver: Option<String> = r.get(2)?;
                    let idx = u32::try_from(g.paths.len())
                        .map_err(|_| Error::Other("too many valid paths".into()))?;
                    db_to_idx.insert(id, idx);
                    g.index.insert(path.clone(), idx);
                    g.paths.push(path);
                    g.deriver.push(deriver);
                }
            }
            g.references = vec![Vec::new(); g.paths.len()];
            g.referrers = vec![Vec::new(); g.paths.len()];
            {
                let mut st = tx.prepare("select referrer, reference from Refs")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let (a, b): (i64, i64) = (r.get(0)?, r.get(1)?);
                    if let (Some(&a), Some(&b)) = (db_to_idx.get(&a), db_to_idx.get(&b))
                        && a != b
                    {
                        if let Some(v) = g.references.get_mut(a as usize) {
                            v.push(b);
                        }
                        if let Some(v) = g.referrers.get_mut(b as usize) {
                            v.push(a);
                        }
                    }
                }
            }
            {
                let mut st = tx.prepare("select drv, path from DerivationOutputs")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let (drv, path): (i64, String) = (r.get(0)?, r.get(1)?);
                    if let Some(&d) = db_to_idx.get(&drv) {
                        g.drv_outputs.entry(d).or_default().push(path.clone());
                        g.valid_derivers.entry(path).or_default().push(d);
                    }
                }
            }
            tx.finish()?;
            Ok(g)
        })
    }

    /// The store path `target` lies in (`<store>/<base>/…` → `<store>/<base>`), if any.
    pub(crate) fn to_store_path(&self, target: &str) -> Option<String> {
        let sd = self.store_dir_str();
        let rest = target.strip_prefix(sd)?.strip_prefix('/')?;
        let base = rest.split('/').next()?;
        hash_part_of(base)?;
        Some(format!("{sd}/{base}"))
    }

    /// Is `target` under the store dir?
    fn is_in_store(&self, target: &str) -> bool {
        target
            .strip_prefix(self.store_dir_str())
            .is_some_and(|r| r.starts_with('/'))
    }

    /// All roots: permanent (gcroots, profiles), runtime (/proc) and temporary.
    /// `censor` hides where runtime and temp roots come from (for untrusted clients).
    pub fn find_roots(&self, censor: bool, logger: &dyn Logger) -> Result<Roots> {
        let valid = |p: &str| self.is_valid_str(p).unwrap_or(false);
        let mut roots = RawRoots::new();
        self.find_roots_no_temp(&mut roots, censor, &valid, logger)?;
        let (temp, _fds) = temproots::read_temp_roots(&self.temproots_dir(), censor, logger)?;
        for (path, labels) in temp {
            roots.entry(path).or_default().extend(labels);
        }
        Ok(roots
            .into_iter()
            .filter_map(|(p, l)| self.parse_path(&p).ok().map(|p| (p, l)))
            .collect())
    }

    fn find_roots_no_temp(
        &self,
        roots: &mut RawRoots,
        censor: bool,
        valid: &dyn Fn(&str) -> bool,
        logger: &dyn Logger,
    ) -> Result<()> {
        self.find_roots_in(&self.gcroots_dir(), roots, valid, logger, 0)?;
        self.find_roots_in(&self.state_dir().join("profiles"), roots, valid, logger, 0)?;
        self.find_runtime_roots(roots, censor, valid);
        Ok(())
    }

    fn find_roots_in(
        &self,
        path: &Path,
        roots: &mut RawRoots,
        valid: &dyn Fn(&str) -> bool,
        logger: &dyn Logger,
        depth: usize,
    ) -> Result<()> {
        match self.find_roots_in_inner(path, roots, valid, logger, depth) {
            Err(Error::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::ENOENT) | Some(libc::ENOTDIR)
                ) =>
            {
                logger.log(
                    Verbosity::Info,
                    &format!("cannot read potential root {}", quote_path(path)),
                );
                Ok(())
            }
            other => other,
        }
    }

    fn find_roots_in_inner(
        &self,
        path: &Path,
        roots: &mut RawRoots,
        valid: &dyn Fn(&str) -> bool,
        logger: &dyn Logger,
        depth: usize,
    ) -> Result<()> {
        let found = |roots: &mut RawRoots, link: &Path, target: &str| {
            if let Some(sp) = self.to_store_path(target) {
                if valid(&sp) {
                    roots
                        .entry(sp)
                        .or_default()
                        .insert(link.to_string_lossy().into_owned());
                } else {
                    logger.log(
                        Verbosity::Info,
                        &format!(
                            "skipping invalid root from {} to {}",
                            quote_path(link),
                            quote_path(Path::new(target))
                        ),
                    );
                }
            }
        };
        let md = std::fs::symlink_metadata(path).ctx("getting status of", path)?;
        let ft = md.file_type();
        if ft.is_dir() {
            if depth > 64 {
                logger.log(
                    Verbosity::Info,
                    &format!("cannot read potential root {}", quote_path(path)),
                );
                return Ok(());
            }
            let mut names: Vec<_> = std::fs::read_dir(path)
                .ctx("reading directory", path)?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for n in names {
                self.find_roots_in(&path.join(n), roots, valid, logger, depth + 1)?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).ctx("reading symlink", path)?;
            let target_s = target.to_string_lossy();
            if self.is_in_store(&target_s) {
                found(roots, path, &target_s);
            } else {
                let dir = path.parent().unwrap_or(Path::new("/"));
                let abs = canon_path(&dir.join(&target));
                match std::fs::symlink_metadata(&abs) {
                    Err(_) => {
                        if abs_is_in_dir(path, &self.gcroots_dir().join("auto")) {
                            logger.log(
                                Verbosity::Info,
                                &format!(
                                    "removing stale link from {} to {}",
                                    quote_path(path),
                                    quote_path(&abs)
                                ),
                            );
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    Ok(md2) => {
                        if md2.file_type().is_symlink() {
                            let t2 = std::fs::read_link(&abs).ctx("reading symlink", &abs)?;
                            let t2 = t2.to_string_lossy();
                            if self.is_in_store(&t2) {
                                found(roots, &abs, &t2);
                            }
                        }
                    }
                }
            }
        } else if ft.is_file()
            && let Some(base) = path.file_name().and_then(OsStr::to_str)
            && hash_part_of(base).is_some()
        {
            let sp = format!("{}/{base}", self.store_dir_str());
            if valid(&sp) {
                roots
                    .entry(sp)
                    .or_default()
                    .insert(path.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }

    /// Store paths in use by running processes (Linux `/proc`).
    fn find_runtime_roots(&self, roots: &mut RawRoots, censor: bool, valid: &dyn Fn(&str) -> bool) {
        let mut unchecked: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut add = |target: String, from: String| {
            unchecked.entry(target).or_default().insert(from);
        };
        let proc_link = |p: String, add: &mut dyn FnMut(String, String)| {
            if let Ok(t) = std::fs::read_link(&p) {
                let t = t.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    add(t, p);
                }
            }
        };
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for ent in procs.flatten() {
                let name = ent.file_name();
                let Some(pid) = name.to_str() else { continue };
                if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                proc_link(format!("/proc/{pid}/exe"), &mut add);
                proc_link(format!("/proc/{pid}/cwd"), &mut add);
                let fd_dir = format!("/proc/{pid}/fd");
                let Ok(fds) = std::fs::read_dir(&fd_dir) else {
                    continue;
                };
                for fd in fds.flatten() {
                    let n = fd.file_name();
                    if !n.as_bytes().starts_with(b".") {
                        proc_link(format!("{fd_dir}/{}", n.to_string_lossy()), &mut add);
                    }
                }
                let maps = format!("/proc/{pid}/maps");
                if let Ok(m) = std::fs::read(&maps) {
                    for line in m.split(|&b| b == b'\n') {
                        let fields: Vec<&[u8]> = line
                            .split(|b| b.is_ascii_whitespace())
                            .filter(|f| !f.is_empty())
                            .collect();
                        if let [_, _, _, _, _, p] = fields.as_slice()
                            && p.starts_with(b"/")
                        {
                            add(String::from_utf8_lossy(p).into_owned(), maps.clone());
                        }
                    }
                }
                let env = format!("/proc/{pid}/environ");
                if let Ok(e) = std::fs::read(&env) {
                    for m in find_store_path_mentions(&e, self.store_dir_str().as_bytes()) {
                        add(m, env.clone());
                    }
                }
            }
        }
        for f in [
            "/proc/sys/kernel/modprobe",
            "/proc/sys/kernel/fbsplash",
            "/proc/sys/kernel/poweroff_cmd",
        ] {
            if let Ok(s) = std::fs::read_to_string(f) {
                add(s.trim_end_matches('\n').to_owned(), f.to_owned());
            }
        }
        for (target, links) in unchecked {
            let Some(sp) = self.to_store_path(&target) else {
                continue;
            };
            if !valid(&sp) {
                continue;
            }
            let e = roots.entry(sp).or_default();
            if censor {
                e.insert(CENSORED.to_owned());
            } else {
                e.extend(links);
            }
        }
    }

    /// `gcroots/auto/<nix32(sha1(link))>` → `link`: makes the user's symlink `link`
    /// (e.g. `./result`) a root for as long as it exists.
    pub fn add_indirect_root(&self, link: &Path) -> Result<PathBuf> {
        let link = canon_path(link);
        let name = indirect_root_name(&link);
        let real = self.gcroots_dir().join("auto").join(name);
        make_symlink(&real, &link)?;
        Ok(real)
    }

    /// Points `gc_root` (outside the store) at `store_path` and registers it as an
    /// indirect root (CppNix's `addPermRoot`). Refuses to clobber something that is not
    /// a symlink into the store.
    pub fn add_perm_root(
        &self,
        store_path: &StorePath,
        gc_root: &Path,
        temp_roots: &temproots::TempRoots,
    ) -> Result<PathBuf> {
        let store_path = &self.print(store_path);
        let gc_root = canon_path(gc_root);
        let gs = gc_root.to_string_lossy();
        if self.is_in_store(&gs) {
            return Err(Error::Other(format!(
                "creating a garbage collector root ({gs}) in the Nix store is forbidden (are you running nix-build inside the store?)"
            )));
        }
        temp_roots.add(store_path)?;
        if let Ok(md) = std::fs::symlink_metadata(&gc_root) {
            let points_into_store = md.file_type().is_symlink()
                && std::fs::read_link(&gc_root)
                    .map(|t| self.is_in_store(&t.to_string_lossy()))
                    .unwrap_or(false);
            if !points_into_store {
                return Err(Error::Other(format!(
                    "cannot create symlink {}; already exists",
                    quote_path(&gc_root)
                )));
            }
        }
        make_symlink(&gc_root, Path::new(store_path))?;
        self.add_indirect_root(&gc_root)?;
        Ok(gc_root)
    }

    /// Runs the garbage collector.
    pub fn collect_garbage(&self, opts: &GcOptions, logger: &dyn Logger) -> Result<GcResults> {
        let should_delete = matches!(opts.action, GcAction::DeleteDead | GcAction::DeleteSpecific);
        let mut keep_outputs = opts.keep_outputs;
        let mut keep_derivations = opts.keep_derivations;
        if opts.action == GcAction::DeleteSpecific && opts.ignore_liveness {
            keep_outputs = false;
            keep_derivations = false;
        }
        if should_delete {
            let _ = std::fs::remove_file(self.reserved_path());
        }

        let gc_lock_path = self.gc_lock_path();
        let gc_lock = lock::open_lock_file(&gc_lock_path, true)?
            .ok_or_else(|| Error::Other("cannot open gc.lock".into()))?;
        lock::lock_file_or_wait(gc_lock.as_fd(), LockType::Write, || {
            logger.log(
                Verbosity::Error,
                "waiting for the big garbage collector lock...",
            )
        })?;

        let shared = Arc::new(SharedState::default());
        let _server = RootsServer::start(
            &self.gc_socket_path(),
            self.real_store_dir().to_owned(),
            shared.clone(),
        )?;

        logger.log(Verbosity::Info, "finding garbage collector roots...");
        let graph = self.load_graph()?;
        let valid = |p: &str| graph.index.contains_key(p);
        let mut root_map = RawRoots::new();
        if !opts.ignore_liveness {
            self.find_roots_no_temp(&mut root_map, true, &valid, logger)?;
        }
        let mut roots: HashSet<String> = root_map.into_keys().collect();
        roots.extend(opts.extra_roots.iter().map(|p| self.print(p)));
        // Keep the files open (and so their owners' locks meaningful) during the run.
        let (temp, _temp_fds) = temproots::read_temp_roots(&self.temproots_dir(), true, logger)?;
        {
            let mut st = shared.lock();
            for p in temp.keys() {
                if let Some(h) = p.rsplit('/').next().and_then(hash_part_of) {
                    st.temp_roots.insert(h.to_owned());
                }
            }
            for p in &opts.extra_roots {
                st.temp_roots.insert(p.hash_part());
            }
        }
        roots.extend(temp.into_keys());

        let mut gc = Gc {
            store: self,
            graph: &graph,
            opts,
            keep_outputs,
            keep_derivations,
            should_delete,
            roots: &roots,
            shared: &shared,
            logger,
            alive: HashSet::new(),
            dead: HashSet::new(),
            alive_invalid: BTreeSet::new(),
            dead_invalid: BTreeSet::new(),
            results: GcResults::default(),
            store_fd: fsutil::open_dir(self.real_store_dir())?,
            to_delete: opts.paths_to_delete.iter().map(|p| self.print(p)).collect(),
        };

        if opts.action == GcAction::DeleteSpecific {
            for sp in &opts.paths_to_delete {
                let base = sp.to_base_name();
                let p = &self.print(sp);
                let _ = gc.visit(&base)?;
                let is_dead = match graph.id(p) {
                    Some(id) => gc.dead.contains(&id),
                    None => gc.dead_invalid.contains(&base),
                };
                if !is_dead {
                    return Err(Error::StillAlive(p.to_owned()));
                }
            }
        } else if opts.max_freed > 0 {
            logger.log(
                Verbosity::Info,
                if should_delete {
                    "deleting garbage..."
                } else {
                    "determining live/dead paths..."
                },
            );
            let names = fsutil::read_dir_names(gc.store_fd.as_fd())
                .ctx("opening directory", self.real_store_dir())?;
            for name in names {
                let Ok(name) = name.into_string() else {
                    // Not UTF-8: cannot be a store path.
                    continue;
                };
                if name == ".links" {
                    continue;
                }
                let r = if hash_part_of(&name).is_some() {
                    gc.visit(&name)?
                } else {
                    gc.delete_entry(&name)?
                };
                if r == Flow::LimitReached {
                    break;
                }
            }
        }

        let sd = self.store_dir_str();
        match opts.action {
            GcAction::ReturnLive => {
                let mut res = GcResults::default();
                res.paths
                    .extend(gc.alive.iter().map(|&i| graph.path(i).to_owned()));
                res.paths
                    .extend(gc.alive_invalid.iter().map(|b| format!("{sd}/{b}")));
                return Ok(res);
            }
            GcAction::ReturnDead => {
                let mut res = GcResults::default();
                res.paths
                    .extend(gc.dead.iter().map(|&i| graph.path(i).to_owned()));
                res.paths
                    .extend(gc.dead_invalid.iter().map(|b| format!("{sd}/{b}")));
                return Ok(res);
            }
            _ => {}
        }
        let results = std::mem::take(&mut gc.results);
        drop(gc);
        self.remove_unused_links(logger)?;
        Ok(results)
    }

    /// Deletes `.links` entries nothing links to any more, and reports the savings.
    fn remove_unused_links(&self, logger: &dyn Logger) -> Result<()> {
        logger.log(Verbosity::Info, "deleting unused links...");
        let links = self.links_dir();
        let dir = fsutil::open_dir(&links)?;
        let (mut actual, mut unshared): (i64, i64) = (0, 0);
        for name in fsutil::read_dir_names(dir.as_fd()).ctx("opening directory", &links)? {
            let st = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(Error::io_at("getting status of", &links, e.into())),
            };
            if st.st_nlink != 1 {
                actual += st.st_size;
                unshared += (st.st_nlink as i64 - 1) * st.st_size;
                continue;
            }
            logger.log(
                Verbosity::Talkative,
                &format!(
                    "deleting unused link {}",
                    quote_path(&links.join(OsStr::from_bytes(name.to_bytes())))
                ),
            );
            match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(Error::io_at("deleting", &links, e.into())),
            }
        }
        let st = rustix::fs::fstat(&dir).ctx("statting", &links)?;
        let overhead = st.st_blocks as i64 * 512;
        logger.log(
            Verbosity::Info,
            &format!(
                "note: hard linking is currently saving {}",
                render_size(unshared - actual - overhead)
            ),
        );
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    LimitReached,
}

/// One GC run's state.
struct Gc<'a> {
    store: &'a LocalStore,
    graph: &'a Graph,
    opts: &'a GcOptions,
    keep_outputs: bool,
    keep_derivations: bool,
    should_delete: bool,
    roots: &'a HashSet<String>,
    shared: &'a SharedState,
    logger: &'a dyn Logger,
    alive: HashSet<u32>,
    dead: HashSet<u32>,
    alive_invalid: BTreeSet<String>,
    dead_invalid: BTreeSet<String>,
    results: GcResults,
    store_fd: std::os::fd::OwnedFd,
    /// `opts.paths_to_delete`, printed.
    to_delete: HashSet<String>,
}

impl Gc<'_> {
    fn is_temp_root(&self, base: &str) -> bool {
        hash_part_of(base).is_some_and(|h| self.shared.lock().temp_roots.contains(h))
    }

    fn base_of(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    /// Marks `id`'s closure (with outputs/derivers per settings) alive.
    fn mark_alive(&mut self, id: u32) {
        let mut todo = vec![id];
        while let Some(p) = todo.pop() {
            if !self.alive.insert(p) {
                continue;
            }
            todo.extend_from_slice(self.graph.references_of(p));
            if self.keep_outputs && self.graph.is_drv(p) {
                todo.extend(self.graph.valid_outputs(p));
            }
            if self.keep_derivations
                && let Some(d) = self.graph.deriver_of(p).and_then(|d| self.graph.id(d))
            {
                todo.push(d);
            }
        }
    }

    /// CppNix's `deleteReferrersClosure(start)` for the store entry `base`.
    fn visit(&mut self, base: &str) -> Result<Flow> {
        let full = format!("{}/{base}", self.store.store_dir_str());
        let Some(start) = self.graph.id(&full) else {
            return self.visit_invalid(base, &full);
        };
        if self.dead.contains(&start) {
            return Ok(Flow::Continue);
        }
        let mut visited: Vec<u32> = Vec::new();
        let mut seen: HashSet<u32> = HashSet::new();
        let mut todo: VecDeque<u32> = VecDeque::new();
        seen.insert(start);
        todo.push_back(start);
        while let Some(p) = todo.pop_front() {
            if self.alive.contains(&p) {
                self.alive.insert(start);
                return Ok(Flow::Continue);
            }
            if self.dead.contains(&p) {
                continue;
            }
            let path = self.graph.path(p);
            if self.roots.contains(path) {
                tracing::debug!("cannot delete '{path}' because it's a root");
                self.alive.insert(start);
                self.mark_alive(p);
                return Ok(Flow::Continue);
            }
            if self.opts.action == GcAction::DeleteSpecific && !self.to_delete.contains(path) {
                return Ok(Flow::Continue);
            }
            if self.is_temp_root(Self::base_of(path)) {
                tracing::debug!("cannot delete '{path}' because it's a temporary root");
                self.alive.insert(start);
                self.mark_alive(p);
                return Ok(Flow::Continue);
            }
            visited.push(p);
            let mut enqueue = |q: u32, todo: &mut VecDeque<u32>| {
                if seen.insert(q) {
                    todo.push_back(q);
                }
            };
            for &r in self.graph.referrers_of(p) {
                enqueue(r, &mut todo);
            }
            if self.keep_derivations && self.graph.is_drv(p) {
                let outs: Vec<u32> = self
                    .graph
                    .valid_outputs(p)
                    .filter(|&o| self.graph.deriver_of(o) == Some(self.graph.path(p)))
                    .collect();
                for o in outs {
                    enqueue(o, &mut todo);
                }
            }
            if self.keep_outputs
                && let Some(ds) = self.graph.valid_derivers.get(path)
            {
                for &d in ds {
                    enqueue(d, &mut todo);
                }
            }
        }

        // Everything visited is garbage: delete referrers before their references.
        for p in topo_sort(self.graph, &visited) {
            if !self.dead.insert(p) {
                continue;
            }
            if self.should_delete && self.delete_valid(p)? == Flow::LimitReached {
                return Ok(Flow::LimitReached);
            }
        }
        Ok(Flow::Continue)
    }

    fn visit_invalid(&mut self, base: &str, full: &str) -> Result<Flow> {
        if self.dead_invalid.contains(base) {
            return Ok(Flow::Continue);
        }
        if self.roots.contains(full) || self.is_temp_root(base) {
            self.alive_invalid.insert(base.to_owned());
            return Ok(Flow::Continue);
        }
        if self.opts.action == GcAction::DeleteSpecific && !self.to_delete.contains(full) {
            return Ok(Flow::Continue);
        }
        self.dead_invalid.insert(base.to_owned());
        if self.should_delete {
            return self.delete_guarded(base);
        }
        Ok(Flow::Continue)
    }

    /// Invalidates and deletes a valid dead path, unless it became a temp root or got a
    /// new referrer since the graph was loaded (then it is alive after all).
    fn delete_valid(&mut self, id: u32) -> Result<Flow> {
        let path = self.graph.path(id).to_owned();
        let base = Self::base_of(&path).to_owned();
        if !self.claim(&base) {
            self.dead.remove(&id);
            self.mark_alive(id);
            return Ok(Flow::Continue);
        }
        let r = (|| {
            if !self.store.invalidate_if_unreferenced(&path)? {
                self.dead.remove(&id);
                self.mark_alive(id);
                return Ok(Flow::Continue);
            }
            self.delete_from_disk(&base)
        })();
        self.shared.set_pending(None);
        r
    }

    /// Deletes a non-valid entry (junk or invalid store path) under the pending protocol.
    fn delete_guarded(&mut self, base: &str) -> Result<Flow> {
        if hash_part_of(base).is_some() && !self.claim(base) {
            self.dead_invalid.remove(base);
            self.alive_invalid.insert(base.to_owned());
            return Ok(Flow::Continue);
        }
        let r = self.delete_from_disk(base);
        self.shared.set_pending(None);
        r
    }

    /// Publishes `base`'s hash part as pending unless it is (now) a temp root.
    fn claim(&self, base: &str) -> bool {
        let Some(h) = hash_part_of(base) else {
            return true;
        };
        let mut st = self.shared.lock();
        if st.temp_roots.contains(h) {
            return false;
        }
        st.pending = Some(h.to_owned());
        true
    }

    fn delete_entry(&mut self, name: &str) -> Result<Flow> {
        self.delete_from_disk(name)
    }

    fn delete_from_disk(&mut self, base: &str) -> Result<Flow> {
        let full = format!("{}/{base}", self.store.store_dir_str());
        self.logger
            .log(Verbosity::Info, &format!("deleting '{full}'"));
        self.results.paths.insert(full.clone());
        let name = fsutil::component(OsStr::new(base))?;
        let freed = fsutil::delete_at(self.store_fd.as_fd(), &name, Path::new(&full))?;
        self.results.bytes_freed += freed;
        if self.results.bytes_freed > self.opts.max_freed {
            self.logger.log(
                Verbosity::Info,
                &format!("deleted more than {} bytes; stopping", self.opts.max_freed),
            );
            return Ok(Flow::LimitReached);
        }
        Ok(Flow::Continue)
    }
}

/// Orders `set` so that every path comes before the paths it references (referrers
/// first), considering only edges inside the set.
fn topo_sort(g: &Graph, set: &[u32]) -> Vec<u32> {
    let members: HashSet<u32> = set.iter().copied().collect();
    let mut visited: HashSet<u32> = HashSet::new();
    let mut out: Vec<u32> = Vec::with_capacity(set.len());
    for &s in set {
        if visited.contains(&s) {
            continue;
        }
        // Iterative post-order DFS over references.
        let mut stack: Vec<(u32, usize)> = vec![(s, 0)];
        visited.insert(s);
        while let Some(&mut (n, ref mut i)) = stack.last_mut() {
            let refs = g.references_of(n);
            if let Some(&r) = refs.get(*i) {
                *i += 1;
                if members.contains(&r) && visited.insert(r) {
                    stack.push((r, 0));
                }
            } else {
                out.push(n);
                stack.pop();
            }
        }
    }
    out.reverse();
    out
}

/// `nix32(sha1(<absolute link path>))`, the name of an indirect root in `gcroots/auto`.
pub fn indirect_root_name(link: &Path) -> String {
    nixnest_core::Hash::compute(nixnest_core::HashAlgo::Sha1, link.as_os_str().as_bytes())
        .to_nix32()
}

/// Lexically normalises an absolute path (`.`/`..`/double slashes), like CppNix's
/// `canonPath` without resolving symlinks.
pub fn canon_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

fn abs_is_in_dir(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) && path != dir
}

/// Atomically (re)points `link` at `target` via a temporary link and `rename`.
fn make_symlink(link: &Path, target: &Path) -> Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).ctx("creating directory", dir)?;
    }
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::db::cheap_random() % 1_000_000_000
    ));
    let tmp = PathBuf::from(tmp);
    std::os::unix::fs::symlink(target, &tmp).ctx("creating symlink", &tmp)?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("cannot rename '{}' to '{}'", tmp.display(), link.display()),
            e,
        )
    })
}

/// Finds `<store>/[0-9a-z]+[0-9a-zA-Z+\-._?=]*` matches in `hay` (CppNix's environ scan).
fn find_store_path_mentions(hay: &[u8], store_dir: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + store_dir.len() < hay.len() {
        if hay.get(i..i + store_dir.len()) == Some(store_dir)
            && hay.get(i + store_dir.len()) == Some(&b'/')
        {
            let start = i + store_dir.len() + 1;
            let mut j = start;
            while hay
                .get(j)
                .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            {
                j += 1;
            }
            if j > start {
                while hay.get(j).is_some_and(|&c| crate::paths::is_name_char(c)) {
                    j += 1;
                }
                if let Some(m) = hay.get(i..j) {
                    out.push(String::from_utf8_lossy(m).into_owned());
                }
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indirect_root_name_matches_cppnix() {
        // Checked against real `nix-store --add-root /tmp/x/result --indirect` (2.8); the
        // spec's Appendix B value for this input is wrong.
        assert_eq!(
            indirect_root_name(Path::new("/tmp/x/result")),
            "wf8j2y27a849c8408iw83avz1qa27anc"
        );
    }

    #[test]
    fn canon_path_is_lexical() {
        assert_eq!(
            canon_path(Path::new("/a/./b/../c//d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(canon_path(Path::new("/..")), PathBuf::from("/"));
    }

    #[test]
    fn environ_scan() {
        let env = b"PATH=/nix/store/abc-foo/bin:/nix/store/q9-x.y\0X=/nix/store/\0Y=/nix/storeZ";
        assert_eq!(
            find_store_path_mentions(env, b"/nix/store"),
            vec!["/nix/store/abc-foo", "/nix/store/q9-x.y"]
        );
    }

    #[test]
    fn topo_sort_puts_referrers_first() {
        // 0 -> 1 -> 2, 0 -> 2
        let g = Graph {
            paths: vec!["a".into(), "b".into(), "c".into()],
            references: vec![vec![1, 2], vec![2], vec![]],
            ..Graph::default()
        };
        let order = topo_sort(&g, &[2, 1, 0]);
        let pos = |x: u32| order.iter().position(|&y| y == x).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(2));
    }
}
