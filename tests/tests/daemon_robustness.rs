//! The daemon under test (nixnest by default; `NIXNEST_E2E_CANDIDATE=reference` runs the same
//! checks against the host's `nix-daemon` 2.8, which proves the checks) keeps serving everyone
//! while clients misbehave, and never leaves a half-written path in the store.
//!
//! * 200 concurrent clients, 50 queries each on one connection, every answer checked;
//! * a client that sends garbage instead of the handshake, one that sends an unknown opcode,
//!   one that stops in the middle of a request and one that never says anything;
//! * clients that hang up in the middle of an upload (AddToStoreNar 39, AddToStore 7,
//!   AddMultipleToStore 44): afterwards every path they tried is either valid with the right
//!   contents or absent from the store dir and the database.
//!
//! One *watcher* connection is used between every step (the same session throughout), so a
//! daemon that stalls or dies fails the test at the step that caused it. Clients here are
//! `nixnest_protocol::client::DaemonClient` and hand-written byte streams, not the Nix CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Server;
use nixnest_core::{ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath, ValidPathInfo};
use nixnest_protocol::client::{DaemonClient, UnixDaemonClient, encode_multiple_item};
use nixnest_protocol::request::{AddToStoreRequest, Request};
use nixnest_protocol::types::ClientSettings;
use nixnest_protocol::{FeatureSet, ProtocolVersion, WireWriter};
use nixnest_testkit::{Client, Daemon, RunExt, TestStore};
use tokio::io::BufReader;

const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6378_7470;
const STDERR_NEXT: u64 = 0x6f6c_6d67;
const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The version the hand-written clients speak: 1.34, as Nix 2.8 (no feature exchange).
const RAW_VERSION: ProtocolVersion = ProtocolVersion::new(1, 34);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn store_dir(store: &TestStore) -> StoreDir {
    StoreDir::new(store.store_dir().display().to_string()).unwrap()
}

fn start(store: &TestStore) -> (Server, Daemon) {
    let server = Server::candidate_for(Client::Host);
    (server, server.spec(store).start())
}

/// A `DaemonClient` at the newest version, after SetOptions. The connect is a blocking one
/// (as Nix's): it waits while the daemon's listen backlog is full instead of failing.
async fn connect(socket: PathBuf, dir: StoreDir) -> UnixDaemonClient {
    let std = tokio::task::spawn_blocking(move || StdStream::connect(&socket))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    std.set_nonblocking(true).unwrap();
    let (rd, wr) = tokio::net::UnixStream::from_std(std).unwrap().into_split();
    let mut client = DaemonClient::handshake(
        BufReader::new(rd),
        wr,
        dir,
        ProtocolVersion::LATEST,
        &FeatureSet::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake: {e}"));
    client
        .set_options(&ClientSettings::default())
        .await
        .unwrap_or_else(|e| panic!("SetOptions: {e}"));
    client
}

/// Adds `text` as a `text:sha256` path without references.
async fn add_text(client: &mut UnixDaemonClient, name: &str, text: &str) -> ValidPathInfo {
    client
        .add_to_store(
            name,
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            false,
            &mut text.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("adding {name}: {e}"))
}

#[test]
fn two_hundred_concurrent_clients() {
    const CLIENTS: usize = 200;
    const QUERIES: usize = 50;
    let store = TestStore::new();
    let (server, daemon) = start(&store);
    let dir = store_dir(&store);
    let socket = daemon.socket().to_owned();
    let rt = runtime();
    let answered = rt.block_on(async {
        let mut first = connect(socket.clone(), dir.clone()).await;
        let mut infos = Vec::new();
        for i in 0..10 {
            infos.push(add_text(&mut first, &format!("concurrent-{i}"), &format!("text {i}\n")).await);
        }
        let missing = StorePath::new([7; 20], "never-added").unwrap();
        let infos = std::sync::Arc::new(infos);
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let (socket, dir, infos, missing) =
                (socket.clone(), dir.clone(), infos.clone(), missing.clone());
            tasks.spawn(async move {
                let mut client = connect(socket, dir).await;
                let all: BTreeSet<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
                for q in 0..QUERIES {
                    let info = &infos[(c + q) % infos.len()];
                    match q % 5 {
                        0 => assert!(client.is_valid_path(&info.path).await.unwrap()),
                        1 => {
                            let got = client.query_path_info(&info.path).await.unwrap().unwrap();
                            assert_eq!(got.nar_hash, info.nar_hash);
                            assert_eq!(got.nar_size, info.nar_size);
                            assert_eq!(got.ca, info.ca);
                        }
                        2 => assert_eq!(client.query_path_info(&missing).await.unwrap(), None),
                        3 => {
                            let mut asked = all.clone();
                            asked.insert(missing.clone());
                            assert_eq!(client.query_valid_paths(&asked, false).await.unwrap(), all);
                        }
                        _ => assert!(client.query_referrers(&info.path).await.unwrap().is_empty()),
                    }
                }
                QUERIES
            });
        }
        let mut answered = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(240));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(result) => answered += result.unwrap_or_else(|e| panic!("a client failed: {e}")),
                    None => break,
                },
                () = &mut deadline => panic!("{server}: clients still waiting after 240 s ({answered} queries answered)"),
            }
        }
        // The first connection still works after all that.
        assert!(first.is_valid_path(&infos[0].path).await.unwrap());
        answered
    });
    assert_eq!(answered, CLIENTS * QUERIES, "{server}");
}

