//! The comparison harness of the `daemon_*` end-to-end tests: every scenario runs, per client,
//! against each *reference* daemon (the real `nix-daemon`s) and then against the *candidate*
//! (nixnest), each time on a fresh store at the **same paths**, and every step of the
//! candidate's transcript must equal that step of a reference after explicit normalisations.
//!
//! # Why the same paths, one after the other
//!
//! A store path's hash depends on the store dir, and so do NAR hashes of anything that
//! refers to a store path. Two stores at different locations can never give byte-identical
//! answers, and mapping one onto the other would be guesswork. So each client gets one root
//! directory (`/tmp/nixnest-cmp-XXXXXX/<client>`); a reference side builds its store there,
//! runs the scenario, and is removed completely (daemon killed, directory deleted) before the
//! next side builds its store at the same place. Different tests use different roots, so
//! tests still run in parallel.
//!
//! # Two references for the 2.8 client
//!
//! Daemon-side messages changed between Nix releases (`deleting unused links...` notes,
//! error wording, GC progress), and nixnest speaks to a 2.8 client as some real daemon would.
//! So the 2.8 client's steps are recorded against its own 2.8 daemon *and* the sid 2.34
//! daemon, and a candidate step passes if it equals either (the summary line counts the steps
//! that equal only the second). Each step is still compared whole against one real daemon's
//! answer; nothing is merged.
//!
//! # Which daemons
//!
//! | env | values | default |
//! |---|---|---|
//! | `NIXNEST_E2E_REFERENCE` | `nix-host`, `nix-trixie`, `nix-sid` (one reference) | the 2.8 client: the host's `nix-daemon` 2.8, and the sid `nix-daemon` 2.34 as a second reference; the 2.26 and 2.34 clients: the sid `nix-daemon` 2.34 (see [`Server::references_for`]) |
//! | `NIXNEST_E2E_CANDIDATE` | `nixnest`, `reference` (the reference daemon again: proves the harness), `nix-host`, `nix-trixie`, `nix-sid` | `nixnest` |
//! | `NIXNEST_E2E_CLIENTS` | comma-separated `host`, `trixie`, `sid` | all three |
//! | `NIXNEST_E2E_STEP_TIMEOUT` | seconds one client command may take | 60 |
//! | `NIXNEST_E2E_ISOLATE` | `0`: daemons share the test's PID namespace | `1`: each daemon is init of its own (clients appear as pid 0) |
//! | `NIXNEST_E2E_SHOW` | `1`: print every transcript | off |
//!
//! # A transcript
//!
//! A scenario is a function of a [`Side`] that runs client commands through [`Side::step`]
//! (recording exit status, stdout and stderr) and records observations of its own
//! ([`Side::observe`], [`Side::snapshot`]: the store's database rows and file tree). Steps that
//! must succeed (or fail) on the *reference* are marked [`Step::ok`] / [`Step::fails`]: if the
//! reference does otherwise, the scenario itself is wrong and the test panics at once; on the
//! candidate, any deviation is just a difference in the comparison.
//!
//! The value a step returns (its stdout, trimmed) is always the *primary reference's*, so
//! later commands of every side get the same arguments even when the candidate got something
//! wrong.
//!
//! # Normalisations
//!
//! Nothing is normalised unless a step asks for it with a [`Norm`]; each variant documents
//! why the difference it removes is legitimate. Store dirs never need normalising (same
//! paths), neither do socket paths (both daemons listen on `<root>/s/daemon.sock`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fixture;
pub mod norm;
pub mod snapshot;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nixnest_testkit::run::{describe, try_run};
use nixnest_testkit::*;

pub use norm::Norm;

/// The name of every compared daemon: socket `<root>/s/daemon.sock`, log `<root>/logs/daemon.log`.
pub const DAEMON: &str = "daemon";

/// A daemon implementation that can serve a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The real `nix-daemon` of that Nix.
    Nix(Client),
    /// `nixnest-daemon` from this workspace.
    Nixnest,
}

impl Server {
    fn parse(var: &str, s: &str) -> Server {
        match s {
            "nix-host" => Server::Nix(Client::Host),
            "nix-trixie" => Server::Nix(Client::Trixie),
            "nix-sid" => Server::Nix(Client::Sid),
            "nixnest" => Server::Nixnest,
            other => panic!(
                "{var}={other:?}: expected nixnest, nix-host, nix-trixie or nix-sid (or reference)"
            ),
        }
    }

