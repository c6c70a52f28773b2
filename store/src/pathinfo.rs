//! Typed queries and registration on top of the db rows: `ValidPathInfo` in, rows out
//! (and back), in exactly the formats CppNix writes (§2.6 of the spec):
//!
//! | column | written as |
//! |---|---|
//! | `hash` | `sha256:<base16>` (any prefixed form is read) |
//! | `registrationTime` | the given value, or now when 0 |
//! | `deriver`, `sigs`, `ca` | text or NULL, never `""` |
//! | `narSize` | NULL when 0 |
//! | `ultimate` | 1 or NULL |
//!
//! Derivations (`.drv`) also get one `DerivationOutputs` row per output whose path is known
//! statically; their output paths are checked against the derivation first.

use std::collections::{BTreeMap, BTreeSet};

use nixnest_core::{ContentAddress, Hash, HashAlgo, StorePath, ValidPathInfo};
use rusqlite::OptionalExtension;

use crate::drv;
use crate::error::{Error, Result};
use crate::queries::PathRow;
use crate::store::LocalStore;

impl LocalStore {
    /// The printed form of `path`.
    pub fn print(&self, path: &StorePath) -> String {
        self.store_dir().print(path)
    }

    /// Parses a printed store path of this store.
    pub fn parse_path(&self, path: &str) -> Result<StorePath> {
        Ok(self.store_dir().parse_path(path)?)
    }

    /// Is `path` valid (registered)?
    pub fn is_valid_path(&self, path: &StorePath) -> Result<bool> {
        self.is_valid_str(&self.print(path))
    }