// ---------------------------------------------------------------------------------------------
// Hand-written clients (blocking std sockets, every read with a timeout).

fn raw_connect(socket: &Path) -> StdStream {
    let s = StdStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn read_u64(s: &mut StdStream) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(s: &mut StdStream) -> std::io::Result<Vec<u8>> {
    let len = read_u64(s)? as usize;
    assert!(len < 1 << 20, "implausible string length {len}");
    let mut buf = vec![0u8; len.div_ceil(8) * 8];
    s.read_exact(&mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// Reads stderr messages up to STDERR_LAST (`Ok`) or STDERR_ERROR (`Err` with its message).
fn read_stderr(s: &mut StdStream) -> Result<(), String> {
    loop {
        match read_u64(s).map_err(|e| format!("reading stderr: {e}"))? {
            STDERR_LAST => return Ok(()),
            STDERR_NEXT => {
                read_string(s).unwrap();
            }
            STDERR_ERROR => {
                // ≥ 1.26: type, level, name (obsolete), message, …; the message is enough.
                let _type = read_string(s).unwrap();
                let _level = read_u64(s).unwrap();
                let _name = read_string(s).unwrap();
                let msg = read_string(s).unwrap();
                return Err(String::from_utf8_lossy(&msg).into_owned());
            }
            other => panic!("unexpected stderr message {other:#x} in a raw session"),
        }
    }
}

/// The client side of the handshake at 1.34, by hand.
fn raw_handshake(s: &mut StdStream) {
    s.write_all(&WORKER_MAGIC_1.to_le_bytes()).unwrap();
    assert_eq!(read_u64(s).unwrap(), WORKER_MAGIC_2);
    let daemon_version = read_u64(s).unwrap();
    assert!(
        daemon_version >= 0x122,
        "daemon version {daemon_version:#x}"
    );
    for word in [RAW_VERSION.to_wire(), 0, 0] {
        s.write_all(&word.to_le_bytes()).unwrap();
    }
    let _nix_version = read_string(s).unwrap();
    read_stderr(s).expect("handshake");
}

fn encode(dir: &StoreDir, req: &Request) -> Vec<u8> {
    let mut w = WireWriter::new(RAW_VERSION, dir.clone());
    req.encode(&mut w);
    w.pending().to_vec()
}

/// Waits until the peer closed the connection (EOF or reset), reading whatever comes first.
fn assert_closed_by_daemon(s: &mut StdStream, what: &str) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: the daemon did not close the connection: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: still open after 20 s"
        );
    }
}

/// The NAR of one regular file with `contents`.
fn nar_of(contents: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, contents).unwrap();
    let mut nar = Vec::new();
    nixnest_core::nar::dump_path(&file, &mut nar).unwrap();
    nar
}

/// A framed stream header for `len` bytes followed by the first `sent` of them.
fn framed_prefix(payload: &[u8], sent: usize) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&payload[..sent]);
    out
}

/// Sends `request_bytes` then `payload_prefix` on a fresh raw session and hangs up.
fn hang_up_after(socket: &Path, request_bytes: &[u8], payload_prefix: &[u8]) {
    let mut s = raw_connect(socket);
    raw_handshake(&mut s);
    s.write_all(request_bytes).unwrap();
    s.write_all(payload_prefix).unwrap();
    // Give the daemon time to start consuming (and writing) before the client vanishes.
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
}