    /// The reference daemons for `client`, primary first: for the 2.8 client the host's
    /// `nix-daemon` 2.8 and, as a second reference, the sid 2.34 daemon (a 2.8 client is
    /// served correctly by either, and their messages differ); for the 2.26 and 2.34 clients
    /// the sid 2.34 daemon. A candidate's step passes when it equals the step of *any*
    /// reference. `NIXNEST_E2E_REFERENCE` names a single reference instead.
    pub fn references_for(client: Client) -> Vec<Server> {
        match std::env::var("NIXNEST_E2E_REFERENCE") {
            Ok(s) if !s.is_empty() => vec![Server::parse("NIXNEST_E2E_REFERENCE", &s)],
            _ => match client {
                // Without the sid chroot (then the 2.26/2.34 clients are skipped too), the
                // 2.8 client has its own daemon only.
                Client::Host if !Client::Sid.is_available() => vec![Server::Nix(Client::Host)],
                Client::Host => vec![Server::Nix(Client::Host), Server::Nix(Client::Sid)],
                Client::Trixie | Client::Sid => vec![Server::Nix(Client::Sid)],
            },
        }
    }

    /// The primary reference daemon for `client` (see [`Server::references_for`]).
    pub fn reference_for(client: Client) -> Server {
        Server::references_for(client)[0]
    }

    /// The daemon under test for `client` (see the module docs).
    pub fn candidate_for(client: Client) -> Server {
        match std::env::var("NIXNEST_E2E_CANDIDATE") {
            Ok(s) if s == "reference" => Server::reference_for(client),
            Ok(s) if !s.is_empty() => Server::parse("NIXNEST_E2E_CANDIDATE", &s),
            _ => Server::Nixnest,
        }
    }

    /// How to start it on `store`, on the socket every side uses; in a PID namespace of its
    /// own unless `NIXNEST_E2E_ISOLATE=0`.
    pub fn spec(self, store: &TestStore) -> DaemonSpec {
        let spec = match self {
            Server::Nix(client) => store.nix_daemon(client).name(DAEMON),
            Server::Nixnest => store.daemon(DAEMON, cargo_bin("nixnest-daemon")),
        };
        spec.isolate_pids(isolate())
    }

    pub fn is_nixnest(self) -> bool {
        self == Server::Nixnest
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Nix(c) => write!(f, "nix-daemon {}", c.version()),
            Server::Nixnest => f.write_str("nixnest-daemon"),
        }
    }
}

/// The clients to run: `NIXNEST_E2E_CLIENTS` or all, skipping (with a message) chroot clients
/// that are not prepared.
pub fn clients() -> Vec<Client> {
    let wanted: Vec<Client> = match std::env::var("NIXNEST_E2E_CLIENTS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|name| {
                Client::ALL
                    .into_iter()
                    .find(|c| c.name() == name.trim())
                    .unwrap_or_else(|| panic!("NIXNEST_E2E_CLIENTS: unknown client {name:?}"))
            })
            .collect(),
        _ => Client::ALL.to_vec(),
    };
    wanted
        .into_iter()
        .filter(|c| {
            let ok = c.is_available();
            if !ok {
                eprintln!("SKIPPED client {c}: its chroot is missing (run tests/prepare-clients)");
            }
            ok
        })
        .collect()
}

/// Whether daemons run in a PID namespace of their own (`NIXNEST_E2E_ISOLATE`, default yes).
/// Isolated, a daemon sees its clients as pid 0 (as for clients in containers) and finds no
/// runtime roots of theirs; both sides of a comparison always run the same way.
pub fn isolate() -> bool {
    std::env::var("NIXNEST_E2E_ISOLATE").map_or(true, |v| v != "0")
}

