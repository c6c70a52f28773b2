//! End-to-end builds in the sandbox, compared with the real `nix-daemon` 2.8 (host Nix,
//! `sandbox = true`, `build-users-group = nixbld`) building the same expressions on a store
//! of its own. The two store dirs (`/tmp/nixnest-XXXXXX/store`) have the same length but
//! different names, so every store path differs; observations are compared after replacing
//! the store dir, the test root and every 32-character hash part by placeholders.
//! Root only (see `common::skip_reason`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Collect, Fx, normalise};
use nixnest_build::BuildStatus;
use nixnest_core::{Hash, nixbase32};
use nixnest_testkit::{BuildUsers, Client, Daemon, Derivation as Expr, RunExt, TestStore};

/// What a builder sees of its sandbox, printed to `$out`.
const PROBE: &str = r#"
set -u
{
echo "== id"; id
echo "== hostname"; hostname
echo "== domainname"; cat /proc/sys/kernel/domainname
echo "== passwd"; cat /etc/passwd
echo "== group"; cat /etc/group
echo "== hosts"; cat /etc/hosts
echo "== ls /etc"; ls -a /etc
echo "== ls /"; ls -a /
echo "== ls /dev"; ls -a /dev
echo "== ls /dev/pts"; ls -a /dev/pts
echo "== ls store"; ls -a $NIX_STORE | sed "s/^[0-9a-z]\{32\}-//" | sort
echo "== ls /build"; ls -a /build
echo "== pwd"; pwd
echo "== modes"; for p in / /tmp /build /etc /etc/passwd /etc/group /etc/hosts $NIX_STORE /dev/null /dev/shm /dev/pts/ptmx /proc; do stat -c '%n %a %U %G' $p; done
echo "== uid_map"; busybox awk '{print $1, $3}' /proc/self/uid_map
echo "== gid_map"; busybox awk '{print $1, $3}' /proc/self/gid_map
echo "== setgroups"; cat /proc/self/setgroups
echo "== status"; grep -E '^(NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapAmb)' /proc/self/status
echo "== personality"; cat /proc/self/personality
echo "== ulimit -c"; ulimit -c
echo "== umask"; umask
echo "== pid"; echo $$
echo "== stdin"; busybox readlink /proc/self/fd/0
echo "== fds"; ls /proc/self/fd
echo "== tty"; test -t 2 && echo "stderr is a tty" || echo "stderr is not a tty"
echo "== interfaces"; busybox awk 'NR>2 {print $1}' /proc/net/dev
echo "== lo"; busybox ip -o link show lo | busybox awk '{print $2, $3}'
echo "== network"; busybox nc -w 1 192.0.2.1 80 </dev/null 2>&1 | sed 's/^nc: //'
echo "== outside"; for p in $outside /etc/shadow /usr /var /root /home $NIX_STORE/../var; do test -e $p && echo "$p visible" || echo "$p invisible"; done
echo "== setuid"; touch /tmp/f; chmod 4755 /tmp/f 2>&1; chmod 2755 /tmp/f 2>&1; chmod 755 /tmp/f && echo "plain chmod ok"
echo "== mounts"; busybox awk '{print $5}' /proc/self/mountinfo | sort
echo "== env"; env | sort
} > $out
"#;

const FAIL: &str = "for i in $(seq 1 15); do echo line $i; done; exit 3";

fn fod(hash_hex: &str) -> String {
    Expr::new("fod", "echo hello > $out")
        .env("outputHashMode", "flat")
        .env("outputHashAlgo", "sha256")
        .env("outputHash", hash_hex)
        .to_nix()
}

/// The error CppNix's client printed: the text after `error: `, continuation lines
/// un-indented (the client indents them by 7 columns).
fn cppnix_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let start = stderr.find("error: ").expect("an error message") + "error: ".len();
    let mut lines = stderr[start..].trim_end().lines();
    let mut msg = lines.next().unwrap().to_owned();
    for l in lines {
        msg.push('\n');
        msg.push_str(l.strip_prefix("       ").unwrap_or(l));
    }
    msg
}

