//! Smoke tests of the test rig itself: each real client and daemon does the basic thing
//! against a throwaway store, so a later end-to-end failure is about nixnest, not the rig.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nixnest_testkit::*;

/// Asserts `path` is a store path of `store` named `name`.
fn assert_store_path(store: &TestStore, path: &str, name: &str) {
    let path = Path::new(path);
    assert_eq!(path.parent(), Some(store.store_dir().as_path()), "{path:?}");
    let base = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(base.len(), 32 + 1 + name.len(), "{base}");
    assert!(base.ends_with(&format!("-{name}")), "{base}");
}

#[test]
fn host_client_adds_to_local_store() {
    let store = TestStore::new();
    let file = store.write("hello.txt", "hello world\n");
    let path = store.nix("nix-store").arg("--add").arg(&file).run();
    assert_store_path(&store, &path, "hello.txt");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello world\n");
    assert!(store.db_path().exists());
    // The NAR hash of a regular file `hello world\n` (spec appendix B: sha256 34ca3ac6…).
    let hash = store.nix("nix-store").args(["-q", "--hash", &path]).run();
    assert_eq!(
        hash,
        "sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil"
    );
    store
        .nix("nix-store")
        .args(["--check-validity", &path])
        .run();
}

#[test]
fn clients_report_their_versions() {
    let store = TestStore::new();
    for client in Client::ALL {
        for program in ["nix", "nix-store"] {
            let out = store.client(client).command(program).arg("--version").run();
            assert!(
                out.ends_with(&format!(" {}", client.version())),
                "{client}: {program} --version said {out:?}"
            );
        }
    }
}

/// Plays the daemon's side of the handshake far enough to read the version each client
/// announces (2.8 waits for the daemon's magic; ≥2.24 pipeline it), then hangs up.
#[test]
fn clients_announce_their_protocol_version() {
    const WORKER_MAGIC_1: u64 = 0x6e69_7863;
    const WORKER_MAGIC_2: u64 = 0x6478_696f;
    let store = TestStore::new();
    for client in Client::ALL {
        let socket = store.socket_path(&format!("probe-{}", client.name()));
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut word = [0u8; 8];
            conn.read_exact(&mut word).unwrap();
            assert_eq!(u64::from_le_bytes(word), WORKER_MAGIC_1);
            conn.write_all(&WORKER_MAGIC_2.to_le_bytes()).unwrap();
            conn.write_all(&(0x100u64 | 38).to_le_bytes()).unwrap();
            conn.read_exact(&mut word).unwrap();
            u64::from_le_bytes(word)
        });
        let out = store
            .client(client)
            .socket(&socket)
            .command("nix-store")
            .args(["-q", "--hash"])
            .arg(store.store_dir().join("00000000000000000000000000000000-x"))
            .run_failure();
        let version = server.join().unwrap();
        assert_eq!(
            version,
            0x100 | u64::from(client.protocol_minor()),
            "{client}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every client adds a file through `daemon`; each path is then valid for the host client.
fn clients_add_through(daemon_client: Client) {
    let store = TestStore::new();
    let daemon = store.nix_daemon(daemon_client).start();
    for client in Client::ALL {
        let name = format!("from-{}.txt", client.name());
        let file = store.write(&name, format!("added by {client}\n"));
        let path = store
            .client(client)
            .daemon(&daemon)
            .command("nix-store")
            .arg("--add")
            .arg(&file)
            .run();
        assert_store_path(&store, &path, &name);
        store
            .client(Client::Host)
            .daemon(&daemon)
            .command("nix-store")
            .args(["--check-validity", &path])
            .run();
        // Also valid in the db itself, read without the daemon.
        store
            .nix("nix-store")
            .args(["--check-validity", &path])
            .run();
    }
    assert!(
        daemon.log().contains("accepted connection"),
        "{}",
        daemon.log()
    );
}

#[test]
fn clients_add_through_host_daemon() {
    clients_add_through(Client::Host);
}

#[test]
fn clients_add_through_trixie_daemon() {
    clients_add_through(Client::Trixie);
}

#[test]
fn clients_add_through_sid_daemon() {
    clients_add_through(Client::Sid);
}

#[test]
fn busybox_derivation_builds_locally() {
    let store = TestStore::new();
    let drv = Derivation::new("local", "echo built with $(busybox | head -1) > $out");
    let expr = store.write_expr("local.nix", &drv.to_nix());
    let out = store
        .nix("nix-build")
        .arg(&expr)
        .arg("--out-link")
        .arg(store.path("result"))
        .run();
    assert_store_path(&store, &out, "local");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("built with BusyBox"), "{text}");
    assert_eq!(
        std::fs::read_link(store.path("result")).unwrap(),
        Path::new(&out)
    );
}

