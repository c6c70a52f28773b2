//! Helpers shared by the session tests: starting nixnest on a throwaway store, clients
//! (our typed one and a raw one for misbehaving on purpose), NARs and path infos.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use nixnest_core::{Hash, StoreDir, StorePath, ValidPathInfo};
use nixnest_protocol::client::{DaemonClient, UnixDaemonClient};
use nixnest_protocol::handshake::WORKER_MAGIC_1;
use nixnest_protocol::stderr::StderrMessage;
use nixnest_protocol::types::ClientSettings;
use nixnest_protocol::{FeatureSet, ProtocolVersion, WireReader, WireType, WireWriter};
use nixnest_testkit::{Daemon, TestStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_nixnest-daemon");

/// nixnest-daemon serving `store` on `<root>/s/nixnest.sock`.
pub fn nixnest(store: &TestStore) -> Daemon {
    store.daemon("nixnest", BIN).start()
}

pub fn store_dir(store: &TestStore) -> StoreDir {
    StoreDir::new(store.store_dir().to_str().unwrap().to_owned()).unwrap()
}

/// A client at `version` that has sent the usual first SetOptions.
pub async fn connect_at(
    daemon: &Daemon,
    store: &TestStore,
    version: ProtocolVersion,
) -> DaemonClient<BufReader<OwnedReadHalf>, OwnedWriteHalf> {
    let stream = UnixStream::connect(daemon.socket()).await.unwrap();
    let (rd, wr) = stream.into_split();
    let mut c = DaemonClient::handshake(
        BufReader::new(rd),
        wr,
        store_dir(store),
        version,
        &FeatureSet::new(),
    )
    .await
    .unwrap();
    c.set_options(&ClientSettings::default()).await.unwrap();
    c
}

/// A client at the newest version that has sent the usual first SetOptions.
pub async fn connect(daemon: &Daemon, store: &TestStore) -> UnixDaemonClient {
    connect_at(daemon, store, ProtocolVersion::LATEST).await
}

/// Collects the stderr messages a client receives.
pub fn record(c: &mut UnixDaemonClient) -> std::sync::Arc<std::sync::Mutex<Vec<StderrMessage>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    c.set_logger(move |m| sink.lock().unwrap().push(m.clone()));
    seen
}

/// The `STDERR_NEXT` lines among `msgs`, without their newline.
pub fn lines(msgs: &[StderrMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            StderrMessage::Next(l) => Some(String::from_utf8_lossy(l).trim_end().to_owned()),
            _ => None,
        })
        .collect()
}

/// The NAR of a regular file with `contents`.
pub fn nar_of(contents: &[u8]) -> Vec<u8> {
    let mut w = WireWriter::new(ProtocolVersion::LATEST, StoreDir::default());
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        w.write_bytes(t);
    }
    w.take().to_vec()
}

/// A fresh input-addressed store path name (random digest).
pub fn fresh_path(name: &str) -> StorePath {
    let mut digest = [0u8; 20];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let h = Hash::sha256(format!("{nanos}-{n}-{name}"));
    digest.copy_from_slice(&h.digest()[..20]);
    StorePath::new(digest, name).unwrap()
}

/// The info of an input-addressed path whose NAR is `nar`.
pub fn info_for(path: &StorePath, nar: &[u8], refs: &[&StorePath]) -> ValidPathInfo {
    let mut info = ValidPathInfo::new(path.clone(), Hash::sha256(nar));
    info.nar_size = nar.len() as u64;
    info.references = refs.iter().map(|p| (*p).clone()).collect();
    info
}

/// The entries of the store directory other than `.links`.
pub fn store_entries(store: &TestStore) -> BTreeSet<String> {
    std::fs::read_dir(store.store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".links")
        .collect()
}

/// The temp-roots files of live sessions.
pub fn temproots_files(store: &TestStore) -> Vec<String> {
    match std::fs::read_dir(store.state_dir().join("temproots")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits up to 20 s for `cond`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the host's Nix 2.8 is installed (tests with the real client skip otherwise).
pub fn have_host_nix() -> bool {
    if Path::new("/usr/bin/nix-store").exists() {
        return true;
    }
    eprintln!("skipping: the host's nix (Debian nix-bin 2.8) is not installed");
    false
}

/// A connection that speaks the protocol by hand, for sending what no client would.
pub struct Raw {
    pub r: WireReader<OwnedReadHalf>,
    pub w: WireWriter,
    pub sink: OwnedWriteHalf,
}

impl Raw {
    /// Connected, nothing sent.
    pub async fn open(daemon: &Daemon, store: &TestStore) -> Raw {
        let stream = UnixStream::connect(daemon.socket()).await.unwrap();
        let (rd, wr) = stream.into_split();
        let sd = store_dir(store);
        Raw {
            r: WireReader::new(rd, ProtocolVersion::LATEST, sd.clone()),
            w: WireWriter::new(ProtocolVersion::LATEST, sd),
            sink: wr,
        }
    }

    /// Connected and through the handshake at `version` (no SetOptions).
    pub async fn handshake(daemon: &Daemon, store: &TestStore, version: ProtocolVersion) -> Raw {
        let mut raw = Raw::open(daemon, store).await;
        raw.w.write_u64(WORKER_MAGIC_1);
        raw.w.write_u64(version.to_wire());
        raw.flush().await;
        assert_eq!(raw.r.read_u64().await.unwrap(), 0x6478_696f);
        let theirs = ProtocolVersion::from_wire(raw.r.read_u64().await.unwrap());
        let v = theirs.min(version);
        raw.r.set_version(v);
        raw.w.set_version(v);
        if v.at_least(38) {
            raw.w.write_u64(0);
            raw.flush().await;
            assert_eq!(raw.r.read_u64().await.unwrap(), 0, "daemon features");
        }
        raw.w.write_u64(0); // cpu affinity
        raw.w.write_u64(0); // reserveSpace
        raw.flush().await;
        if v.at_least(33) {
            raw.r.read_string(1024, "version").await.unwrap();
        }
        if v.at_least(35) {
            raw.r.read_u64().await.unwrap();
        }
        assert_eq!(
            StderrMessage::decode(&mut raw.r).await.unwrap(),
            StderrMessage::Last
        );
        raw
    }

    pub async fn flush(&mut self) {
        self.w.flush_into(&mut self.sink).await.unwrap();
    }

    /// Every stderr message until the daemon closes the connection.
    pub async fn messages_until_eof(&mut self) -> Vec<StderrMessage> {
        let mut bytes = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            self.r.get_mut().read_to_end(&mut bytes),
        )
        .await
        .expect("the daemon did not close the connection")
        .unwrap();
        let mut r = WireReader::new(&bytes[..], self.r.version(), StoreDir::default());
        let mut out = Vec::new();
        while !r.get_ref().is_empty() {
            out.push(StderrMessage::decode(&mut r).await.unwrap());
        }
        out
    }
}
