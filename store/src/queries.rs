#![cfg_attr(not(test), allow(dead_code))] // registration API lands with the core types
//! Queries and updates of the path registry (`ValidPaths`, `Refs`, `DerivationOutputs`).
//!
//! SQL follows CppNix's prepared statements; lookups by hash part use
//! `path >= '<store>/<hash>'` with `limit 1` and a prefix check, which uses the unique
//! index on `path` instead of a table scan.

use rusqlite::OptionalExtension;

use crate::error::Result;
use crate::store::LocalStore;

impl LocalStore {
    /// Is `path` (a full printed store path) registered as valid?
    pub(crate) fn is_valid_str(&self, path: &str) -> Result<bool> {
        self.db.read(|c| {
            Ok(c.prepare_cached("select 1 from ValidPaths where path = ?")?
                .query_row([path], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// Removes `path` from the db unless another valid path refers to it. Returns false
    /// (and changes nothing) if a referrer exists; true if it is gone (or never was).
    pub(crate) fn invalidate_if_unreferenced(&self, path: &str) -> Result<bool> {
        self.db.write(|c| {
            let id: Option<i64> = c
                .prepare_cached("select id from ValidPaths where path = ?")?
                .query_row([path], |r| r.get(0))
                .optional()?;
            let Some(id) = id else { return Ok(true) };
            let referrers: i64 = c
                .prepare_cached(
                    "select count(*) from Refs where reference = ? and referrer != reference",
                )?
                .query_row([id], |r| r.get(0))?;
            if referrers > 0 {
                return Ok(false);
            }
            c.prepare_cached("delete from ValidPaths where id = ?")?
                .execute([id])?;
            Ok(true)
        })
    }
}

/// One `ValidPaths` row plus its `Refs` and `DerivationOutputs`, in db form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PathRow {
    /// Full printed path.
    pub path: String,
    /// `sha256:<base16>`.
    pub nar_hash: String,
    /// Unix seconds; 0 means "now".
    pub registration_time: i64,
    pub deriver: Option<String>,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: std::collections::BTreeSet<String>,
    pub ca: Option<String>,
    /// Full printed paths (may include `path` itself).
    pub references: std::collections::BTreeSet<String>,
    /// For `.drv` paths: (output name, output path) with statically known paths.
    pub drv_outputs: Vec<(String, String)>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Orders `rows` so references come first; a cycle (other than a self reference) is an
/// error naming the path and the referrer it was reached from.
pub(crate) fn topo_sort_rows(rows: &[PathRow]) -> Result<Vec<usize>> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.path.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; rows.len()];
    let mut out = Vec::with_capacity(rows.len());
    for start in 0..rows.len() {
        if state.get(start) != Some(&0) {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
        let refs_of = |i: usize| -> Vec<usize> {
            rows.get(i)
                .map(|r| {
                    r.references
                        .iter()
                        .filter(|p| **p != r.path)
                        .filter_map(|p| index.get(p.as_str()).copied())
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(s) = state.get_mut(start) {
            *s = 1;
        }
        stack.push((start, refs_of(start)));
        while let Some((n, pending)) = stack.last_mut() {
            let n = *n;
            if let Some(r) = pending.pop() {
                match state.get(r) {
                    Some(0) => {
                        if let Some(s) = state.get_mut(r) {
                            *s = 1;
                        }
                        stack.push((r, refs_of(r)));
                    }
                    Some(1) => {
                        let path = rows.get(r).map(|x| x.path.clone()).unwrap_or_default();
                        let from = rows.get(n).map(|x| x.path.clone()).unwrap_or_default();
                        return Err(crate::Error::Cycle { path, from });
                    }
                    _ => {}
                }
            } else {
                if let Some(s) = state.get_mut(n) {
                    *s = 2;
                }
                out.push(n);
                stack.pop();
            }
        }
    }
    Ok(out)
}

impl LocalStore {
    /// Registers a batch of paths in one transaction (CppNix's `registerValidPaths`):
    /// rows inserted (or, for already valid paths, `narSize, hash, ultimate, sigs, ca`
    /// updated), `DerivationOutputs` rows for derivations, then the references — each
    /// must be valid already or part of the batch, else the whole batch fails — and a
    /// cycle check. NULL conventions: deriver, narSize (0), ultimate (false), sigs (none)
    /// and ca (none) are stored as NULL.
    pub(crate) fn register_rows(&self, rows: &[PathRow]) -> Result<()> {
        topo_sort_rows(rows)?;
        let t = now();
        self.db.write(|c| {
            for r in rows {
                let sigs = if r.sigs.is_empty() {
                    None
                } else {
                    Some(r.sigs.iter().cloned().collect::<Vec<_>>().join(" "))
                };
                let nar_size = if r.nar_size == 0 {
                    None
                } else {
                    Some(i64::try_from(r.nar_size).unwrap_or(i64::MAX))
                };
                let ultimate = if r.ultimate { Some(1i64) } else { None };
                let exists: Option<i64> = c
                    .prepare_cached("select id from ValidPaths where path = ?")?
                    .query_row([&r.path], |x| x.get(0))
                    .optional()?;
                let id = if exists.is_some() {
                    c.prepare_cached(
                        "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?",
                    )?
                    .execute(rusqlite::params![nar_size, r.nar_hash, ultimate, sigs, r.ca, r.path])?;
                    exists.unwrap_or_default()
                } else {
                    let time = if r.registration_time == 0 { t } else { r.registration_time };
                    c.prepare_cached(
                        "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)",
                    )?
                    .execute(rusqlite::params![
                        r.path, r.nar_hash, time, r.deriver, nar_size, ultimate, sigs, r.ca
                    ])?;
                    c.last_insert_rowid()
                };
                for (name, out) in &r.drv_outputs {
                    c.prepare_cached(
                        "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
                    )?
                    .execute(rusqlite::params![id, name, out])?;
                }
            }
            for r in rows {
                let referrer: i64 = c
                    .prepare_cached("select id from ValidPaths where path = ?")?
                    .query_row([&r.path], |x| x.get(0))?;
                for reference in &r.references {
                    let rid: Option<i64> = c
                        .prepare_cached("select id from ValidPaths where path = ?")?
                        .query_row([reference], |x| x.get(0))
                        .optional()?;
                    let rid = rid.ok_or_else(|| crate::Error::InvalidPath(reference.clone()))?;
                    c.prepare_cached("insert or replace into Refs (referrer, reference) values (?, ?)")?
                        .execute([referrer, rid])?;
                }
            }
            Ok(())
        })
    }
}