/// The script of a build that records how it was sandboxed.
const PROBE: &str = r#"
mkdir $out
cat /proc/self/uid_map > $out/uid_map
id -u > $out/uid
if test -e /usr; then echo yes; else echo no; fi > $out/usr
hostname > $out/hostname
"#;

/// Builds [`PROBE`] through `daemon_client`'s daemon with sandbox and private build users;
/// asserts it ran in the sandbox as one of the build users.
fn sandboxed_build_through(daemon_client: Client, users: BuildUsers) {
    let store = TestStore::builder()
        .sandbox(true)
        .build_users(users)
        .build();
    let daemon = store.nix_daemon(daemon_client).start();
    let expr = store.write_expr(
        "probe.nix",
        &Derivation::new("probe", PROBE)
            .env("client", daemon_client.name())
            .to_nix(),
    );
    let out = store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-build")
        .arg(&expr)
        .arg("--out-link")
        .arg(store.path("result"))
        .run();
    let read = |f: &str| {
        std::fs::read_to_string(Path::new(&out).join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    // A user namespace maps the sandbox's uid 1000 to a build user on the host.
    let map: Vec<u32> = read("uid_map")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let build_users = store.build_users().unwrap();
    assert_eq!(map.len(), 3, "{map:?}");
    assert_eq!((map[0], map[2]), (1000, 1));
    assert!(
        build_users.contains_uid(map[1]),
        "{map:?} vs {build_users:?}"
    );
    assert_eq!(read("uid"), "1000");
    assert_eq!(read("usr"), "no", "the host file system leaked in");
    assert_eq!(read("hostname"), "localhost");
}

#[test]
fn busybox_derivation_builds_in_host_daemon_sandbox() {
    sandboxed_build_through(Client::Host, BuildUsers::nixbld());
}

#[test]
fn busybox_derivation_builds_in_trixie_daemon_sandbox() {
    sandboxed_build_through(Client::Trixie, BuildUsers::private(2));
}

#[test]
fn busybox_derivation_builds_in_sid_daemon_sandbox() {
    sandboxed_build_through(Client::Sid, BuildUsers::private(2));
}

#[test]
fn users_are_allowed_or_refused_by_the_daemon() {
    let allowed = users::allowed_user();
    let denied = users::denied_user();
    let store = TestStore::builder()
        .conf("allowed-users = @nixnest-users")
        .build();
    let file = store.write("user.txt", "from a user\n");
    for daemon_client in [Client::Host, Client::Sid] {
        let daemon = store.nix_daemon(daemon_client).start();
        for client in Client::ALL {
            let path = store
                .client(client)
                .daemon(&daemon)
                .user(&allowed)
                .command("nix-store")
                .arg("--add")
                .arg(&file)
                .run();
            assert_store_path(&store, &path, "user.txt");
            store
                .client(client)
                .daemon(&daemon)
                .user(&denied)
                .command("nix-store")
                .arg("--add")
                .arg(&file)
                .run_failure();
        }
        let log = daemon.log();
        assert!(log.contains("user nixnest-user"), "{log}");
        assert!(
            log.contains("user 'nixnest-denied' is not allowed to connect"),
            "{log}"
        );
    }
}

#[test]
fn users_run_with_their_own_ids() {
    let user = users::allowed_user();
    let store = TestStore::new();
    for client in Client::ALL {
        let id = store
            .client(client)
            .user(&user)
            .command("sh")
            .args(["-c", "id -u; id -g; id -Gn; echo $HOME"])
            .run();
        let lines: Vec<&str> = id.lines().collect();
        assert_eq!(lines[0], user.uid.to_string(), "{client}");
        assert_eq!(lines[1], user.gid.to_string(), "{client}");
        assert!(lines[2].split(' ').any(|g| g == "nixnest-users"), "{id}");
        assert_eq!(Path::new(lines[3]), store.home(Some(&user)), "{client}");
    }
}

#[test]
fn private_build_users_are_exclusive() {
    let a = BuildUsers::private(1);
    let b = BuildUsers::private(1);
    assert_ne!(a.group(), b.group());
    assert!(!a.users().iter().any(|u| b.contains_uid(u.uid)));
    let (gid, members) = users::lookup_group(a.group()).unwrap();
    assert_eq!(gid, a.gid());
    assert!(members.contains(&a.users()[0].name), "{members:?}");
}

#[test]
fn dropping_a_daemon_kills_it() {
    let store = TestStore::new();
    let daemons = [
        store.nix_daemon(Client::Host),
        store.nix_daemon(Client::Sid),
        // The generic way (as for nixnest-daemon), without a PID namespace.
        store.daemon("plain", "nix-daemon").isolate_pids(false),
    ];
    for spec in daemons {
        let daemon = spec.start();
        let pid = daemon.main_pid();
        let socket = daemon.socket().to_owned();
        let name = daemon.name().to_owned();
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "{name}");
        assert!(daemon::is_listening(&socket), "{name}");
        drop(daemon);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{name}");
        assert!(!daemon::is_listening(&socket), "{name}");
    }
}

#[test]
fn two_daemons_serve_one_store() {
    let store = TestStore::new();
    let first = store.nix_daemon(Client::Host).start();
    let second = store.nix_daemon(Client::Host).name("second").start();
    assert_ne!(first.socket(), second.socket());
    let file = store.write("twice.txt", "twice\n");
    let a = store
        .client(Client::Host)
        .daemon(&first)
        .command("nix-store")
        .arg("--add")
        .arg(&file)
        .run();
    let b = store
        .client(Client::Host)
        .daemon(&second)
        .command("nix-store")
        .arg("--add")
        .arg(&file)
        .run();
    assert_eq!(a, b);
    assert!(second.log_path().ends_with("logs/second.log"));
}

#[test]
fn chroot_clients_see_only_the_test_root_under_tmp() {
    let store = TestStore::new();
    let _other = TestStore::new();
    for client in [Client::Trixie, Client::Sid] {
        let ls = store.client(client).command("ls").arg("/tmp").run();
        let root = store.root().file_name().unwrap().to_str().unwrap();
        assert_eq!(ls, root, "{client}");
        let pwd = store
            .client(client)
            .command("pwd")
            .current_dir(store.path("home"))
            .run();
        assert_eq!(Path::new(&pwd), store.path("home"));
    }
}

#[test]
#[should_panic(expected = "command failed: false")]
fn run_panics_with_the_command() {
    std::process::Command::new("false").run();
}

#[test]
fn run_feeds_input_and_captures_output() {
    let out = std::process::Command::new("tr")
        .args(["a-z", "A-Z"])
        .run_with_input(b"shout\n");
    assert_eq!(out.stdout, b"SHOUT\n");
}

#[test]
#[should_panic(expected = "command timed out after 200ms: sleep 30")]
fn run_kills_a_command_that_hangs() {
    std::process::Command::new("sleep")
        .arg("30")
        .run_within(std::time::Duration::from_millis(200));
}

#[test]
fn chroot_clients_build_locally_in_sandbox() {
    for client in [Client::Trixie, Client::Sid] {
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(1))
            .build();
        let expr = store.write_expr(
            "local.nix",
            &Derivation::new("local", "id -u > $out").to_nix(),
        );
        let out = store
            .client(client)
            .command("nix-build")
            .arg(&expr)
            .arg("--no-out-link")
            .run();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "1000\n", "{client}");
    }
}
