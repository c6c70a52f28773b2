//! End to end: real Nix clients and daemons talk through `nixnest-wiretap`, which must
//! decode every byte of every connection. Needs root and the host's Nix 2.8; the 2.34
//! runs also need the Debian sid client tree (run through its own ELF loader). Each test
//! skips with a message when what it needs is absent.
//!
//! The daemon runs on a throwaway store under /tmp (its own NIX_STORE_DIR, state, log
//! and conf dirs); the scripted session covers the commands of spec §10 (add, add-fixed,
//! queries, builds, logs, export/import, `nix copy` both ways, copy-log, sign, verify,
//! gc, optimise) plus a session of our own `DaemonClient` for ops the CLI does not send,
//! and one deliberately unknown opcode. The tests assert that the only decode error is
//! that unknown opcode, that every request's reply was decoded, and that the opcodes
//! those commands send were all seen; they print the opcodes seen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nixnest_core::{BasicDerivation, ContentAddressMethod, Derivation, HashAlgo, StoreDir};
use nixnest_protocol::Error;
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::request::{Opcode, Request};
use nixnest_protocol::response::Response;
use nixnest_protocol::types::{BuildMode, ClientSettings};
use nixnest_protocol::version::ProtocolVersion;

/// One Nix installation: the host's, or a Debian tree run through its own loader.
#[derive(Clone)]
struct Nix {
    /// `(ld.so, library path, bin dir)` for a foreign tree; `None` for the host's PATH.
    tree: Option<(PathBuf, OsString, PathBuf)>,
    version: &'static str,
}

const SID: &str = "/var/cache/nixnest-test/clients/sid";

impl Nix {
    fn host() -> Option<Nix> {
        for prog in [
            "nix-daemon",
            "nix-store",
            "nix-build",
            "nix-instantiate",
            "nix",
        ] {
            if which(prog).is_none() {
                eprintln!("skipping: {prog} not found on PATH");
                return None;
            }
        }
        Some(Nix {
            tree: None,
            version: "2.8",
        })
    }

    fn sid() -> Option<Nix> {
        let root = Path::new(SID);
        let ld = root.join("lib64/ld-linux-x86-64.so.2");
        if !ld.exists() || !root.join("usr/bin/nix").exists() {
            eprintln!("skipping: no Nix 2.34 client tree at {SID}");
            return None;
        }
        let mut lp = root.join("usr/lib/x86_64-linux-gnu").into_os_string();
        lp.push(":");
        lp.push(root.join("lib/x86_64-linux-gnu"));
        Some(Nix {
            tree: Some((ld, lp, root.join("usr/bin"))),
            version: "2.34",
        })
    }