/// `nix-build <file>` through `daemon`, returning the whole output (success or not).
fn cppnix_build(ts: &TestStore, daemon: &Daemon, file: &str, expr: &str, args: &[&str]) -> Output {
    let path = ts.write_expr(file, expr);
    ts.client(Client::Host)
        .daemon(daemon)
        .command("nix-build")
        .arg(&path)
        .arg("--no-out-link")
        .args(args)
        .run_unchecked()
}

fn norm_fx(fx: &Fx, s: &str) -> String {
    normalise(s, fx.store.store_dir().as_str()).replace(&*fx.ts.root().to_string_lossy(), "/ROOT")
}

fn norm_ts(ts: &TestStore, s: &str) -> String {
    normalise(s, &ts.store_dir().to_string_lossy()).replace(&*ts.root().to_string_lossy(), "/ROOT")
}

#[test]
fn matches_cppnix() {
    require_env!();
    let fx = Fx::new(2);
    let ts = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::nixbld())
        .build();
    ts.busybox();
    let daemon = ts.nix_daemon(Client::Host).start();
    let probe = |root: &std::path::Path| {
        Expr::new("probe", PROBE)
            .env("outside", &root.join("bb").to_string_lossy())
            .to_nix()
    };

    // 1. What the builder sees.
    let (_, ours, _) = fx.build_expr("probe.nix", &probe(fx.ts.root()));
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let ours_text = norm_fx(&fx, &fx.read_output(&ours, "out"));
    let out = cppnix_build(&ts, &daemon, "probe.nix", &probe(ts.root()), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let theirs_text = norm_ts(&ts, &std::fs::read_to_string(path).unwrap());
    if ours_text != theirs_text {
        eprintln!("--- nixnest ---\n{ours_text}\n--- nix-daemon 2.8 ---\n{theirs_text}");
    }
    assert_eq!(
        ours_text, theirs_text,
        "the sandbox differs from nix-daemon 2.8's"
    );
    for want in [
        "uid=1000(nixbld) gid=100(nixbld)",
        "== hostname\nlocalhost\n",
        "== domainname\n(none)\n",
        "== interfaces\nlo:\n== lo\nlo: <LOOPBACK,UP,LOWER_UP>",
        "Network is unreachable",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "chmod: /tmp/f: Operation not permitted",
        "/ROOT/bb invisible",
        "/etc/shadow invisible",
    ] {
        assert!(ours_text.contains(want), "missing {want:?}");
    }
    eprintln!(
        "sandbox setup: {:.1} ms in the helper (namespaces, mounts, exec), {:.1} ms preparing",
        ours.timings.sandbox_setup.as_secs_f64() * 1e3,
        ours.timings.prepare.as_secs_f64() * 1e3
    );

    // 2. A failing builder: status, exit code, the last 10 lines.
    let fail = Expr::new("fail", FAIL).to_nix();
    let (drv, ours, _) = fx.build_expr("fail.nix", &fail);
    assert_eq!(ours.status, BuildStatus::PermanentFailure);
    let msg = ours.error_msg.clone().unwrap();
    let lines: String = (6..=15).map(|i| format!("> line {i}\n")).collect();
    assert_eq!(
        msg,
        format!(
            "builder for '{d}' failed with exit code 3;\nlast 10 log lines:\n{lines}For full logs, run 'nix log {d}'.",
            d = fx.print(&drv)
        )
    );
    let out = cppnix_build(&ts, &daemon, "fail.nix", &fail, &[]);
    assert_eq!(norm_fx(&fx, &msg), norm_ts(&ts, &cppnix_error(&out)));

    // 3. A fixed-output derivation with the wrong hash.
    let wrong = fod(&"0".repeat(64));
    let (drv, ours, _) = fx.build_expr("fod.nix", &wrong);
    assert_eq!(ours.status, BuildStatus::OutputRejected);
    assert!(ours.hash_mismatch);
    let got = Hash::sha256("hello\n");
    assert_eq!(
        ours.error_msg.as_deref().unwrap(),
        format!(
            "hash mismatch in fixed-output derivation '{}':\n  specified: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n     got:    {}",
            fx.print(&drv),
            got.to_sri()
        )
    );
    // As 2.8 does, the output is registered under the path of the hash it really has.
    let actual = &ours.built_outputs["out"];
    assert!(fx.store.is_valid_path(&actual.path).unwrap());
    let out = cppnix_build(&ts, &daemon, "fod.nix", &wrong, &[]);
    assert_eq!(
        norm_fx(&fx, ours.error_msg.as_deref().unwrap()),
        norm_ts(&ts, &cppnix_error(&out))
    );

    // 4. passAsFile and exportReferencesGraph (plain attributes).
    let attrs = Expr::new(
        "attrs",
        "{ env | sort; echo ==; cat $bigPath; echo; echo ==; cat graph; echo ==; ls -a /build; } > $out",
    )
    .env("big", "a value passed as a file\nwith two lines")
    .attr("passAsFile", r#"[ "big" ]"#)
    .attr("exportReferencesGraph", r#"[ "graph" ./bb ]"#)
    .to_nix();
    let (_, ours, _) = fx.build_expr("attrs.nix", &attrs);
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let ours_text = norm_fx(&fx, &fx.read_output(&ours, "out"));
    assert!(ours_text.contains("bigPath=/build/.attr-"), "{ours_text}");
    let out = cppnix_build(&ts, &daemon, "attrs.nix", &attrs, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs_text = norm_ts(
        &ts,
        &std::fs::read_to_string(String::from_utf8_lossy(&out.stdout).trim()).unwrap(),
    );
    assert_eq!(ours_text, theirs_text);

    // 5. Structured attributes: .attrs.json and .attrs.sh byte for byte. (2.8 sets
    //    NIX_ATTRS_*_FILE to host paths, a bug fixed by 2.18; nixnest gives the in-sandbox
    //    paths, so those two variables are left out of the comparison.)
    let sa = "derivation {\n  name = \"sa\";\n  system = builtins.currentSystem;\n  \
              __structuredAttrs = true;\n  builder = \"${./bb}/bin/sh\";\n  \
              args = [ \"-c\" \"export PATH=${./bb}/bin; { env | grep -v ^NIX_ATTRS_ | sort; echo ==; cat /build/.attrs.sh; echo ==; cat /build/.attrs.json; } > ${placeholder \"out\"}\" ];\n  \
              PATH = \"${./bb}/bin\";\n  str = \"it's\";\n  n = 42;\n  f = 1.5;\n  b = true;\n  nul = null;\n  \
              list = [ \"a\" 1 false ];\n  obj = { x = \"y\"; z = 2; };\n  nested = { a = { b = 1; }; };\n  \
              exportReferencesGraph = { graph = [ ./bb ]; };\n}";
    let (_, ours, _) = fx.build_expr("sa.nix", sa);
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let ours_text = norm_fx(&fx, &fx.read_output(&ours, "out"));
    let out = cppnix_build(&ts, &daemon, "sa.nix", sa, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs_text = norm_ts(
        &ts,
        &std::fs::read_to_string(String::from_utf8_lossy(&out.stdout).trim()).unwrap(),
    );
    if ours_text != theirs_text {
        eprintln!("--- nixnest ---\n{ours_text}\n--- nix-daemon 2.8 ---\n{theirs_text}");
    }
    assert_eq!(ours_text, theirs_text);
    for want in [
        "declare -A obj=(['x']='y' ['z']=2 )",
        "declare -a list=('a' 1  )",
        "declare str='it'\\''s'",
        "\"graph\":[{\"ca\":\"fixed:r:sha256:",
    ] {
        assert!(ours_text.contains(want), "missing {want:?} in\n{ours_text}");
    }

    // 6. allowedReferences.
    let checks = Expr::new("checks", "echo $PATH > $out")
        .attr("allowedReferences", "[ ]")
        .to_nix();
    let (_, ours, _) = fx.build_expr("checks.nix", &checks);
    assert_eq!(
        ours.status,
        BuildStatus::OutputRejected,
        "{:?}",
        ours.error_msg
    );
    let out = cppnix_build(&ts, &daemon, "checks.nix", &checks, &[]);
    assert_eq!(
        norm_fx(&fx, ours.error_msg.as_deref().unwrap()),
        norm_ts(&ts, &cppnix_error(&out))
    );

    // 7. A timeout.
    let slow = Expr::new("slow", "echo started; sleep 1000").to_nix();
    let (drv_path, drv) = fx.instantiate("slow.nix", &slow);
    let mut settings = common::settings();
    settings.timeout = Some(Duration::from_secs(1));
    let ours = fx.build_with(&drv_path, &drv, &settings, &mut Collect::default());
    assert_eq!(ours.status, BuildStatus::TimedOut);
    let out = cppnix_build(&ts, &daemon, "slow.nix", &slow, &["--timeout", "1"]);
    assert_eq!(
        norm_fx(&fx, ours.error_msg.as_deref().unwrap()),
        norm_ts(&ts, &cppnix_error(&out))
    );
}

#[test]
fn outputs_are_registered_with_their_references() {
    require_env!();
    let fx = Fx::new(1);
    let dep = Expr::new("dep", "mkdir $out; echo dep > $out/f").to_nix();
    let main = Expr::new(
        "main",
        "mkdir $out $doc; echo $dep > $out/dep; echo $out > $out/self; echo $doc > $out/doc-ref; \
         ln -s $PATH $out/tools; echo unrelated > $doc/x",
    )
    .attr("dep", "dep")
    .attr("outputs", r#"[ "out" "doc" ]"#)
    .to_nix();
    let expr = format!("let dep = {dep}; in {main}");
    let (drv_path, drv) = fx.instantiate("main.nix", &expr);
    // Build the input derivation first.
    let (dep_drv, _) = drv.input_drvs.iter().next().unwrap();
    let text = std::fs::read(fx.store.real_store_dir().join(dep_drv.to_string())).unwrap();
    let dep_d = nixnest_core::Derivation::parse_at(fx.store.store_dir(), dep_drv, &text).unwrap();
    let dep_out = fx.build_with(
        dep_drv,
        &dep_d,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(
        dep_out.status,
        BuildStatus::Built,
        "{:?}",
        dep_out.error_msg
    );
    let dep_path = dep_out.built_outputs["out"].path.clone();

    let ours = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let out = &ours.built_outputs["out"];
    let doc = &ours.built_outputs["doc"];
    let bb = drv.input_srcs.iter().next().unwrap().clone();
    let want: std::collections::BTreeSet<_> =
        [dep_path.clone(), bb, out.path.clone(), doc.path.clone()].into();
    assert_eq!(out.references, want);
    assert!(doc.references.is_empty());
    assert_eq!(out.deriver.as_ref(), Some(&drv_path));

    // The real Nix reads the same rows.
    let refs = fx
        .ts
        .nix("nix-store")
        .args(["-q", "--references"])
        .arg(fx.print(&out.path))
        .run();
    let mut refs: Vec<&str> = refs.lines().collect();
    refs.sort();
    let mut want: Vec<String> = want.iter().map(|p| fx.print(p)).collect();
    want.sort();
    assert_eq!(refs, want);
    let deriver = fx
        .ts
        .nix("nix-store")
        .args(["-q", "--deriver"])
        .arg(fx.print(&out.path))
        .run();
    assert_eq!(deriver, fx.print(&drv_path));
    // Contents match the registered NAR hashes, and the metadata is canonical.
    fx.ts
        .nix("nix-store")
        .arg("--verify-path")
        .arg(fx.print(&out.path))
        .arg(fx.print(&doc.path))
        .run();
    let json = fx
        .ts
        .nix("nix")
        .args(["path-info", "--json"])
        .arg(fx.print(&out.path))
        .run();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["ultimate"], serde_json::Value::Bool(true));
    assert_eq!(v[0]["narSize"].as_u64(), Some(out.nar_size));
    let meta = std::fs::symlink_metadata(
        fx.store
            .real_store_dir()
            .join(out.path.to_string())
            .join("dep"),
    )
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.mtime()),
        (0o444, 0, 1)
    );
    // Nothing left behind: no chroot, no build dir, no lock files.
    let leftovers: Vec<String> = std::fs::read_dir(fx.store.real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".chroot") || n.ends_with(".lock") || n.contains("nixnest-output"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let builds: Vec<_> = std::fs::read_dir(fx.ts.state_dir().join("builds"))
        .unwrap()
        .collect();
    assert!(builds.is_empty());
}

#[test]
fn concurrent_builds_run_as_different_users() {
    require_env!();
    let fx = Fx::new(3);
    let script = "busybox awk '{print $2}' /proc/self/uid_map > $out; sleep 2";
    let a = fx.instantiate("a.nix", &Expr::new("a", script).to_nix());
    let b = fx.instantiate("b.nix", &Expr::new("b", script).to_nix());
    let fx = &fx;
    let results = std::thread::scope(|s| {
        let run = move |(p, d): &(nixnest_core::StorePath, nixnest_core::Derivation)| {
            let t0 = Instant::now();
            let o = fx.build_with(p, d, &common::settings(), &mut Collect::default());
            (o, t0, Instant::now())
        };
        let (a, b) = (&a, &b);
        let ha = s.spawn(move || run(a));
        let hb = s.spawn(move || run(b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let ((oa, sa, ea), (ob, sb, eb)) = results;
    assert_eq!(oa.status, BuildStatus::Built, "{:?}", oa.error_msg);
    assert_eq!(ob.status, BuildStatus::Built, "{:?}", ob.error_msg);
    assert!(sa < eb && sb < ea, "the two builds did not overlap");
    let ua: u32 = fx.read_output(&oa, "out").trim().parse().unwrap();
    let ub: u32 = fx.read_output(&ob, "out").trim().parse().unwrap();
    assert_ne!(ua, ub, "two concurrent builds shared a build user");
    let users = fx.ts.build_users().unwrap();
    assert!(users.contains_uid(ua) && users.contains_uid(ub));
}

#[test]
fn fixed_output_derivations_share_the_host_network() {
    require_env!();
    let fx = Fx::new(1);
    let hex = Hash::sha256("hello\n").to_base16();
    let expr = Expr::new(
        "fod",
        "readlink /proc/self/ns/net; ls /etc | tr '\\n' ' '; echo; echo hello > $out; stat -c %i $out",
    )
    .env("outputHashMode", "flat")
    .env("outputHashAlgo", "sha256")
    .env("outputHash", &hex)
    .to_nix();
    let (_, out, ev) = fx.build_expr("fod.nix", &expr);
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        ev.lines[0],
        host_net.to_string_lossy(),
        "not the host's network namespace"
    );
    let etc = &ev.lines[1];
    assert!(etc.contains("nsswitch.conf"), "{etc}");
    for f in ["resolv.conf", "services", "hosts"] {
        if std::path::Path::new("/etc").join(f).exists() {
            assert!(etc.contains(f), "/etc/{f} missing in {etc}");
        }
    }
    let info = &out.built_outputs["out"];
    assert_eq!(
        info.ca.as_ref().unwrap().to_string(),
        format!(
            "fixed:sha256:{}",
            nixbase32::encode(Hash::sha256("hello\n").digest())
        )
    );
    assert_eq!(fx.read_output(&out, "out"), "hello\n");
    // The registered output is a fresh copy, not the inode the builder wrote (and could
    // still hold a descriptor to).
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(fx.store.real_store_dir().join(info.path.to_string()))
        .unwrap()
        .ino();
    assert_ne!(ev.lines[2], ino.to_string());
    // A failing fixed-output build is a transient failure (the network may come back).
    let failing = Expr::new("fodfail", "exit 1")
        .env("outputHashMode", "flat")
        .env("outputHashAlgo", "sha256")
        .env("outputHash", &hex)
        .to_nix();
    let (_, out, _) = fx.build_expr("fodfail.nix", &failing);
    assert_eq!(out.status, BuildStatus::TransientFailure);
    // A sandboxed derivation does not get the host network.
    let (_, out, ev) = fx.build_expr(
        "net.nix",
        &Expr::new("net", "readlink /proc/self/ns/net; touch $out").to_nix(),
    );
    assert_eq!(out.status, BuildStatus::Built);
    assert_ne!(ev.lines[0], host_net.to_string_lossy());
}

#[test]
fn sandbox_paths_match_cppnix() {
    require_env!();
    // A store path with a reference, to check that the closure of a store path named in
    // `sandbox-paths` comes along.
    let with_ref = |ts: &TestStore| {
        ts.write("extra.txt", "extra file\n");
        Expr::new("withref", "echo $file > $out")
            .attr("file", "./extra.txt")
            .to_nix()
    };
    let script = "{ cat /mapped/x; cat $dir2/y; test -e /nonexistent-optional && echo optional-visible || echo optional-absent; \
                  cat $(cat $ref); ls $NIX_STORE | sed 's/^[0-9a-z]\\{32\\}-//' | sort; } > $out";
    let probe = |r: &str| {
        Expr::new("paths", script)
            .env("dir2", &format!("{}/hostdir2", r))
            .env("ref", r)
            .to_nix()
    };
    let setup = |ts: &TestStore| {
        ts.write("hostdir/x", "mapped dir\n");
        ts.write("hostdir2/y", "same-path dir\n");
    };

    // nixnest.
    let fx = Fx::new(1);
    setup(&fx.ts);
    let (_, dep, _) = fx.build_expr("withref.nix", &with_ref(&fx.ts));
    assert_eq!(dep.status, BuildStatus::Built, "{:?}", dep.error_msg);
    let dep_path = fx.print(&dep.built_outputs["out"].path);
    let root = fx.ts.root().to_string_lossy().into_owned();
    let mut settings = common::settings();
    settings.sandbox_paths = vec![
        format!("/mapped={root}/hostdir"),
        format!("{root}/hostdir2"),
        "/nonexistent-optional?".into(),
        dep_path.clone(),
    ];
    let (drv_path, drv) = fx.instantiate(
        "paths.nix",
        &probe(&root).replace(&format!("\"{root}\""), &format!("\"{dep_path}\"")),
    );
    let ours = fx.build_with(&drv_path, &drv, &settings, &mut Collect::default());
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let ours_text = norm_fx(&fx, &fx.read_output(&ours, "out"));
    assert_eq!(
        ours_text,
        "mapped dir\nsame-path dir\noptional-absent\nextra file\nbb\nextra.txt\npaths\nwithref\n"
    );

    // nix-daemon 2.8 with the same `extra-sandbox-paths`.
    let ts = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::nixbld())
        .build();
    ts.busybox();
    setup(&ts);
    let daemon = ts.nix_daemon(Client::Host).start();
    let out = cppnix_build(&ts, &daemon, "withref.nix", &with_ref(&ts), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let their_dep = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let troot = ts.root().to_string_lossy().into_owned();
    let paths =
        format!("/mapped={troot}/hostdir {troot}/hostdir2 /nonexistent-optional? {their_dep}");
    let expr = probe(&troot).replace(&format!("\"{troot}\""), &format!("\"{their_dep}\""));
    let out = cppnix_build(
        &ts,
        &daemon,
        "paths.nix",
        &expr,
        &["--option", "extra-sandbox-paths", &paths],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs_text = norm_ts(
        &ts,
        &std::fs::read_to_string(String::from_utf8_lossy(&out.stdout).trim()).unwrap(),
    );
    assert_eq!(ours_text, theirs_text);
}

#[test]
fn root_without_build_users_builds_as_root_in_a_user_namespace() {
    require_env!();
    // CppNix 2.8: root with `build-users-group =` builds as root; in the sandbox that is
    // uid 1000 in a user namespace mapped to host uid 0.
    let fx = Fx::new(0);
    let (_, out, _) = fx.build_expr(
        "asroot.nix",
        &Expr::new(
            "asroot",
            "{ id; busybox awk '{print $1, $2}' /proc/self/uid_map; \
             chmod u+w $PATH 2>&1 | sed 's/.*: //'; } > $out",
        )
        .to_nix(),
    );
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    // The builder is host root (without capabilities) and so the owner of its inputs:
    // they are mounted read-only.
    assert_eq!(
        fx.read_output(&out, "out"),
        "uid=1000(nixbld) gid=100(nixbld)\n1000 0\nRead-only file system\n"
    );
}

#[test]
fn only_missing_outputs_are_rebuilt() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate(
        "two.nix",
        &Expr::new("two", "echo out > $out; echo dev > $dev")
            .attr("outputs", r#"[ "out" "dev" ]"#)
            .to_nix(),
    );
    let first = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(first.status, BuildStatus::Built, "{:?}", first.error_msg);
    let again = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(again.status, BuildStatus::AlreadyValid);
    assert_eq!(again.built_outputs.len(), 2);
    // Lose one output, rebuild: only it is registered anew, the other is reported as is.
    let dev = first.built_outputs["dev"].clone();
    fx.ts
        .nix("nix-store")
        .arg("--delete")
        .arg(fx.print(&dev.path))
        .run();
    assert!(!fx.store.is_valid_path(&dev.path).unwrap());
    let third = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(third.status, BuildStatus::Built, "{:?}", third.error_msg);
    assert_eq!(third.built_outputs["out"], first.built_outputs["out"]);
    assert_eq!(third.built_outputs["dev"].nar_hash, dev.nar_hash);
    assert!(fx.store.is_valid_path(&dev.path).unwrap());
    // Without the sandbox that would mean writing into a valid path: refused.
    fx.ts
        .nix("nix-store")
        .arg("--delete")
        .arg(fx.print(&dev.path))
        .run();
    let mut settings = common::settings();
    settings.sandbox = nixnest_build::SandboxMode::Disabled;
    let fourth = fx.build_with(&drv_path, &drv, &settings, &mut Collect::default());
    assert_eq!(
        fourth.status,
        BuildStatus::InputRejected,
        "{:?}",
        fourth.error_msg
    );
}

#[test]
fn pre_build_hook_adds_sandbox_paths() {
    require_env!();
    let fx = Fx::new(1);
    let root = fx.ts.root().to_string_lossy().into_owned();
    fx.ts.write("hookdir/x", "from the hook\n");
    let hook = fx.ts.write(
        "hook.sh",
        format!(
            "#!/bin/sh\necho \"$1 $2\" > {root}/hook-args\necho extra-sandbox-paths\necho /hooked={root}/hookdir\necho\n"
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (drv_path, drv) = fx.instantiate(
        "hooked.nix",
        &Expr::new("hooked", "cat /hooked/x > $out").to_nix(),
    );
    let mut settings = common::settings();
    settings.pre_build_hook = Some(hook);
    let out = fx.build_with(&drv_path, &drv, &settings, &mut Collect::default());
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    assert_eq!(fx.read_output(&out, "out"), "from the hook\n");
    let args = std::fs::read_to_string(fx.ts.root().join("hook-args")).unwrap();
    let chroot_root = fx
        .store
        .real_store_dir()
        .join(format!("{drv_path}.chroot/root"));
    assert_eq!(
        args,
        format!("{} {}\n", fx.print(&drv_path), chroot_root.display())
    );
}
