//! Helpers for benchmarks and scale tests (used by `nixnest-bench` and the GC scale test).

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::gc::{GcOptions, GcResults};
use crate::logger::NullLogger;
use crate::queries::PathRow;
use crate::store::LocalStore;

/// Creates `n` unrooted valid paths (each a small regular file; chains of ten references) and
/// registers them in one transaction. Returns their printed paths.
pub fn make_dead_paths(store: &LocalStore, n: usize) -> Result<Vec<String>> {
    let mut rows = Vec::with_capacity(n);
    let mut printed = Vec::with_capacity(n);
    for i in 0..n {
        let digest = nixnest_core::Hash::sha256(format!("bench-{i}-{}", std::process::id()));
        let hash = nixnest_core::nixbase32::encode(digest.digest().get(..20).unwrap_or_default());
        let p = format!("{}/{hash}-dead-{i}", store.store_dir_str());
        std::fs::write(&p, b"garbage")
            .map_err(|e| crate::Error::io_at("writing", p.as_ref(), e))?;
        let mut row = PathRow {
            path: p.clone(),
            nar_hash: format!("sha256:{}", digest.to_base16()),
            nar_size: 120,
            ..PathRow::default()
        };
        if i % 10 != 0
            && let Some(prev) = printed.last()
        {
            row.references.insert(String::clone(prev));
        }
        rows.push(row);
        printed.push(p);
    }
    store.register_rows(&rows)?;
    Ok(printed)
}

/// Creates `n` dead paths and times one full GC of them.
pub fn time_gc_of_dead_paths(store: &LocalStore, n: usize) -> Result<(Duration, GcResults)> {
    make_dead_paths(store, n)?;
    let t = Instant::now();
    let r = store.collect_garbage(&GcOptions::default(), &NullLogger)?;
    Ok((t.elapsed(), r))
}