    fn command(&self, prog: &str) -> Command {
        match &self.tree {
            None => Command::new(prog),
            Some((ld, lp, bin)) => {
                let mut c = Command::new(ld);
                c.arg("--library-path").arg(lp).arg(bin.join(prog));
                c
            }
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    client: Nix,
    dir: PathBuf,
    tap_sock: PathBuf,
    tap_log: PathBuf,
    store_dir: String,
}

impl Env {
    fn cmd(&self, prog: &str) -> Command {
        self.cmd_with(&self.client, prog)
    }

    fn cmd_with(&self, nix: &Nix, prog: &str) -> Command {
        let mut c = nix.command(prog);
        let d = &self.dir;
        c.env("NIX_STORE_DIR", d.join("store"))
            .env("NIX_STATE_DIR", d.join("state"))
            .env("NIX_LOG_DIR", d.join("log"))
            .env("NIX_CONF_DIR", d.join("conf"))
            .env("NIX_REMOTE", format!("unix://{}", self.tap_sock.display()))
            .env("HOME", d.join("home"))
            .env_remove("NIX_PATH")
            .current_dir(d);
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> String {
        let out = self.cmd(prog).args(args).output().unwrap();
        check(prog, args, &out);
        String::from_utf8(out.stdout).unwrap()
    }

    fn run_stdin(&self, prog: &str, args: &[&str], input: &Path) -> String {
        let out = self
            .cmd(prog)
            .args(args)
            .stdin(std::fs::File::open(input).unwrap())
            .output()
            .unwrap();
        check(prog, args, &out);
        String::from_utf8(out.stdout).unwrap()
    }

    fn run_stdout_to(&self, prog: &str, args: &[&str], to: &Path) {
        let out = self
            .cmd(prog)
            .args(args)
            .stdout(std::fs::File::create(to).unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        check(prog, args, &out);
    }
}

fn check(prog: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The complete lines of the tap's log (a line still being written is left out).
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// Waits until every connection the tap opened has closed, then returns the log.
fn settled_log(path: &Path) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines = log_lines(path);
        let opened = lines.iter().filter(|l| l["event"] == "open").count();
        let closed = lines.iter().filter(|l| l["event"] == "close").count();
        if opened == closed || start.elapsed() > Duration::from_secs(20) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

/// What one run through the tap produced.
struct Run {
    seen: BTreeMap<String, usize>,
    handshake_version: String,
}

/// Runs the whole session with `client` against `daemon` through the tap and checks
/// the tap's log; returns what it saw.
fn run(client: Nix, daemon: Nix) -> Run {
    let tmp = tempfile::Builder::new()
        .prefix("nnt")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().to_path_buf();
    for sub in ["store", "state", "log", "conf", "home", "bb/bin"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // No build users, no substituters, no sandbox. A tree run through its loader cannot
    // re-exec itself as the build hook, so 2.34 gets none; 2.8 (which treats an empty
    // hook as one to run) keeps its default.
    let hook = if daemon.tree.is_some() {
        "build-hook =\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("conf/nix.conf"),
        format!(
            "build-users-group =\nsubstituters =\nexperimental-features = nix-command\nsandbox = false\n{hook}"
        ),
    )
    .unwrap();
    let daemon_sock = dir.join("daemon.sock");
    let env = Env {
        client: client.clone(),
        tap_sock: dir.join("tap.sock"),
        tap_log: dir.join("tap.log"),
        store_dir: dir.join("store").display().to_string(),
        dir: dir.clone(),
    };

    let daemon_proc = KillOnDrop(
        env.cmd_with(&daemon, "nix-daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &daemon_sock)
            .env_remove("NIX_REMOTE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&daemon_sock);
    let tap = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nixnest-wiretap"))
            .args(["--listen", env.tap_sock.to_str().unwrap()])
            .args(["--daemon", daemon_sock.to_str().unwrap()])
            .args(["--log", env.tap_log.to_str().unwrap()])
            .args(["--store-dir", &env.store_dir])
            .spawn()
            .unwrap(),
    );
    wait_for(&env.tap_sock);

    let (out, drv) = cli_script(&env);

    let sd = StoreDir::new(env.store_dir.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(own_client_session(
        &env.tap_sock,
        sd.clone(),
        &out,
        &drv,
        daemon.version,
    ));
    rt.block_on(old_client_session(
        &env.tap_sock,
        sd.clone(),
        &out,
        &drv,
        &dir.join("hello.export"),
        daemon.version,
    ));
    rt.block_on(unknown_op_session(&env.tap_sock, sd));

    // Every client has disconnected; let the tap finish logging, then stop everything.
    let lines = settled_log(&env.tap_log);
    drop(tap);
    drop(daemon_proc);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        if l["dir"] == "c2d"
            && let Some(op) = l["op"].as_str().filter(|_| l.get("decode_error").is_none())
        {
            *seen.entry(op.to_string()).or_default() += 1;
        }
    }
    eprintln!(
        "Nix {} client, Nix {} daemon: opcodes seen through the wiretap:",
        client.version, daemon.version
    );
    for (op, n) in &seen {
        eprintln!("  {op:30} {n}");
    }
    let errors: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("decode_error").is_some())
        .collect();
    // The one deliberate error: an unknown opcode cannot be decoded (and Nix closes).
    assert_eq!(errors.len(), 1, "decode errors: {errors:#?}");
    assert!(
        errors[0]["decode_error"]
            .as_str()
            .unwrap()
            .contains("invalid operation 999")
    );
    let replies = lines
        .iter()
        .filter(|l| l["dir"] == "d2c" && l.get("result").is_some())
        .count();
    let requests = lines
        .iter()
        .filter(|l| l["dir"] == "c2d" && l["op"].is_string() && l.get("decode_error").is_none())
        .count();
    if requests != replies {
        let mut per_conn: BTreeMap<u64, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for l in &lines {
            let conn = l["conn"].as_u64().unwrap_or(0);
            let op = l["op"].as_str().unwrap_or("").to_string();
            if l["dir"] == "c2d" && !op.is_empty() {
                per_conn.entry(conn).or_default().0.push(op);
            } else if l["dir"] == "d2c" && l.get("result").is_some() {
                per_conn.entry(conn).or_default().1.push(op);
            }
        }
        per_conn.retain(|_, (a, b)| a.len() != b.len());
        panic!("requests without a decoded reply: {per_conn:#?}");
    }
    let handshake_version = lines
        .iter()
        .find_map(|l| l["handshake"]["version"].as_str())
        .unwrap()
        .to_string();
    Run {
        seen,
        handshake_version,
    }
}

/// The CLI commands of spec §10; returns the built output and its derivation.
fn cli_script(env: &Env) -> (String, String) {
    let dir = &env.dir;
    std::fs::write(dir.join("hello.txt"), "hello world\n").unwrap();
    std::fs::write(dir.join("flat.txt"), "flat content\n").unwrap();
    std::fs::copy("/bin/busybox", dir.join("bb/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bb/bin/sh")).unwrap();
    std::fs::write(
        dir.join("build.nix"),
        r#"let dep = derivation { name = "dep"; system = builtins.currentSystem;
              builder = "${./bb}/bin/sh"; args = ["-c" "echo building dep; echo dep > $out"]; };
in derivation { name = "simple"; system = builtins.currentSystem;
                builder = "${./bb}/bin/sh";
                args = ["-c" "echo building simple; echo ${dep} > $out"]; }
"#,
    )
    .unwrap();

    // --- adding ---
    let hello = last_line(&env.run("nix-store", &["--add", "hello.txt"]));
    let flat = last_line(&env.run("nix-store", &["--add-fixed", "sha256", "flat.txt"]));
    env.run(
        "nix-store",
        &["--add-fixed", "--recursive", "sha1", "flat.txt"],
    );

    // --- building ---
    let result = dir.join("result");
    let out = last_line(&env.run("nix-build", &["build.nix", "-o", result.to_str().unwrap()]));
    let drv = last_line(&env.run("nix-instantiate", &["build.nix"]));
    env.run("nix-store", &["-q", "--outputs", &drv]);
    env.run("nix-store", &["--realise", &drv]);
    env.run("nix-store", &["--realise", "--check", &drv]);
    env.run("nix", &["build", "-f", "build.nix", "--no-link"]);

    // --- queries ---
    let dep = last_line(&env.run("nix-store", &["-q", "--references", &out]));
    assert!(dep.ends_with("-dep"), "{dep}");
    let referrers = env.run("nix-store", &["-q", "--referrers", &dep]);
    assert!(referrers.contains(&out));
    env.run("nix-store", &["-q", "--requisites", &out]);
    env.run("nix-store", &["-q", "--deriver", &out]);
    env.run("nix-store", &["-q", "--hash", &out]);
    env.run("nix-store", &["-q", "--size", &out]);
    env.run("nix-store", &["-q", "--roots", &out]);
    env.run("nix", &["path-info", "--all"]);
    env.run("nix", &["path-info", "-r", &out]);
    let log = env.run("nix", &["log", &out]);
    assert!(log.contains("building simple"), "{log}");

    // --- signing ---
    let (sk, pk) = (dir.join("sk"), dir.join("pk"));
    env.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-key-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    env.run(
        "nix",
        &["store", "sign", "--key-file", sk.to_str().unwrap(), &hello],
    );

    // --- export / import ---
    let exported = dir.join("hello.export");
    env.run_stdout_to("nix-store", &["--export", &hello], &exported);
    env.run("nix-store", &["--delete", &hello]);
    env.run_stdin("nix-store", &["--import"], &exported);

    // --- nix copy to and from a file:// store, copy-log ---
    let cache = format!("file://{}", dir.join("cache").display());
    let tap_store = format!("unix://{}", env.tap_sock.display());
    env.run("nix", &["copy", "--to", &cache, &flat, &out]);
    env.run("nix-store", &["--delete", &flat]);
    env.run(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &cache,
            "--to",
            &tap_store,
            &flat,
        ],
    );
    env.run("nix", &["store", "copy-log", "--to", &cache, &drv]);
    env.run(
        "nix",
        &[
            "store", "copy-log", "--from", &cache, "--to", &tap_store, &drv,
        ],
    );

    // --- maintenance ---
    env.run("nix-store", &["--verify", "--check-contents"]);
    env.run("nix-store", &["--gc", "--print-dead"]);
    env.run("nix-store", &["--gc", "--print-live"]);
    env.run("nix-store", &["--gc", "--print-roots"]);
    env.run("nix-store", &["--gc", "--max-freed", "1"]);
    env.run("nix-store", &["--optimise"]);
    env.run("nix-store", &["--gc"]);
    env.run("nix", &["store", "ping"]);
    (out, drv)
}

/// Ops every configuration's session sends.
const COMMON_OPS: &[Opcode] = &[
    Opcode::IsValidPath,
    Opcode::QueryReferrers,
    Opcode::AddToStore,
    Opcode::AddTempRoot,
    Opcode::AddIndirectRoot,
    Opcode::FindRoots,
    Opcode::SetOptions,
    Opcode::CollectGarbage,
    Opcode::QueryAllValidPaths,
    Opcode::QueryPathInfo,
    Opcode::QueryValidPaths,
    Opcode::OptimiseStore,
    Opcode::VerifyStore,
    Opcode::AddSignatures,
    Opcode::AddToStoreNar,
    Opcode::QueryMissing,
    Opcode::QueryDerivationOutputMap,
    Opcode::AddMultipleToStore,
    Opcode::AddBuildLog,
    Opcode::BuildPathsWithResults,
    // from our own client
    Opcode::EnsurePath,
    Opcode::NarFromPath,
    Opcode::AddTextToStore,
    Opcode::QueryPathFromHashPart,
    Opcode::QueryValidDerivers,
    Opcode::QuerySubstitutablePaths,
    Opcode::QuerySubstitutablePathInfos,
    Opcode::QueryDeriver,
    Opcode::SyncWithGC,
    Opcode::QueryDerivationOutputNames,
    Opcode::BuildDerivation,
];

fn assert_seen(run: &Run, ops: &[Opcode]) {
    let missing: Vec<&str> = ops
        .iter()
        .map(|o| o.name())
        .filter(|o| !run.seen.contains_key(*o))
        .collect();
    assert!(missing.is_empty(), "opcodes never seen: {missing:?}");
}

#[test]
fn nix_2_8_through_the_wiretap() {
    if !is_root() {
        eprintln!("skipping: needs root (the Nix daemon runs builds as root here)");
        return;
    }
    let (Some(host), Some(_)) = (Nix::host(), which("busybox")) else {
        return;
    };
    let run = run(host.clone(), host);
    assert_eq!(run.handshake_version, "1.34");
    assert_seen(&run, COMMON_OPS);
    // Sent by 2.8's CLI only (newer clients build with results), and ops 2.34 dropped.
    assert_seen(
        &run,
        &[
            Opcode::BuildPaths,
            Opcode::ExportPath,
            Opcode::QueryPathHash,
        ],
    );
}

/// Nix 2.34 on both sides: protocol 1.38 with the feature exchange.
#[test]
fn nix_2_34_through_the_wiretap() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let (Some(sid), Some(_)) = (Nix::sid(), which("busybox")) else {
        return;
    };
    let run = run(sid.clone(), sid);
    assert_eq!(run.handshake_version, "1.38");
    assert_seen(&run, COMMON_OPS);
    assert_seen(&run, &[Opcode::RegisterDrvOutput, Opcode::QueryRealisation]);
}

/// A 2.34 client (pipelined magic + version, announces 1.38) against the 2.8 daemon.
#[test]
fn nix_2_34_client_against_2_8_daemon() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let (Some(host), Some(sid), Some(_)) = (Nix::host(), Nix::sid(), which("busybox")) else {
        return;
    };
    let run = run(sid, host);
    assert_eq!(run.handshake_version, "1.34");
    assert_seen(&run, COMMON_OPS);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

async fn own_client_session(sock: &Path, sd: StoreDir, out: &str, drv: &str, daemon: &str) {
    let mut c = UnixDaemonClient::connect(sock, sd.clone()).await.unwrap();
    let old_daemon = daemon == "2.8";
    let (version, nix) = if old_daemon {
        (34, "2.8.0")
    } else {
        (38, "2.34.8")
    };
    assert_eq!(c.version(), ProtocolVersion::new(1, version));
    assert_eq!(c.negotiated().info.daemon_nix_version.as_deref(), Some(nix));
    c.set_options(&ClientSettings::default()).await.unwrap();
    let out = sd.parse_path(out).unwrap();
    let drv = sd.parse_path(drv).unwrap();
    assert!(c.is_valid_path(&out).await.unwrap());
    let info = c.query_path_info(&out).await.unwrap().unwrap();
    assert_eq!(info.deriver.as_ref(), Some(&drv));

    // NarFromPath: the NAR must hash to the recorded narHash.
    let mut nar = Vec::new();
    let n = c.nar_from_path(&out, &mut nar).await.unwrap();
    assert_eq!(n, info.nar_size);
    assert_eq!(nixnest_core::Hash::sha256(&nar), info.nar_hash);

    // A failing op leaves the connection usable.
    let missing = sd
        .parse_path(&format!(
            "{}/00000000000000000000000000000000-missing",
            sd.as_str()
        ))
        .unwrap();
    match c.ensure_path(&missing).await {
        // 2.8: "… does not exist and cannot be created"; 2.34: "… is required, but there
        // is no substituter that can build it".
        Err(Error::Remote(e)) => assert!(e.msg.contains("-missing"), "{e}"),
        other => panic!("expected a daemon error, got {other:?}"),
    }
    assert!(!c.is_valid_path(&missing).await.unwrap());
    assert!(c.query_path_info(&missing).await.unwrap().is_none());

    let text = c
        .add_text_to_store("text-file", b"some text\n", &BTreeSet::new())
        .await
        .unwrap();
    assert!(c.is_valid_path(&text).await.unwrap());
    let hash_part = out.hash_part();
    assert_eq!(
        c.query_path_from_hash_part(&hash_part).await.unwrap(),
        Some(out.clone())
    );
    assert!(c.query_valid_derivers(&out).await.unwrap().contains(&drv));
    let mut data: &[u8] = b"added by the protocol client\n";
    let added = c
        .add_to_store(
            "client.txt",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            false,
            &mut data,
        )
        .await
        .unwrap();
    assert!(added.ca.is_some());
    let mut reqs = vec![
        Request::QuerySubstitutablePaths([out.clone()].into()),
        Request::QuerySubstitutablePathInfos([(out.clone(), None)].into()),
        Request::QueryDeriver(out.clone()),
        Request::SyncWithGC,
        Request::QueryDerivationOutputNames(drv.clone()),
    ];
    if old_daemon {
        // Removed from daemons in 2.32 (ExportPath) and 2.34 (QueryPathHash).
        reqs.push(Request::QueryPathHash(out.clone()));
    }
    for req in reqs {
        let reply = c.call(&req).await.unwrap();
        if let Request::QueryDeriver(_) = req {
            assert_eq!(reply, Response::OptPath(Some(drv.clone())));
        }
    }
    if old_daemon {
        let record = c.export_path(&added.path).await.unwrap();
        assert!(record.len() > 100);
    }

    // BuildDerivation of `dep` (no input derivations, so it is already a BasicDerivation).
    let simple = Derivation::parse_at(&sd, &drv, &std::fs::read(sd.print(&drv)).unwrap()).unwrap();
    let dep_drv = simple.input_drvs.keys().next().unwrap().clone();
    let dep =
        Derivation::parse_at(&sd, &dep_drv, &std::fs::read(sd.print(&dep_drv)).unwrap()).unwrap();
    assert!(dep.input_drvs.is_empty());
    let basic = BasicDerivation {
        name: dep.name,
        outputs: dep.outputs,
        input_srcs: dep.input_srcs,
        platform: dep.platform,
        builder: dep.builder,
        args: dep.args,
        env: dep.env,
    };
    let res = c
        .build_derivation(&dep_drv, &basic, BuildMode::Normal)
        .await
        .unwrap();
    assert!(res.status.is_success(), "{res:?}");
    // 2.8 reports the output with its DrvOutput id (sha256 of the masked derivation).
    let built = res.built_outputs.get("out").expect("builtOutputs has out");
    assert_eq!(built.id.output, "out");
    assert!(built.out_path.name().ends_with("dep"));

    if !old_daemon {
        // Realisation ops in their 1.31+ JSON forms (the 2.8 daemon crashes on these
        // without ca-derivations). Whatever the daemon answers must decode.
        use nixnest_protocol::request::{RealisationKey, RegisterDrvOutput};
        use nixnest_protocol::types::Realisation;
        let id = built.id.clone();
        let real = Realisation {
            id: id.clone(),
            out_path: built.out_path.clone(),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        };
        let reg = c.register_drv_output(&RegisterDrvOutput::Json(real)).await;
        eprintln!("RegisterDrvOutput on 2.34: {reg:?}");
        let q = c.query_realisation(&RealisationKey::Id(id)).await;
        eprintln!("QueryRealisation on 2.34: {q:?}");
        assert!(!matches!(q, Err(ref e) if e.is_fatal()), "{q:?}");
    }
}

/// Our client speaking 1.21 (Nix 2.3's version): the legacy AddToStore with an inline
/// NAR, AddToStoreNar pulled through STDERR_READ, StorePathWithOutputs, unstructured
/// errors, and (2.8 only) ImportPaths pulled through STDERR_READ.
async fn old_client_session(
    sock: &Path,
    sd: StoreDir,
    out: &str,
    drv: &str,
    export: &Path,
    daemon: &str,
) {
    use nixnest_core::{DerivedPath, OutputsSpec};
    use nixnest_protocol::request::AddToStoreRequest;
    use nixnest_protocol::version::FeatureSet;

    let v = ProtocolVersion::new(1, 21);
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (rd, wr) = stream.into_split();
    let mut c = nixnest_protocol::client::DaemonClient::handshake(
        tokio::io::BufReader::new(rd),
        wr,
        sd.clone(),
        v,
        &FeatureSet::new(),
    )
    .await
    .unwrap();
    assert_eq!(c.version(), v);
    c.set_options(&ClientSettings::default()).await.unwrap();
    let out = sd.parse_path(out).unwrap();
    let drv = sd.parse_path(drv).unwrap();

    // NarFromPath is ungated; its NAR feeds the uploads below.
    let info = c.query_path_info(&out).await.unwrap().unwrap();
    let mut nar = Vec::new();
    c.nar_from_path(&out, &mut nar).await.unwrap();

    // Legacy AddToStore: recursive sha256 of an inline NAR.
    let req = Request::AddToStore(AddToStoreRequest::Legacy {
        name: "old-add".into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    });
    match c.call_inline(&req, &nar).await.unwrap() {
        Response::Path(p) => assert!(c.is_valid_path(&p).await.unwrap()),
        other => panic!("{other:?}"),
    }

    // AddToStoreNar at 1.21: the daemon pulls the NAR (already valid: drained, ignored).
    c.add_to_store_nar(&info, false, true, &mut &nar[..])
        .await
        .unwrap();

    // A bare .drv means all outputs before 1.30.
    let all = DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::All,
    };
    c.build_paths(&[all], BuildMode::Normal).await.unwrap();

    // Errors before 1.26 are a message and an exit status.
    let missing = sd
        .parse_path(&format!(
            "{}/00000000000000000000000000000000-missing",
            sd.as_str()
        ))
        .unwrap();
    match c.ensure_path(&missing).await {
        Err(Error::Remote(e)) => {
            assert!(e.msg.contains("-missing"), "{e}");
            assert_eq!(e.exit_status, 1);
        }
        other => panic!("expected a daemon error, got {other:?}"),
    }

    if daemon == "2.8" {
        // ImportPaths (removed in 2.32): the export stream pulled with STDERR_READ.
        let data = std::fs::read(export).unwrap();
        match c
            .call_pulled(&Request::ImportPaths, &mut &data[..])
            .await
            .unwrap()
        {
            Response::PathList(paths) => assert_eq!(paths.len(), 1),
            other => panic!("{other:?}"),
        }
    }
    assert!(c.is_valid_path(&out).await.unwrap());
}

/// An unknown opcode: Nix 2.8 answers with STDERR_ERROR (twice) and closes; the tap
/// must report exactly that it could not decode the request.
async fn unknown_op_session(sock: &Path, sd: StoreDir) {
    use nixnest_protocol::handshake::client_handshake;
    use nixnest_protocol::version::FeatureSet;
    use nixnest_protocol::wire::{WireReader, WireWriter};
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let v = ProtocolVersion::LATEST;
    let mut r = WireReader::new(tokio::io::BufReader::new(rd), v, sd.clone());
    let mut w = WireWriter::new(v, sd);
    client_handshake(&mut r, &mut w, &mut wr, v, &FeatureSet::new(), |_| {})
        .await
        .unwrap();
    w.write_u64(999);
    w.flush_into(&mut wr).await.unwrap();
    match <nixnest_protocol::stderr::StderrMessage as nixnest_protocol::wire::WireType>::decode(
        &mut r,
    )
    .await
    {
        Ok(nixnest_protocol::stderr::StderrMessage::Error(e)) => {
            assert!(e.msg.contains("invalid operation"), "{e}")
        }
        other => panic!("expected STDERR_ERROR, got {other:?}"),
    }
}