fn step_timeout() -> Duration {
    let secs = std::env::var("NIXNEST_E2E_STEP_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Which of the two runs a [`Side`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Reference,
    Candidate,
}

/// What happened to one step on one side.
#[derive(Clone, Debug)]
pub struct Record {
    pub label: String,
    /// The command line, or `(observation)`.
    pub command: String,
    /// `exit N`, `signal N`, `timed out`, `not run: …`, or empty for observations.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// The raw stdout, trimmed: what [`Step::run`] returns.
    pub value: String,
}

/// One side of a comparison: a fresh store at the client's root, the daemon serving it, and
/// the transcript so far.
pub struct Side<'r> {
    pub client: Client,
    pub server: Server,
    pub role: Role,
    pub store: TestStore,
    daemon: Option<Daemon>,
    records: Vec<Record>,
    reference: Option<&'r [Record]>,
    stopped: Option<String>,
    daemon_logs: String,
    builder: &'r dyn Fn(Client) -> TestStoreBuilder,
}

impl<'r> Side<'r> {
    /// Replaces the store by a fresh, empty one at the same paths (made by the scenario's
    /// store options): the daemon is stopped and the old root removed first. For "a second
    /// store": paths exported from the first one keep their names in the second.
    pub fn fresh_store(&mut self) {
        self.stop_daemon();
        let root = self.store.root().to_owned();
        // The old root disappears with its last handle; hold a throwaway store meanwhile.
        let old = std::mem::replace(&mut self.store, TestStore::new());
        drop(old);
        self.store = (self.builder)(self.client).root(&root).build();
    }

    /// Starts the daemon under comparison (as configured by `adjust`, e.g.
    /// `|s| s.isolate_pids(false)`); a running one is stopped first.
    pub fn start_daemon_with(&mut self, adjust: impl FnOnce(DaemonSpec) -> DaemonSpec) {
        self.stop_daemon();
        let spec = adjust(self.server.spec(&self.store));
        self.daemon = Some(spec.start());
    }

    /// Starts `spec` as the daemon of this side (for daemons started some other way than
    /// [`Server::spec`], e.g. through socket activation); a running one is stopped first.
    pub fn start_spec(&mut self, spec: DaemonSpec) {
        self.stop_daemon();
        self.daemon = Some(spec.start());
    }

    /// Starts the daemon under comparison with the defaults.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(|s| s);
    }

    /// Stops the daemon (keeping its log for the report).
    pub fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            self.daemon_logs.push_str(&daemon.log());
            daemon.stop();
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon
            .as_ref()
            .expect("the scenario must start_daemon() first")
    }

    /// The client under test, through the daemon, as root.
    pub fn nix(&self) -> Nix<'_> {
        self.nix_with(self.client)
    }

    /// Another client through the same daemon (for preparing what this client reads).
    pub fn nix_with(&self, client: Client) -> Nix<'_> {
        self.store.client(client).daemon(self.daemon())
    }

    /// `program args…` of the client under test, through the daemon, as root, in the root
    /// directory of the store (so relative paths such as `in/file` work for every client).
    pub fn cmd<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.nix().command(program);
        cmd.current_dir(self.store.root()).args(args);
        cmd
    }

    /// Like [`Side::cmd`], as `user` (root if `None`).
    pub fn cmd_as<I, S>(&self, user: Option<&TestUser>, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let nix = match user {
            Some(user) => self.nix().user(user),
            None => self.nix(),
        };
        let mut cmd = nix.command(program);
        cmd.current_dir(self.store.root()).args(args);
        cmd
    }

    /// The client under test, through the daemon, as `user`.
    pub fn nix_as(&self, user: &TestUser) -> Nix<'_> {
        self.nix().user(user)
    }

    /// `program` of the host's Nix 2.8 on the store directly (`NIX_REMOTE=local`): for
    /// preparation that needs no daemon, such as building fixtures.
    pub fn local(&self, program: &str) -> Command {
        self.store.client(Client::Host).local().command(program)
    }

    /// A step: `cmd` will run (once [`Step::run`] is called) and be recorded as `label`.
    pub fn step(&mut self, label: impl Into<String>, cmd: Command) -> Step<'_, 'r> {
        Step {
            side: self,
            label: label.into(),
            cmd,
            input: None,
            norms: Vec::new(),
            expect: Expect::Any,
        }
    }

    /// Runs a preparation command that is not compared but must succeed on both sides
    /// (the scenario is wrong otherwise, or the candidate is too broken to go on): panics.
    pub fn prep(&mut self, mut cmd: Command) -> String {
        cmd.run()
    }

    /// Records a value the test computed (a file listing, a database dump, …).
    pub fn observe(&mut self, label: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        self.records.push(Record {
            label: label.into(),
            command: "(observation)".into(),
            status: String::new(),
            stdout: value.clone(),
            stderr: String::new(),
            value,
        });
    }

    /// Records the store's state: database rows and file tree (see [`snapshot`]).
    pub fn snapshot(&mut self, label: &str) {
        let text = snapshot::store_state(&self.store);
        self.observe(format!("store state: {label}"), text);
    }

    /// `<root>/<rel>` of this side's store.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.store.path(rel)
    }

    /// The store path `<store dir>/<base>` as a string.
    pub fn store_path(&self, base: &str) -> String {
        self.store.store_dir().join(base).display().to_string()
    }

    fn reference_record(&self, index: usize) -> Option<&'r Record> {
        self.reference.and_then(|r| r.get(index))
    }
}

