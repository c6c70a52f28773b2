//! Shared pieces of the end-to-end build tests (`builds_*.rs`): starting nixnest-daemon
//! (as root or as an unprivileged user owning the store), running `nix-build` with a real
//! client, and comparing what two daemons made a client print.
//!
//! The tests need root, the host's Nix 2.8 and a static busybox; the 2.34 client (sid
//! chroot) is used when it has been prepared (`tests/prepare-clients`), else skipped with
//! a message. Run `cargo build --workspace` first (the tests start the daemon binary).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nixnest_testkit::{Client, Daemon, RunExt, TestStore, cargo_bin};

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not running as root".into());
    }
    for p in [
        "/usr/bin/nix-build",
        "/usr/bin/nix-daemon",
        "/usr/bin/setpriv",
    ] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing"));
        }
    }
    if !nixnest_testkit::busybox::source().exists() {
        return Some("no static busybox (busybox-static)".into());
    }
    None
}

#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(why) = builds_support::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// The clients every test runs with: the host's 2.8 and, if prepared, sid's 2.34.
pub fn clients() -> Vec<Client> {
    let mut v = vec![Client::Host];
    if Client::Sid.is_available() {
        v.push(Client::Sid);
    } else {
        eprintln!("NOTE: the Nix 2.34 client chroot is missing; only the host client runs");
    }
    v
}

/// nixnest-daemon serving `store`, as root.
pub fn nixnest(store: &TestStore) -> Daemon {
    store.daemon("nixnest", cargo_bin("nixnest-daemon")).start()
}