/// Every path must end up either valid with contents hashing to its NAR hash, or invalid and
/// absent from the store dir (waiting up to 20 s for the daemon to clean up).
async fn assert_whole_or_absent(
    watcher: &mut UnixDaemonClient,
    store: &TestStore,
    tried: &[(StorePath, Hash)],
) {
    for (path, nar_hash) in tried {
        let on_disk = store.store_dir().join(path.to_base_name());
        let start = Instant::now();
        loop {
            let valid = watcher.is_valid_path(path).await.unwrap();
            if valid {
                let mut nar = Vec::new();
                nixnest_core::nar::dump_path(&on_disk, &mut nar).unwrap_or_else(|e| {
                    panic!("{} is valid but unreadable: {e}", on_disk.display())
                });
                assert_eq!(
                    &Hash::sha256(&nar),
                    nar_hash,
                    "{} is valid but its contents are not what was uploaded",
                    on_disk.display()
                );
                eprintln!("{}: valid and whole", path.to_base_name());
                break;
            }
            if std::fs::symlink_metadata(&on_disk).is_err() {
                eprintln!("{}: invalid and absent", path.to_base_name());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} is not valid but still in the store dir after 20 s: a half-written path",
                on_disk.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[test]
fn misbehaving_clients_do_not_disturb_others() {
    let store = TestStore::new();
    let (server, mut daemon) = start(&store);
    let dir = store_dir(&store);
    let socket = daemon.socket().to_owned();
    let rt = runtime();
    rt.block_on(async {
        let mut watcher = connect(socket.clone(), dir.clone()).await;
        let known = add_text(&mut watcher, "known", "known text\n").await;
        let check = async |watcher: &mut UnixDaemonClient, after: &str| {
            let valid =
                tokio::time::timeout(Duration::from_secs(20), watcher.is_valid_path(&known.path))
                    .await
                    .unwrap_or_else(|_| panic!("{server}: the watcher got no answer after {after}"))
                    .unwrap_or_else(|e| {
                        panic!("{server}: the watcher's query failed after {after}: {e}")
                    });
            assert!(valid, "{after}");
            // A brand-new client is served too.
            let mut fresh = tokio::time::timeout(
                Duration::from_secs(20),
                connect(socket.clone(), dir.clone()),
            )
            .await
            .unwrap_or_else(|_| panic!("{server}: a new client was not served after {after}"));
            assert!(fresh.is_valid_path(&known.path).await.unwrap(), "{after}");
        };

        // Garbage instead of the handshake.
        let mut garbage = raw_connect(&socket);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = garbage.write_all(&noise);
        assert_closed_by_daemon(&mut garbage, "garbage handshake");
        check(&mut watcher, "a garbage handshake").await;

        // An unknown opcode after a good handshake: an error, then the connection closes.
        let mut unknown = raw_connect(&socket);
        raw_handshake(&mut unknown);
        unknown.write_all(&9999u64.to_le_bytes()).unwrap();
        let answer = read_stderr(&mut unknown);
        assert!(answer.is_err(), "unknown opcode answered with STDERR_LAST");
        assert_closed_by_daemon(&mut unknown, "unknown opcode");
        check(&mut watcher, "an unknown opcode").await;

        // Stopping in the middle of a request, and saying nothing at all: both stay open
        // while everyone else is served.
        let mut stalled = raw_connect(&socket);
        raw_handshake(&mut stalled);
        let mut partial = 26u64.to_le_bytes().to_vec(); // QueryPathInfo
        partial.extend_from_slice(&100u64.to_le_bytes()); // a 100-byte path …
        partial.extend_from_slice(b"/tmp/only"); // … of which 9 arrive
        stalled.write_all(&partial).unwrap();
        let silent = raw_connect(&socket);
        check(&mut watcher, "a client stopped mid-request").await;
        drop(stalled);
        drop(silent);
        check(&mut watcher, "the stalled clients left").await;

        // Hanging up in the middle of uploads.
        let mut tried = Vec::new();
        let big = nar_of(&vec![b'n'; 2 << 20]);
        let nar_path = StorePath::new([3; 20], "partial-nar").unwrap();
        let mut info = ValidPathInfo::new(nar_path.clone(), Hash::sha256(&big));
        info.nar_size = big.len() as u64;
        let req = Request::AddToStoreNar {
            info: info.clone(),
            repair: false,
            dont_check_sigs: true,
        };
        hang_up_after(
            &socket,
            &encode(&dir, &req),
            &framed_prefix(&big, big.len() / 2),
        );
        tried.push((nar_path.clone(), Hash::sha256(&big)));
        check(&mut watcher, "a client hung up during AddToStoreNar").await;

        let big2 = nar_of(&vec![b'a'; 2 << 20]);
        let ca_path = dir
            .make_fixed_output_path(
                "partial-add",
                ContentAddressMethod::NixArchive,
                &Hash::sha256(&big2),
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        let req = Request::AddToStore(AddToStoreRequest::ContentAddressed {
            name: "partial-add".into(),
            method: ContentAddressMethod::NixArchive,
            algo: HashAlgo::Sha256,
            references: BTreeSet::new(),
            repair: false,
        });
        hang_up_after(
            &socket,
            &encode(&dir, &req),
            &framed_prefix(&big2, big2.len() / 2),
        );
        tried.push((ca_path.clone(), Hash::sha256(&big2)));
        check(&mut watcher, "a client hung up during AddToStore").await;

        // AddMultipleToStore: the first path arrives whole, the second is cut off.
        let small = nar_of(b"first of two\n");
        let first = StorePath::new([4; 20], "multi-first").unwrap();
        let second = StorePath::new([5; 20], "multi-second").unwrap();
        let big3 = nar_of(&vec![b'm'; 2 << 20]);
        let mut w = WireWriter::new(RAW_VERSION, dir.clone());
        w.write_u64(2);
        let mut first_info = ValidPathInfo::new(first.clone(), Hash::sha256(&small));
        first_info.nar_size = small.len() as u64;
        encode_multiple_item(&mut w, &first_info);
        w.write_raw(&small);
        let mut second_info = ValidPathInfo::new(second.clone(), Hash::sha256(&big3));
        second_info.nar_size = big3.len() as u64;
        encode_multiple_item(&mut w, &second_info);
        w.write_raw(&big3);
        let payload = w.pending().to_vec();
        let req = Request::AddMultipleToStore {
            repair: false,
            dont_check_sigs: true,
        };
        let cut = payload.len() - big3.len() / 2;
        hang_up_after(&socket, &encode(&dir, &req), &framed_prefix(&payload, cut));
        tried.push((first.clone(), Hash::sha256(&small)));
        tried.push((second.clone(), Hash::sha256(&big3)));
        check(&mut watcher, "a client hung up during AddMultipleToStore").await;

        assert_whole_or_absent(&mut watcher, &store, &tried).await;

        // The interrupted uploads left nothing in the way: the same path uploads whole now.
        watcher
            .add_to_store_nar(&info, false, true, &mut big.as_slice())
            .await
            .unwrap_or_else(|e| {
                panic!("{server}: a complete upload after the interrupted one failed: {e}")
            });
        assert!(watcher.is_valid_path(&nar_path).await.unwrap());
        assert_whole_or_absent(&mut watcher, &store, &tried[..1]).await;
    });
    assert!(daemon.is_running(), "{server} died");
    // And the real client agrees that the store is sound.
    store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-store")
        .args(["--verify", "--check-contents"])
        .run();
}

/// A client in another PID namespace (a container, or `unshare --pid`) is seen by the daemon
/// as pid 0 (`SO_PEERCRED` cannot name it); the daemon must serve it anyway, as `nix-daemon`
/// does. The daemon runs in the test's namespace here, whatever `NIXNEST_E2E_ISOLATE` says.
#[test]
fn client_in_another_pid_namespace_is_served() {
    let store = TestStore::new();
    let server = Server::candidate_for(Client::Host);
    let daemon = server.spec(&store).isolate_pids(false).start();
    let file = store.write("in/pidns.txt", "from another pid namespace\n");
    let inner = store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-store");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--",
        "nix-store",
        "--add",
    ])
    .arg(&file)
    .env_clear();
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let path = cmd.run();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        "from another pid namespace\n",
        "{server}"
    );
}

/// Real clients of every version adding the same path (and one of their own each) at the
/// same time: all succeed with the same answer, and the store is sound afterwards.
#[test]
fn real_clients_add_the_same_path_concurrently() {
    let store = TestStore::new();
    let (server, daemon) = start(&store);
    let same = store.write("in/same.txt", "everyone adds this\n".repeat(10_000));
    let clients: Vec<Client> = common::clients()
        .into_iter()
        .flat_map(|c| [c, c, c])
        .collect();
    let outputs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let own = store.write(format!("in/own-{i}.txt"), format!("only client {i}\n"));
                let mut cmd = store.client(*client).daemon(&daemon).command("nix-store");
                cmd.arg("--add").arg(&same).arg(&own);
                scope.spawn(move || cmd.run())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first_lines: BTreeSet<&str> = outputs.iter().filter_map(|o| o.lines().next()).collect();
    assert_eq!(
        first_lines.len(),
        1,
        "{server}: different paths for the same file: {outputs:?}"
    );
    let owns: BTreeSet<&str> = outputs.iter().filter_map(|o| o.lines().nth(1)).collect();
    assert_eq!(owns.len(), clients.len(), "{server}: {outputs:?}");
    store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-store")
        .args(["--verify", "--check-contents"])
        .run();
    let valid = store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-store")
        .arg("--check-validity")
        .args(first_lines.iter().chain(owns.iter()))
        .run();
    assert_eq!(valid, "", "{server}");
}