impl Drop for Side<'_> {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Any,
    Success,
    Failure,
}

/// A command about to be recorded; see [`Side::step`].
#[must_use = "a step does nothing until run"]
pub struct Step<'s, 'r> {
    side: &'s mut Side<'r>,
    label: String,
    cmd: Command,
    input: Option<Vec<u8>>,
    norms: Vec<Norm>,
    expect: Expect,
}

impl Step<'_, '_> {
    /// Feeds `input` on stdin.
    pub fn input(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.input = Some(input.into());
        self
    }

    /// Normalises stdout and stderr with `norm` (in the order given) before comparing.
    pub fn norm(mut self, norm: Norm) -> Self {
        self.norms.push(norm);
        self
    }

    /// Normalises with each of `norms`, in order.
    pub fn norms(mut self, norms: impl IntoIterator<Item = Norm>) -> Self {
        self.norms.extend(norms);
        self
    }

    /// The reference must succeed.
    pub fn ok(mut self) -> Self {
        self.expect = Expect::Success;
        self
    }

    /// The reference must fail.
    pub fn fails(mut self) -> Self {
        self.expect = Expect::Failure;
        self
    }

    /// Runs and records the step; returns the reference's trimmed stdout.
    pub fn run(self) -> String {
        self.run_output().0
    }

