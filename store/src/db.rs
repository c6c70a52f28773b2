//! The store database `<state>/db/db.sqlite`: schema 10 as CppNix ≥ 2.0 creates it, the
//! per-connection setup, and busy handling.
//!
//! Connection setup (every connection, CppNix's order): busy timeout 1 h, `foreign_keys =
//! 1` (not persistent), `synchronous = normal` (`off` without `fsync-metadata`), journal
//! mode `wal` (persistent in the file, only set when different), `wal_autocheckpoint =
//! 40000`. Versioning lives in the `db/schema` file, never in `user_version`.
//!
//! Concurrency: WAL lets readers run beside one writer. We keep one writer connection
//! behind a mutex (so our own threads queue in-process instead of spinning in SQLite's busy
//! handler) and a pool of reader connections. At most [`READERS`] readers are open at a
//! time: more threads than that cannot read faster (they share the CPUs) but would each
//! open, set up and prepare statements on a fresh connection, so a thread that finds them
//! all busy waits for one — for [`READER_WAIT`] at most, then it opens an extra one, so
//! waiting can never turn into a deadlock. Every operation is retried on
//! `SQLITE_BUSY`/`SQLITE_PROTOCOL` after a random 0–100 ms sleep — another process
//! (root's CppNix) may hold the write lock — warning at most every 10 s. Write transactions
//! start with `begin immediate`: taking the write lock up front means a transaction never
//! has to upgrade a read snapshot, which in WAL mode fails with `SQLITE_BUSY` at once.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{Error, Result};

/// The schema version this store reads and writes (`db/schema`).
pub const SCHEMA_VERSION: u64 = 10;

/// CppNix's schema 10 (2.0 … 2.25; later versions add tables we neither need nor mind).
/// Every statement is `if not exists`, so running it on an existing db is harmless.
pub const SCHEMA_SQL: &str = r#"
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- A self reference (N, N) would make the restrict foreign key refuse deleting N.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// How long between two "database is busy" warnings.
const BUSY_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Reader connections kept open (busy or idle); see the module docs.
pub const READERS: usize = 8;

/// How long a read waits for a pooled reader before it opens an extra connection.
pub const READER_WAIT: Duration = Duration::from_millis(50);

/// Opens one connection and applies CppNix's setup. `create` allows creating the file.
pub fn open_connection(path: &Path, create: bool, fsync: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::Sqlite {
        context: format!("cannot open SQLite database '{}'", path.display()),
        source: e,
    })?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(3600))?;
        conn.pragma_update(None, "foreign_keys", 1)?;
        conn.pragma_update(None, "synchronous", if fsync { "normal" } else { "off" })?;
        let mode: String = conn.pragma_query_value(Some("main"), "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            let _: String =
                conn.pragma_update_and_check(Some("main"), "journal_mode", "wal", |r| r.get(0))?;
        }
        conn.pragma_update(None, "wal_autocheckpoint", 40000)?;
        Ok(())
    };
    retry(path, || setup(&conn).map_err(Error::from))?;
    Ok(conn)
}

/// Creates the schema in a fresh (or schema-less) db.
pub fn create_schema(conn: &Connection, path: &Path) -> Result<()> {
    retry(path, || conn.execute_batch(SCHEMA_SQL).map_err(Error::from))
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite {
            context: "SQLite error".into(),
            source: e,
        }
    }
}

/// Whether an error means "someone else holds the db; try again".
pub fn is_busy(e: &Error) -> bool {
    match e {
        Error::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::FileLockingProtocolFailed
        ),
        _ => false,
    }
}

/// A cheap random number for backoff (no RNG dependency; quality is irrelevant).
pub(crate) fn cheap_random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Runs `f` until it does not fail with "busy".
pub fn retry<T>(db_path: &Path, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last_warn: Option<Instant> = None;
    loop {
        match f() {
            Err(e) if is_busy(&e) => {
                if last_warn.is_none_or(|t| t.elapsed() >= BUSY_WARN_INTERVAL) {
                    tracing::warn!("SQLite database '{}' is busy", db_path.display());
                    last_warn = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(cheap_random() % 100));
            }
            other => return other,
        }
    }
}

/// The connections of one store.
pub struct Db {
    path: PathBuf,
    fsync: bool,
    writer: Mutex<Connection>,
    readers: Mutex<ReaderPool>,
    reader_returned: Condvar,
}

/// The reader connections: the idle ones, and how many pooled ones exist in all.
#[derive(Default)]
struct ReaderPool {
    idle: Vec<Connection>,
    open: usize,
}

/// Where a read's connection came from, so it goes back to the right place.
enum Reader {
    Pooled(Connection),
    Fresh,
    Extra,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Wraps an already set-up connection as the writer.
    pub fn new(path: PathBuf, fsync: bool, writer: Connection) -> Db {
        Db {
            path,
            fsync,
            writer: Mutex::new(writer),
            readers: Mutex::new(ReaderPool::default()),
            reader_returned: Condvar::new(),
        }
    }

    /// The db file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs read-only work on a pooled connection (retried while busy).
    pub fn read<T>(&self, mut f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let (conn, pooled) = match self.take_reader()? {
            Reader::Pooled(c) => (c, true),
            Reader::Fresh => match open_connection(&self.path, false, self.fsync) {
                Ok(c) => (c, true),
                Err(e) => {
                    self.forget_reader();
                    return Err(e);
                }
            },
            Reader::Extra => (open_connection(&self.path, false, self.fsync)?, false),
        };
        let r = retry(&self.path, || f(&conn));
        if pooled {
            if let Ok(mut pool) = self.readers.lock() {
                pool.idle.push(conn);
            }
            self.reader_returned.notify_one();
        }
        r
    }

