//! End-to-end builds in the sandbox, compared with the real `nix-daemon` 2.8 where the
//! brief asks for it. Root only (see `common::skip_reason`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collect, Fx, normalise};
use nixnest_build::{BuildJob, BuildStatus, Builder};
use nixnest_testkit::{BuildUsers, Client, Derivation as Expr, RunExt, TestStore};

/// What a builder sees of its sandbox, printed to `$out`. Everything that differs between
/// two stores (store dir, hashes) is normalised before comparing.
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

#[test]
fn sandbox_matches_cppnix() {
    require_env!();
    // nixnest side: a store with its own build users.
    let fx = Fx::new(2);
    let outside = fx.ts.root().join("bb");
    let expr = |ts: &TestStore| {
        Expr::new("probe", PROBE)
            .env("outside", &ts.root().join("bb").to_string_lossy())
            .to_nix()
    };
    let (drv_path, drv) = fx.instantiate("probe.nix", &expr(&fx.ts));
    let mut ev = Collect::default();
    let ours = fx.build_with(&drv_path, &drv, &common::settings(), &mut ev);
    assert_eq!(ours.status, BuildStatus::Built, "{:?}", ours.error_msg);
    let ours_text = normalise(&fx.read_output(&ours, "out"), fx.store.store_dir().as_str())
        .replace(&*fx.ts.root().to_string_lossy(), "/ROOT");
    assert!(outside.exists());

    // CppNix side: the real nix-daemon 2.8 with sandbox = true, build-users-group = nixbld.
    let ts = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::nixbld())
        .build();
    ts.busybox();
    let daemon = ts.nix_daemon(Client::Host).start();
    let file = ts.write_expr("probe.nix", &expr(&ts));
    let out = ts
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-build")
        .arg(&file)
        .arg("--no-out-link")
        .run();
    let theirs_text = normalise(
        &std::fs::read_to_string(out.trim()).unwrap(),
        &ts.store_dir().to_string_lossy(),
    )
    .replace(&*ts.root().to_string_lossy(), "/ROOT");
    eprintln!("--- nixnest ---\n{ours_text}");
    if ours_text != theirs_text {
        eprintln!("--- nix-daemon 2.8 ---\n{theirs_text}");
    }
    assert_eq!(
        ours_text, theirs_text,
        "sandbox differs from nix-daemon 2.8"
    );
    // The observations themselves, beyond "same as CppNix".
    for want in [
        "uid=1000(nixbld) gid=100(nixbld)",
        "== hostname\nlocalhost\n",
        "== domainname\n(none)\n",
        "== interfaces\nlo:\n== lo",
        "Network is unreachable",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "Operation not permitted",
        "/etc/shadow invisible",
    ] {
        assert!(ours_text.contains(want), "missing {want:?}");
    }
    eprintln!(
        "sandbox setup: {:.1} ms in the helper, {:.1} ms preparing",
        ours.timings.sandbox_setup.as_secs_f64() * 1e3,
        ours.timings.prepare.as_secs_f64() * 1e3
    );
}