    /// Runs and records the step; returns the reference's trimmed stdout and this side's
    /// own raw output (`None` if it did not run or timed out).
    pub fn run_output(self) -> (String, Option<Output>) {
        let Step {
            side,
            label,
            mut cmd,
            input,
            norms,
            expect,
        } = self;
        let index = side.records.len();
        if let Some(reference) = side.reference_record(index) {
            assert_eq!(
                reference.label, label,
                "the scenario is not deterministic: step {index} differs between the sides"
            );
        }
        let command = describe(&cmd);
        let (record, output) = if let Some(why) = &side.stopped {
            let record = Record {
                label,
                command,
                status: format!("not run: {why}"),
                stdout: String::new(),
                stderr: String::new(),
                value: String::new(),
            };
            (record, None)
        } else {
            let started = Instant::now();
            let timeout = step_timeout();
            match try_run(&mut cmd, input.as_deref(), timeout) {
                Ok(out) => {
                    let status = match (out.status.code(), out.status.signal()) {
                        (Some(code), _) => format!("exit {code}"),
                        (None, Some(sig)) => format!("signal {sig}"),
                        (None, None) => format!("{}", out.status),
                    };
                    if show() {
                        eprintln!(
                            "[{:?} {} {:.1}s] {label}",
                            side.role,
                            side.client.name(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    let mut stdout = out.stdout.clone();
                    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    for norm in &norms {
                        stdout = norm.apply_bytes(&stdout);
                        stderr = norm.apply(&stderr);
                    }
                    let record = Record {
                        label,
                        command,
                        status,
                        stdout: String::from_utf8_lossy(&stdout).into_owned(),
                        stderr,
                        value: String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
                    };
                    (record, Some(out))
                }
                Err(out) => {
                    side.stopped = Some(format!("step {index} ({label}) timed out"));
                    let record = Record {
                        label,
                        command,
                        status: format!("timed out after {timeout:?}"),
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                        value: String::new(),
                    };
                    (record, None)
                }
            }
        };
        if side.role == Role::Reference {
            let good = match expect {
                Expect::Any => true,
                Expect::Success => record.status == "exit 0",
                Expect::Failure => record.status.starts_with("exit ") && record.status != "exit 0",
            };
            assert!(
                good,
                "the reference {} did not {} step {index} ({}) with client {}; the scenario is wrong:\n{}",
                side.server,
                if expect == Expect::Success {
                    "pass"
                } else {
                    "fail"
                },
                record.label,
                side.client,
                render(&record)
            );
        }
        let value = match side.reference_record(index) {
            Some(reference) => reference.value.clone(),
            None => record.value.clone(),
        };
        side.records.push(record);
        (value, output)
    }
}

fn show() -> bool {
    std::env::var("NIXNEST_E2E_SHOW").is_ok_and(|v| v == "1")
}

fn indent(text: &str) -> String {
    const MAX: usize = 6000;
    let text = if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}\n… ({} more bytes)", &text[..cut], text.len() - cut)
    } else {
        text.to_owned()
    };
    text.trim_end()
        .lines()
        .map(|l| format!("      | {l}\n"))
        .collect()
}

fn render(r: &Record) -> String {
    let mut s = String::new();
    if !r.status.is_empty() {
        let _ = writeln!(s, "    status: {}", r.status);
    }
    let _ = writeln!(s, "    stdout:\n{}", indent(&r.stdout));
    if !r.stderr.trim().is_empty() {
        let _ = writeln!(s, "    stderr:\n{}", indent(&r.stderr));
    }
    s
}

/// The comparison of one scenario over all clients: collects differences and panics with
/// all of them at the end.
pub struct Comparison {
    scenario: String,
    report: String,
    differences: usize,
    steps: usize,
    started: Instant,
    parent: tempfile::TempDir,
}

impl Comparison {
    pub fn new(scenario: &str) -> Self {
        let parent = tempfile::Builder::new()
            .prefix("nixnest-cmp-")
            .tempdir_in("/tmp")
            .expect("creating the comparison dir under /tmp");
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod comparison dir");
        Comparison {
            scenario: scenario.to_owned(),
            report: String::new(),
            differences: 0,
            steps: 0,
            started: Instant::now(),
            parent,
        }
    }

    /// The root every side of `client` uses.
    fn root(&self, client: Client) -> PathBuf {
        self.parent.path().join(client.name())
    }

    /// Runs `scenario` for every selected client on a reference and a candidate side (stores
    /// made by `store`, then placed at the client's root) and compares the transcripts.
    pub fn run(
        &mut self,
        store: impl Fn(Client) -> TestStoreBuilder,
        scenario: impl Fn(&mut Side),
    ) -> &mut Self {
        for client in clients() {
            self.run_client(client, &store, &scenario);
        }
        self
    }

    /// Like [`Comparison::run`] for one client only (a scenario that needs, e.g., the 2.34
    /// client's commands), if it is selected.
    pub fn run_one(
        &mut self,
        client: Client,
        store: impl Fn(Client) -> TestStoreBuilder,
        scenario: impl Fn(&mut Side),
    ) -> &mut Self {
        if clients().contains(&client) {
            self.run_client(client, &store, &scenario);
        }
        self
    }

