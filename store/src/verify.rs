//! `nix-store --verify [--check-contents] [--repair]` (CppNix's `verifyStore`):
//!
//! 1. under `gc.lock` (shared), list the store dir;
//! 2. every valid path missing on disk is removed from the db ("path '…' disappeared,
//!    removing from database...") unless a valid path still refers to it ("path '…'
//!    disappeared, but it still has valid referrers!" — an error);
//! 3. with `check_contents`: every `.links` entry must hash to its name (repair: delete it),
//!    and every valid path's NAR must hash to the recorded `narHash` ("path '…' was
//!    modified! expected hash '…', got '…'"); a missing `narSize` is filled in.
//!
//! Repairing a modified or vanished path needs a substituter, which the store doesn't
//! have: as CppNix without substituters, each such path gets "cannot repair path '…'"
//! (an `error:` for a modified path, a `warning:` for a vanished one that still has valid
//! referrers) and makes the result an error. CppNix would then rebuild a modified path
//! that has a valid deriver; nixnest's store cannot build, so it reports that path as
//! unrepairable too.
//!
//! Wording is CppNix 2.34's (see [`crate::logger`]): `.links` entries are double-quoted
//! paths, store paths single-quoted.

use std::collections::{BTreeSet, HashSet};
use std::os::fd::AsFd;
use std::path::Path;

use nixnest_core::{Hash, HashAlgo, StorePath};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::lock::{self, LockType};
use crate::logger::{Logger, Verbosity, quote_path};
use crate::store::LocalStore;

/// What `verify_store` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyResult {
    /// Problems remain (CppNix's return value; `nix-store --verify` then exits 1).
    pub errors: bool,
    /// Paths that were missing on disk and were removed from the db.
    pub invalidated: BTreeSet<StorePath>,
    /// Paths whose contents no longer match their NAR hash.
    pub modified: BTreeSet<StorePath>,
}

impl LocalStore {
    /// Checks the store; see the module docs.
    pub fn verify_store(
        &self,
        check_contents: bool,
        repair: bool,
        logger: &dyn Logger,
    ) -> Result<VerifyResult> {
        let mut res = VerifyResult::default();
        logger.log(Verbosity::Info, "reading the Nix store...");
        let gc_lock = lock::open_lock_file(&self.gc_lock_path(), true)?
            .ok_or_else(|| Error::Other("cannot open gc.lock".into()))?;
        lock::lock_file_or_wait(gc_lock.as_fd(), LockType::Read, || {
            logger.log(
                Verbosity::Error,
                "waiting for the big garbage collector lock...",
            )
        })?;
        let dir = fsutil::open_dir(self.real_store_dir())?;
        let on_disk: HashSet<String> = fsutil::read_dir_names(dir.as_fd())
            .ctx("reading directory", self.real_store_dir())?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect();

        logger.log(Verbosity::Info, "checking path existence...");
        let all = self.query_all_valid_paths()?;
        let mut done: HashSet<StorePath> = HashSet::new();
        let mut existing: BTreeSet<StorePath> = BTreeSet::new();
        for p in &all {
            self.verify_path(
                p,
                &on_disk,
                &mut done,
                &mut existing,
                repair,
                &mut res,
                logger,
            )?;
        }

        if check_contents {
            logger.log(Verbosity::Info, "checking link hashes...");
            let links = self.links_dir();
            let ldir = fsutil::open_dir(&links)?;
            for name in fsutil::read_dir_names(ldir.as_fd()).ctx("reading", &links)? {
                let Ok(name) = name.into_string() else {
                    continue;
                };
                let p = links.join(&name);
                logger.log(
                    Verbosity::Talkative,
                    &format!("checking contents of {}", quote_path(Path::new(&name))),
                );
                let hs = nixnest_core::nar::nar_hash_and_size(&p)?;
                let got = nixnest_core::nixbase32::encode(&hs.sha256);
                if got != name {
                    // 2.34 quotes neither the path's way nor consistently: the link is a
                    // quoted path, the expected hash bare, the actual one in '…'.
                    logger.log(
                        Verbosity::Error,
                        &format!(
                            "link {} was modified! expected hash {name}, got '{got}'",
                            quote_path(&p)
                        ),
                    );
                    if repair {
                        std::fs::remove_file(&p).ctx("removing corrupt link", &p)?;
                        logger.log(Verbosity::Info, &format!("removed link {}", quote_path(&p)));
                    } else {
                        res.errors = true;
                    }
                }
            }

            logger.log(Verbosity::Info, "checking store hashes...");
            for p in &existing {
                let Some(mut info) = self.query_path_info(p)? else {
                    continue; // collected meanwhile
                };
                logger.log(
                    Verbosity::Talkative,
                    &format!("checking contents of '{}'", self.print(p)),
                );
                let real = self.real_store_dir().join(p.to_base_name());
                let hs = match nixnest_core::nar::nar_hash_and_size(&real) {
                    Ok(hs) => hs,
                    Err(e) => {
                        // The path may have been collected meanwhile: then only a warning.
                        if self.is_valid_path(p)? {
                            logger.log(Verbosity::Error, &format!("error: {e}"));
                        } else {
                            logger.log(Verbosity::Warn, &format!("warning: {e}"));
                        }
                        res.errors = true;
                        continue;
                    }
                };
                let current = Hash::new(HashAlgo::Sha256, &hs.sha256)?;
                if current != info.nar_hash {
                    logger.log(
                        Verbosity::Error,
                        &format!(
                            "path '{}' was modified! expected hash '{}', got '{}'",
                            self.print(p),
                            info.nar_hash.to_typed_nix32(),
                            current.to_typed_nix32()
                        ),
                    );
                    res.modified.insert(p.clone());
                    if repair {
                        self.cannot_repair(p, Verbosity::Error, logger);
                    }
                    res.errors = true;
                } else if info.nar_size == 0 {
                    logger.log(
                        Verbosity::Info,
                        &format!("updating size field on '{}' to {}", self.print(p), hs.size),
                    );
                    info.nar_size = hs.size;
                    self.update_nar_size(p, hs.size)?;
                }
            }
        }
        Ok(res)
    }