/// nixnest-daemon serving `store` as `uid:gid`, which is made the owner of the store,
/// state and log dirs first.
pub fn nixnest_as(store: &TestStore, uid: u32, gid: u32) -> Daemon {
    for dir in [
        store.store_dir(),
        store.root().join("var"),
        store.root().join("s"),
    ] {
        let ok = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", dir.display());
    }
    store
        .daemon("nixnest-unprivileged", "setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ])
        .arg(cargo_bin("nixnest-daemon"))
        .start()
}

/// `nix-build <file> --no-out-link <args>` with `client` through `daemon`.
pub fn nix_build(
    store: &TestStore,
    client: Client,
    daemon: &Daemon,
    file: &Path,
    args: &[&str],
) -> Output {
    store
        .client(client)
        .daemon(daemon)
        .command("nix-build")
        .arg(file)
        .arg("--no-out-link")
        .args(args)
        .run_unchecked()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `s` with the store's store dir, root and every 32-character hash part replaced, so
/// observations from two stores compare.
pub fn normalise(store: &TestStore, s: &str) -> String {
    let s = s
        .replace(&*store.store_dir().to_string_lossy(), "/STORE")
        .replace(&*store.root().to_string_lossy(), "/ROOT");
    let nix32 = |c: u8| b"0123456789abcdfghijklmnpqrsvwxyz".contains(&c);
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let hash = b
            .get(i..i + 33)
            .is_some_and(|w| w[..32].iter().all(|c| nix32(*c)) && w[32] == b'-')
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if hash {
            out.push_str("HASH-");
            i += 33;
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The pids of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// What builds may have left: build dirs, chroots, temporary outputs.
pub fn leftovers(store: &TestStore) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(d) = std::fs::read_dir(store.state_dir().join("builds")) {
        left.extend(
            d.flatten()
                .map(|e| format!("builds/{}", e.file_name().to_string_lossy())),
        );
    }
    for e in std::fs::read_dir(store.store_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".chroot") || name.contains(".tmp") || name.contains("nixnest-output") {
            left.push(name);
        }
    }
    left
}

/// Watches nixnest's control socket and records the most builds seen running at once.
pub struct BuildMonitor {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BuildMonitor {
    pub fn start(store: &TestStore) -> BuildMonitor {
        let socket = store.state_dir().join("nixnest/control");
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(n) = running_builds(&socket) {
                        peak.fetch_max(n, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        BuildMonitor {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops watching; the peak.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

/// The number of builds `status` lists.
fn running_builds(socket: &Path) -> Option<usize> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    Some(v["status"]["builds"].as_array()?.len())
}

/// `nixnest-daemon status --json`'s builds, as (drv path, build uid).
pub fn status_builds(store: &TestStore) -> Vec<(String, Option<u64>)> {
    let socket = store.state_dir().join("nixnest/control");
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["status"]["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["drv_path"].as_str().unwrap().to_owned(),
                b["build_uid"].as_u64(),
            )
        })
        .collect()
}

/// A Nix list expression of `count` busybox derivations in layers of 10: each one after
/// the first layer depends on two of the layer before. Each output is a directory with
/// its name and the paths of its dependencies (so they are its references).
pub fn dag_expr(tag: &str, count: usize) -> String {
    let mut s = String::from("let\n");
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{tag}{i}");
        let mut d = nixnest_testkit::Derivation::new(
            &name,
            "mkdir $out; echo $name > $out/name; for d in $dep0 $dep1; do echo $d; done > $out/deps; test -z \"$dep0\" || cat $dep0/name >> $out/seen",
        );
        if i >= 10 {
            let (l, k) = (i / 10, i % 10);
            d = d
                .attr("dep0", &format!("{tag}{}", (l - 1) * 10 + k))
                .attr("dep1", &format!("{tag}{}", (l - 1) * 10 + (k + 1) % 10));
        }
        s.push_str(&format!("  {name} = {};\n", d.to_nix()));
        names.push(name);
    }
    s.push_str(&format!("in [ {} ]\n", names.join(" ")));
    s
}

/// The indices of the dependencies of node `i` of [`dag_expr`].
pub fn dag_deps(i: usize) -> Vec<usize> {
    if i < 10 {
        return Vec::new();
    }
    let (l, k) = (i / 10, i % 10);
    vec![(l - 1) * 10 + k, (l - 1) * 10 + (k + 1) % 10]
}

/// Checks the outputs of a [`dag_expr`] build (`paths` = nix-build's output, in order):
/// contents, and references as `nix-store -q --references` reports them through `daemon`
/// (one `nix-store` per path, all run by one shell so the chroot is entered once).
pub fn check_dag(store: &TestStore, client: Client, daemon: &Daemon, tag: &str, paths: &[String]) {
    let script: String = paths
        .iter()
        .map(|p| format!("echo '== {p}'; nix-store -q --references {p} || exit 1\n"))
        .collect();
    let listing = store
        .client(client)
        .daemon(daemon)
        .command("sh")
        .args(["-c", &script])
        .run();
    let mut refs: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let mut current = None;
    for line in listing.lines() {
        if let Some(p) = line.strip_prefix("== ") {
            current = Some(p);
            refs.entry(p).or_default();
        } else if let Some(p) = current {
            refs.entry(p).or_default().push(line.to_owned());
        }
    }
    for (i, p) in paths.iter().enumerate() {
        let dir = Path::new(p);
        assert_eq!(
            std::fs::read_to_string(dir.join("name")).unwrap().trim(),
            format!("{tag}{i}")
        );
        let deps: Vec<String> = dag_deps(i).iter().map(|&j| paths[j].clone()).collect();
        let listed: Vec<String> = std::fs::read_to_string(dir.join("deps"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(listed, deps);
        let mut got = refs.get(p.as_str()).cloned().unwrap_or_default();
        got.sort();
        let mut want = deps.clone();
        want.sort();
        assert_eq!(got, want, "{client}: references of {p}");
    }
}

/// What a builder sees of its sandbox (printed to `$out`): ids, `/etc`, which paths
/// outside its closure exist, the network; last, after a second (so that two probes
/// overlap), the host uid it runs as (`== host uid`, from `/proc/self/uid_map`).
/// `$outside` lists paths to look for.
pub const PROBE: &str = r#"
{
echo "== id"; id
echo "== hostname"; hostname
echo "== passwd"; cat /etc/passwd
echo "== group"; cat /etc/group
echo "== outside"; for p in $outside /etc/shadow /usr /root /home; do test -e $p && echo "$p visible" || echo "$p invisible"; done
echo "== store"; ls $NIX_STORE | sed "s/^[0-9a-z]\{32\}-//" | sort
echo "== network"; busybox nc -w 1 192.0.2.1 80 </dev/null 2>&1 | sed 's/^nc: //'
echo "== links"; busybox ip -o link show | busybox awk '{print $2}'
sleep 1
echo "== host uid"; busybox awk '{print $2}' /proc/self/uid_map
} > $out
"#;

/// Two probes that run at the same time (each sleeps a second).
pub fn probe_expr(tag: &str, outside: &[String]) -> String {
    let mk = |n: &str| {
        nixnest_testkit::Derivation::new(&format!("probe-{tag}-{n}"), PROBE)
            .env("outside", &outside.join(" "))
            .to_nix()
    };
    format!("[ ({}) ({}) ]", mk("a"), mk("b"))
}

/// A probe's observations without its host uid, and the host uid.
pub fn split_probe(text: &str) -> (String, u32) {
    let (obs, uid) = text.split_once("== host uid\n").expect("a finished probe");
    (obs.to_owned(), uid.trim().parse().expect("a uid"))
}