    /// An idle pooled reader, or leave to open a pooled one (below [`READERS`]), or —
    /// after waiting [`READER_WAIT`] for one to come back — leave to open an extra one.
    fn take_reader(&self) -> Result<Reader> {
        let mut pool = self.readers.lock().map_err(|_| poisoned())?;
        let deadline = Instant::now() + READER_WAIT;
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(Reader::Pooled(c));
            }
            if pool.open < READERS {
                pool.open += 1;
                return Ok(Reader::Fresh);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Reader::Extra);
            }
            pool = self
                .reader_returned
                .wait_timeout(pool, deadline - now)
                .map_err(|_| poisoned())?
                .0;
        }
    }

    /// A pooled reader that could not be opened: its place is free again.
    fn forget_reader(&self) {
        if let Ok(mut pool) = self.readers.lock() {
            pool.open = pool.open.saturating_sub(1);
        }
        self.reader_returned.notify_one();
    }

    /// Runs `f` inside one write transaction (`begin immediate` … `commit`); on error the
    /// transaction is rolled back. The whole transaction is retried while busy, so `f`
    /// must be repeatable.
    pub fn write<T>(&self, mut f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().map_err(|_| poisoned())?;
        retry(&self.path, || {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let v = f(&tx)?;
            tx.commit()?;
            Ok(v)
        })
    }
}

fn poisoned() -> Error {
    Error::Other("internal error: database mutex poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_matches_cppnix_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        let c = open_connection(&p, true, true).unwrap();
        create_schema(&c, &p).unwrap();
        let mut names: Vec<(String, String)> = c
            .prepare("select type, name from sqlite_master order by type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|(_, n): &(String, String)| !n.starts_with("sqlite_autoindex"))
            .collect();
        names.sort();
        let want: Vec<(String, String)> = [
            ("index", "IndexDerivationOutputs"),
            ("index", "IndexReference"),
            ("index", "IndexReferrer"),
            ("table", "DerivationOutputs"),
            ("table", "Refs"),
            ("table", "ValidPaths"),
            ("table", "sqlite_sequence"),
            ("trigger", "DeleteSelfRefs"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(names, want);
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = c
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let uv: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(uv, 0);
    }

    fn test_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        let c = open_connection(&p, true, true).unwrap();
        create_schema(&c, &p).unwrap();
        let db = Db::new(p.clone(), true, c);
        (dir, db)
    }

    fn count_paths(c: &Connection) -> Result<i64> {
        Ok(c.query_row("select count(*) from ValidPaths", [], |r| r.get(0))?)
    }

    /// Many threads reading at once share at most `READERS` pooled connections, and all
    /// of them are idle again afterwards.
    #[test]
    fn readers_are_pooled_and_bounded() {
        let (_dir, db) = test_db();
        std::thread::scope(|s| {
            for _ in 0..4 * READERS {
                s.spawn(|| {
                    for _ in 0..50 {
                        assert_eq!(db.read(count_paths).unwrap(), 0);
                    }
                });
            }
        });
        let pool = db.readers.lock().unwrap();
        assert!(pool.open >= 1 && pool.open <= READERS, "{}", pool.open);
        assert_eq!(pool.idle.len(), pool.open);
    }

    /// With every pooled reader held, a read (even one nested inside a held read) gets
    /// an extra connection after `READER_WAIT` instead of waiting for ever.
    #[test]
    fn an_exhausted_pool_never_deadlocks() {
        let (_dir, db) = test_db();
        let barrier = std::sync::Barrier::new(READERS);
        std::thread::scope(|s| {
            for _ in 0..READERS {
                s.spawn(|| {
                    db.read(|c| {
                        barrier.wait();
                        let inner = db.read(count_paths)?;
                        Ok(inner + count_paths(c)?)
                    })
                    .unwrap();
                });
            }
        });
        let pool = db.readers.lock().unwrap();
        assert_eq!(pool.open, READERS);
        assert_eq!(pool.idle.len(), READERS, "extra connections are not kept");
    }

    #[test]
    fn self_reference_does_not_block_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        let c = open_connection(&p, true, true).unwrap();
        create_schema(&c, &p).unwrap();
        c.execute_batch(
            "insert into ValidPaths (path, hash, registrationTime) values ('/s/a', 'sha256:00', 1);
             insert into ValidPaths (path, hash, registrationTime) values ('/s/b', 'sha256:00', 1);
             insert into Refs values (1, 1); insert into Refs values (2, 1);",
        )
        .unwrap();
        // b refers to a: restrict.
        assert!(
            c.execute("delete from ValidPaths where id = 1", [])
                .is_err()
        );
        c.execute("delete from ValidPaths where id = 2", [])
            .unwrap();
        c.execute("delete from ValidPaths where id = 1", [])
            .unwrap();
        let n: i64 = c
            .query_row("select count(*) from Refs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn busy_is_retried_until_the_other_writer_commits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        let c = open_connection(&p, true, true).unwrap();
        create_schema(&c, &p).unwrap();
        let db = Db::new(p.clone(), true, open_connection(&p, false, true).unwrap());
        // Another "process" holds the write lock for a while; with a short busy timeout on
        // our side the retry loop (not SQLite's handler) must carry us through.
        c.execute_batch("begin immediate").unwrap();
        db.writer
            .lock()
            .unwrap()
            .busy_timeout(Duration::from_millis(1))
            .unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.execute_batch("commit").unwrap();
        });
        db.write(|tx| {
            tx.execute(
                "insert into ValidPaths (path, hash, registrationTime) values ('/s/x', 'h', 1)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        t.join().unwrap();
    }
}