    /// What CppNix's `repairPath` reports when no substituter has the path (and, here,
    /// whether or not it has a deriver: see the module docs).
    fn cannot_repair(&self, p: &StorePath, level: Verbosity, logger: &dyn Logger) {
        let prefix = if level == Verbosity::Error {
            "error"
        } else {
            "warning"
        };
        logger.log(
            level,
            &format!("{prefix}: cannot repair path '{}'", self.print(p)),
        );
    }

    fn update_nar_size(&self, p: &StorePath, size: u64) -> Result<()> {
        let printed = self.print(p);
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.db.write(|c| {
            c.prepare_cached("update ValidPaths set narSize = ? where path = ?")?
                .execute(rusqlite::params![size, printed])?;
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_path(
        &self,
        p: &StorePath,
        on_disk: &HashSet<String>,
        done: &mut HashSet<StorePath>,
        existing: &mut BTreeSet<StorePath>,
        repair: bool,
        res: &mut VerifyResult,
        logger: &dyn Logger,
    ) -> Result<()> {
        if !done.insert(p.clone()) {
            return Ok(());
        }
        if on_disk.contains(&p.to_base_name()) {
            existing.insert(p.clone());
            return Ok(());
        }
        // Missing: referrers first; if none of them stays valid, drop this one too.
        let mut can_invalidate = true;
        for r in self.query_referrers(p)? {
            if &r != p {
                self.verify_path(&r, on_disk, done, existing, repair, res, logger)?;
                if existing.contains(&r) {
                    can_invalidate = false;
                }
            }
        }
        let printed = self.print(p);
        if can_invalidate {
            logger.log(
                Verbosity::Info,
                &format!("path '{printed}' disappeared, removing from database..."),
            );
            if self.invalidate_if_unreferenced(&printed)? {
                res.invalidated.insert(p.clone());
            }
        } else {
            logger.log(
                Verbosity::Error,
                &format!("path '{printed}' disappeared, but it still has valid referrers!"),
            );
            if repair {
                self.cannot_repair(p, Verbosity::Warn, logger);
            }
            res.errors = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::ingest_tests::{dir_nar, info_for};
    use crate::logger::{CollectingLogger, NullLogger};
    use crate::testutil::*;

    #[test]
    fn finds_modified_and_missing_paths() {
        let (_d, s) = new_store_with(|c| c.require_sigs = false);
        let tr = s.temp_roots_session();
        let mut infos = Vec::new();
        for t in ["a", "b", "c"] {
            let nar = dir_nar(t);
            let mut i = info_for(&s, t, &nar);
            if t == "c" {
                i.references = BTreeSet::from([infos
                    .iter()
                    .map(|x: &nixnest_core::ValidPathInfo| x.path.clone())
                    .next()
                    .unwrap()]);
            }
            s.add_to_store_nar(&i, &mut &nar[..], false, false, &tr, &NullLogger)
                .unwrap();
            infos.push(i);
        }
        let log = CollectingLogger::default();
        let r = s.verify_store(true, false, &log).unwrap();
        assert!(!r.errors, "{:?}", log.lines());
        // Modify b's contents.
        let real_b = s.real_store_dir().join(infos[1].path.to_base_name());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(real_b.join("data"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(&real_b, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(real_b.join("data"), b"tampered").unwrap();
        // Remove c (no referrers) and a (referenced by c, which is also gone).
        for i in [0, 2] {
            crate::fsutil::delete_path(&s.real_store_dir().join(infos[i].path.to_base_name()))
                .unwrap();
        }
        let log = CollectingLogger::default();
        let r = s.verify_store(true, false, &log).unwrap();
        assert!(r.errors);
        assert_eq!(r.modified, BTreeSet::from([infos[1].path.clone()]));
        assert_eq!(
            r.invalidated,
            BTreeSet::from([infos[0].path.clone(), infos[2].path.clone()])
        );
        assert!(log.contains("was modified! expected hash"));
        assert!(log.contains("disappeared, removing from database..."));
        assert!(!s.is_valid_path(&infos[0].path).unwrap());

        // Repairing without a substituter: reported per path, still an error.
        let log = CollectingLogger::default();
        let r = s.verify_store(true, true, &log).unwrap();
        assert!(r.errors);
        let b = s.print(&infos[1].path);
        let lines = log.lines();
        let modified = lines
            .iter()
            .position(|(_, l)| l.starts_with(&format!("path '{b}' was modified!")))
            .expect("modified line");
        assert_eq!(
            lines.get(modified + 1),
            Some(&(
                crate::logger::Verbosity::Error,
                format!("error: cannot repair path '{b}'")
            ))
        );
    }
}