    fn run_client(
        &mut self,
        client: Client,
        store: &impl Fn(Client) -> TestStoreBuilder,
        scenario: &impl Fn(&mut Side),
    ) {
        let root = self.root(client);
        let candidate_server = Server::candidate_for(client);
        let started = Instant::now();
        let mut references: Vec<(Server, Vec<Record>)> = Vec::new();
        for server in Server::references_for(client) {
            let primary = references.first().map(|(_, r)| r.as_slice());
            let (records, _log) = run_side(
                client,
                server,
                Role::Reference,
                &root,
                store,
                scenario,
                primary,
            );
            references.push((server, records));
        }
        let (candidate, candidate_log) = run_side(
            client,
            candidate_server,
            Role::Candidate,
            &root,
            store,
            scenario,
            Some(&references[0].1),
        );
        let same = |r: &Record, c: &Record| {
            r.status == c.status && r.stdout == c.stdout && r.stderr == c.stderr
        };
        let mut block = String::new();
        let (mut differing, mut secondary_only) = (0, 0);
        let n = references
            .iter()
            .map(|(_, r)| r.len())
            .chain([candidate.len()])
            .max()
            .unwrap_or(0);
        for i in 0..n {
            let c = candidate.get(i);
            let matches: Vec<bool> = references
                .iter()
                .map(|(_, r)| matches!((r.get(i), c), (Some(r), Some(c)) if same(r, c)))
                .collect();
            if matches.first() == Some(&true) {
                continue;
            }
            if matches.contains(&true) {
                secondary_only += 1;
                continue;
            }
            differing += 1;
            let any = references.iter().find_map(|(_, r)| r.get(i)).or(c);
            let label = any.map_or("", |x| x.label.as_str());
            let command = any.map_or("", |x| x.command.as_str());
            let _ = writeln!(block, "  step {i}: {label}\n    command: {command}");
            for (server, records) in &references {
                let _ = writeln!(block, "   reference ({server}):");
                block.push_str(
                    &records
                        .get(i)
                        .map_or_else(|| "    (missing)\n".into(), render),
                );
            }
            let _ = writeln!(block, "   candidate ({candidate_server}):");
            block.push_str(&c.map_or_else(|| "    (missing)\n".into(), render));
        }
        self.steps += n;
        let names: Vec<String> = references.iter().map(|(s, _)| s.to_string()).collect();
        let also = if secondary_only > 0 {
            format!(", {secondary_only} equal only to the second reference")
        } else {
            String::new()
        };
        let summary = format!(
            "[{}] client {client}: {n} steps, {differing} differ{also} ({} vs {candidate_server}, {:.1}s)",
            self.scenario,
            names.join(" | "),
            started.elapsed().as_secs_f64()
        );
        eprintln!("{summary}");
        if show() {
            for r in &candidate {
                eprintln!("--- {} ---\n{}", r.label, render(r));
            }
        }
        if differing > 0 {
            self.differences += differing;
            let _ = writeln!(self.report, "{summary}\n{block}");
            let tail: Vec<&str> = candidate_log.lines().rev().take(40).collect();
            let _ = writeln!(
                self.report,
                "  candidate daemon log (last {} lines):\n{}",
                tail.len(),
                indent(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            );
        }
    }

    /// Panics with every difference found, if any.
    pub fn finish(&mut self) {
        eprintln!(
            "[{}] {} steps compared in {:.1}s, {} differ",
            self.scenario,
            self.steps,
            self.started.elapsed().as_secs_f64(),
            self.differences
        );
        if self.steps == 0 {
            eprintln!(
                "SKIPPED [{}]: none of its clients is selected",
                self.scenario
            );
            return;
        }
        if self.differences > 0 {
            panic!(
                "[{}] the candidate answered differently from the reference in {} step(s):\n\n{}",
                self.scenario, self.differences, self.report
            );
        }
    }
}

fn run_side(
    client: Client,
    server: Server,
    role: Role,
    root: &Path,
    builder: &dyn Fn(Client) -> TestStoreBuilder,
    scenario: &impl Fn(&mut Side),
    reference: Option<&[Record]>,
) -> (Vec<Record>, String) {
    assert!(
        !root.exists(),
        "{} still exists: the previous side was not cleaned up",
        root.display()
    );
    let store = builder(client).root(root).build();
    let mut side = Side {
        client,
        server,
        role,
        store,
        daemon: None,
        records: Vec::new(),
        reference,
        stopped: None,
        daemon_logs: String::new(),
        builder,
    };
    scenario(&mut side);
    side.stop_daemon();
    let records = std::mem::take(&mut side.records);
    let logs = std::mem::take(&mut side.daemon_logs);
    drop(side);
    (records, logs)
}

/// Runs `f` with a fresh comparison and finishes it.
pub fn compare(
    scenario: &str,
    store: impl Fn(Client) -> TestStoreBuilder,
    body: impl Fn(&mut Side),
) {
    Comparison::new(scenario).run(store, body).finish();
}

/// The default store options of the comparisons.
pub fn plain_store(_client: Client) -> TestStoreBuilder {
    TestStore::builder()
}
