//! What a store looks like, as text to compare: the rows of Nix's SQLite database (schema 10)
//! and the file tree of the store dir.
//!
//! Left out, on purpose:
//! * `ValidPaths.id` (row ids: never visible to a client; the order of insertion of paths
//!   added in one batch is not defined) — rows are keyed by path instead;
//! * `ValidPaths.registrationTime` (the time of the run);
//! * `*.lock` files next to store paths (transient artefacts of path locking: CppNix removes
//!   most of them but not all, and what is left depends on timing);
//! * the `.links` directory itself (CppNix creates it whenever it opens the store, so its
//!   mtime is the time of the run, and whether it exists says nothing); its *entries*, made by
//!   `nix-store --optimise`, are kept, as are the link counts of every file.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nixnest_testkit::{RunExt, TestStore};

/// Database rows and store file tree, one line per row/entry, sorted.
pub fn store_state(store: &TestStore) -> String {
    let mut out = String::new();
    out.push_str("== database\n");
    out.push_str(&db_rows(store));
    out.push_str("== store dir\n");
    out.push_str(&tree(&store.store_dir(), true, &|name| {
        name.ends_with(".lock")
    }));
    out
}

/// The rows of the tables clients depend on, by path, `NULL` told apart from `''`.
pub fn db_rows(store: &TestStore) -> String {
    let db = store.db_path();
    if !db.exists() {
        return "(no database)\n".into();
    }
    let schema = std::fs::read_to_string(store.state_dir().join("db/schema")).unwrap_or_default();
    let query = "\
select 'path', quote(path), quote(hash), quote(deriver), quote(narSize), quote(ultimate), \
       quote(sigs), quote(ca) from ValidPaths order by path;
select 'ref', r.path, e.path from Refs join ValidPaths r on r.id = Refs.referrer \
       join ValidPaths e on e.id = Refs.reference order by 2, 3;
select 'drvout', d.path, o.id, o.path from DerivationOutputs o \
       join ValidPaths d on d.id = o.drv order by 2, 3;";
    let rows = Command::new("sqlite3")
        // A daemon may be writing right now: wait for its lock rather than fail.
        .args(["-readonly", "-cmd", ".timeout 10000", "-separator", " "])
        .arg(&db)
        .arg(query)
        .run();
    format!("schema {}\n{rows}\n", schema.trim())
}

/// Every entry under `dir` (not following symlinks), sorted by path: type, permission bits,
/// owner, link count, size, symlink target, and with `mtimes` the modification time (for store
/// contents, where it is canonical; elsewhere it is the time of the run). Entries whose name
/// matches `skip` are left out.
pub fn tree(dir: &Path, mtimes: bool, skip: &dyn Fn(&str) -> bool) -> String {
    let mut lines = Vec::new();
    walk(dir, dir, mtimes, skip, &mut lines);
    lines.sort();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    mtimes: bool,
    skip: &dyn Fn(&str) -> bool,
    lines: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        lines.push(format!("{}: unreadable", dir.display()));
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip(&name) {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if rel == ".links" {
            walk(root, &path, mtimes, skip, lines);
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "d"
        } else if ft.is_symlink() {
            "l"
        } else if ft.is_file() {
            "f"
        } else {
            "?"
        };
        let target = if ft.is_symlink() {
            format!(
                " -> {}",
                std::fs::read_link(&path).unwrap_or_default().display()
            )
        } else {
            String::new()
        };
        let size = if ft.is_file() {
            format!(" size={}", meta.len())
        } else {
            String::new()
        };
        lines.push(format!(
            "{rel} {kind} {:o} {}:{} nlink={}{}{size}{target}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            if ft.is_dir() { 0 } else { meta.nlink() },
            if mtimes {
                format!(" mtime={}", meta.mtime())
            } else {
                String::new()
            },
        ));
        if ft.is_dir() {
            walk(root, &path, mtimes, skip, lines);
        }
    }
}