    /// Everything known about `path`, or `None` if it is not valid.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
        let printed = self.print(path);
        let raw = self.db.read(|c| {
            let row = c
                .prepare_cached(
                    "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?",
                )?
                .query_row([&printed], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .optional()?;
            let Some(row) = row else { return Ok(None) };
            let refs: Vec<String> = c
                .prepare_cached(
                    "select path from Refs join ValidPaths on reference = id where referrer = ?",
                )?
                .query_map([row.0], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some((row, refs)))
        })?;
        let Some(((_, hash, time, deriver, size, ultimate, sigs, ca), refs)) = raw else {
            return Ok(None);
        };
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::Other(format!(
                "invalid {what} in the database entry of '{printed}': {e}"
            ))
        };
        let nar_hash =
            Hash::parse_any(&hash, Some(HashAlgo::Sha256)).map_err(|e| bad("hash", &e))?;
        let mut info = ValidPathInfo::new(path.clone(), nar_hash);
        info.registration_time = time.and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
        info.deriver = match deriver.as_deref() {
            None | Some("") => None,
            Some(d) => Some(self.parse_path(d).map_err(|e| bad("deriver", &e))?),
        };
        info.nar_size = size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        info.ultimate = ultimate.is_some_and(|u| u != 0);
        info.sigs = sigs
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        info.ca = match ca.as_deref() {
            None | Some("") => None,
            Some(s) => Some(ContentAddress::parse(s).map_err(|e| bad("content address", &e))?),
        };
        for r in refs {
            info.references
                .insert(self.parse_path(&r).map_err(|e| bad("reference", &e))?);
        }
        Ok(Some(info))
    }

    /// Like [`Self::query_path_info`] but an invalid path is an error ("path '…' is not
    /// valid").
    pub fn path_info(&self, path: &StorePath) -> Result<ValidPathInfo> {
        self.query_path_info(path)?
            .ok_or_else(|| Error::InvalidPath(self.print(path)))
    }

    /// The paths `path` refers to.
    pub fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(self.path_info(path)?.references)
    }

    fn strings_to_paths(&self, v: Vec<String>) -> Result<BTreeSet<StorePath>> {
        v.iter().map(|p| self.parse_path(p)).collect()
    }

    /// The valid paths that refer to `path` (including itself if self-referencing).
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let printed = self.print(path);
        let v: Vec<String> = self.db.read(|c| {
            Ok(c.prepare_cached(
                "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)",
            )?
            .query_map([&printed], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
        })?;
        self.strings_to_paths(v)
    }

    /// Valid derivations that list `path` as one of their outputs (`DerivationOutputs`).
    pub fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let printed = self.print(path);
        let v: Vec<String> = self.db.read(|c| {
            Ok(c.prepare_cached(
                "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
            )?
            .query_map([&printed], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
        })?;
        self.strings_to_paths(v)
    }

    /// Output name → statically known output path of a valid derivation (CppNix's
    /// `queryPartialDerivationOutputMap` without CA derivations).
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        let printed = self.print(drv);
        let v: Option<Vec<(String, String)>> = self.db.read(|c| {
            let id: Option<i64> = c
                .prepare_cached("select id from ValidPaths where path = ?")?
                .query_row([&printed], |r| r.get(0))
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            Ok(Some(
                c.prepare_cached("select id, path from DerivationOutputs where drv = ?")?
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?,
            ))
        })?;
        let v = v.ok_or_else(|| Error::InvalidPath(printed))?;
        v.into_iter()
            .map(|(n, p)| Ok((n, self.parse_path(&p)?)))
            .collect()
    }

    /// The valid path whose hash part is `hash_part`, if any.
    pub fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        if hash_part.len() != nixnest_core::store_path::HASH_PART_LEN
            || !hash_part
                .bytes()
                .all(nixnest_core::nixbase32::is_nix32_char)
        {
            return Ok(None);
        }
        let prefix = format!("{}/{hash_part}", self.store_dir_str());
        let found: Option<String> = self.db.read(|c| {
            Ok(
                c.prepare_cached("select path from ValidPaths where path >= ? limit 1")?
                    .query_row([&prefix], |r| r.get(0))
                    .optional()?,
            )
        })?;
        match found {
            Some(p) if p.starts_with(&prefix) => Ok(Some(self.parse_path(&p)?)),
            _ => Ok(None),
        }
    }

    /// Every valid path.
    pub fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>> {
        let v: Vec<String> = self.db.read(|c| {
            Ok(c.prepare_cached("select path from ValidPaths")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?)
        })?;
        self.strings_to_paths(v)
    }

    /// The subset of `paths` that is valid.
    pub fn query_valid_paths(&self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
        let printed: Vec<(String, &StorePath)> = paths.iter().map(|p| (self.print(p), p)).collect();
        self.db.read(|c| {
            let mut st = c.prepare_cached("select 1 from ValidPaths where path = ?")?;
            let mut out = BTreeSet::new();
            for (s, p) in &printed {
                if st.query_row([s], |_| Ok(())).optional()?.is_some() {
                    out.insert((*p).clone());
                }
            }
            Ok(out)
        })
    }

    /// CppNix's `computeFSClosure`: everything reachable from `start` by references (or,
    /// with `flip`, by referrers), optionally adding outputs of derivations
    /// (`include_outputs`) and derivers (`include_derivers`). Every start path must be
    /// valid.
    pub fn compute_closure(
        &self,
        start: &BTreeSet<StorePath>,
        flip: bool,
        include_outputs: bool,
        include_derivers: bool,
    ) -> Result<BTreeSet<StorePath>> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<StorePath> = start.iter().cloned().collect();
        while let Some(p) = todo.pop() {
            if out.contains(&p) {
                continue;
            }
            let info = self.path_info(&p)?;
            let mut next: Vec<StorePath> = Vec::new();
            if flip {
                next.extend(self.query_referrers(&p)?);
                if include_outputs {
                    next.extend(self.query_valid_derivers(&p)?);
                }
                if include_derivers && p.is_derivation() {
                    for o in self.query_derivation_outputs(&p)?.into_values() {
                        if self.is_valid_path(&o)? {
                            next.push(o);
                        }
                    }
                }
            } else {
                next.extend(info.references.iter().cloned());
                if include_outputs && p.is_derivation() {
                    for o in self.query_derivation_outputs(&p)?.into_values() {
                        if self.is_valid_path(&o)? {
                            next.push(o);
                        }
                    }
                }
                if include_derivers
                    && let Some(d) = &info.deriver
                    && self.is_valid_path(d)?
                {
                    next.push(d.clone());
                }
            }
            out.insert(p);
            todo.extend(next.into_iter().filter(|n| !out.contains(n)));
        }
        Ok(out)
    }

    /// `compute_closure` of `paths` ordered so that references come before referrers
    /// (what `nix-store -qR` prints and exports need).
    pub fn topo_sort_paths(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        let rows: Vec<PathRow> = paths
            .iter()
            .map(|p| {
                Ok(PathRow {
                    path: self.print(p),
                    references: self
                        .query_references(p)?
                        .iter()
                        .map(|r| self.print(r))
                        .collect(),
                    ..PathRow::default()
                })
            })
            .collect::<Result<_>>()?;
        let order = crate::queries::topo_sort_rows(&rows)?;
        order
            .into_iter()
            .filter_map(|i| rows.get(i))
            .map(|r| self.parse_path(&r.path))
            .collect()
    }

    fn info_to_row(&self, info: &ValidPathInfo) -> Result<PathRow> {
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(Error::BadInput(format!(
                "cannot register path '{}': its NAR hash must be sha256",
                self.print(&info.path)
            )));
        }
        let mut drv_outputs = Vec::new();
        if info.path.is_derivation() {
            drv_outputs = drv::checked_outputs(self, &info.path)?;
        }
        Ok(PathRow {
            path: self.print(&info.path),
            nar_hash: info.nar_hash.to_typed_base16(),
            registration_time: i64::try_from(info.registration_time).unwrap_or(i64::MAX),
            deriver: info.deriver.as_ref().map(|d| self.print(d)),
            nar_size: info.nar_size,
            ultimate: info.ultimate,
            sigs: info.sigs.clone(),
            ca: info.ca.as_ref().map(ToString::to_string),
            references: info.references.iter().map(|r| self.print(r)).collect(),
            drv_outputs,
        })
    }

    /// Registers paths (already present on disk) in one transaction: see the module docs.
    /// A reference that is neither valid nor in `infos` fails the whole batch, as does a
    /// reference cycle or a derivation whose outputs don't match its contents.
    pub fn register_valid_paths(&self, infos: &[ValidPathInfo]) -> Result<()> {
        let rows: Vec<PathRow> = infos
            .iter()
            .map(|i| self.info_to_row(i))
            .collect::<Result<_>>()?;
        self.register_rows(&rows)
    }

    /// Adds signatures to a valid path's `sigs`.
    pub fn add_signatures(&self, path: &StorePath, sigs: &BTreeSet<String>) -> Result<()> {
        let mut info = self.path_info(path)?;
        info.sigs.extend(sigs.iter().cloned());
        let row = PathRow {
            drv_outputs: Vec::new(),
            ..self.info_to_row_no_drv(&info)
        };
        self.register_rows(&[row])
    }

    fn info_to_row_no_drv(&self, info: &ValidPathInfo) -> PathRow {
        PathRow {
            path: self.print(&info.path),
            nar_hash: info.nar_hash.to_typed_base16(),
            registration_time: i64::try_from(info.registration_time).unwrap_or(i64::MAX),
            deriver: info.deriver.as_ref().map(|d| self.print(d)),
            nar_size: info.nar_size,
            ultimate: info.ultimate,
            sigs: info.sigs.clone(),
            ca: info.ca.as_ref().map(ToString::to_string),
            references: info.references.iter().map(|r| self.print(r)).collect(),
            drv_outputs: Vec::new(),
        }
    }

    /// Removes a path from the db (not from disk). Fails if other valid paths refer to it.
    pub fn invalidate_path(&self, path: &StorePath) -> Result<()> {
        let printed = self.print(path);
        if !self.invalidate_if_unreferenced(&printed)? {
            let referrers: Vec<String> = self
                .query_referrers(path)?
                .iter()
                .filter(|r| *r != path)
                .map(|r| format!("'{}'", self.print(r)))
                .collect();
            return Err(Error::InUse {
                path: printed,
                referrers: referrers.join(", "),
            });
        }
        Ok(())
    }
}
