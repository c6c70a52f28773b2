//! Builders that try to make the daemon follow a symlink: as an output, inside an output,
//! in the build dir (removed, or kept with `keep-failed`), as a fixed output. The host's
//! `/etc` must come out of all of it untouched, and the suspicious cases refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Collect, Fx};
use nixnest_build::BuildStatus;
use nixnest_core::nar::NarWriter;
use nixnest_core::{Hash, HashAlgo, Hasher};
use nixnest_testkit::Derivation as Expr;

/// Mode and owner of a host file (not following a final symlink), and whether its mtime
/// is the store's canonical 1 — what canonicalising through a symlink would change.
/// (Contents and times are left out: other tests may legitimately add users meanwhile.)
fn fingerprint(p: &str) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    format!(
        "{p} {:o} {}:{} mtime1={}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime() == 1
    )
}

const WATCHED: [&str; 4] = ["/etc", "/etc/passwd", "/etc/shadow", "/"];

#[test]
fn planted_symlinks_are_never_followed() {
    require_env!();
    let fx = Fx::new(1);
    let before: Vec<String> = WATCHED.iter().map(|p| fingerprint(p)).collect();

    // $out itself is a symlink to /etc: a valid (symlink) store object, nothing more.
    let (_, out, _) = fx.build_expr("link.nix", &Expr::new("link", "ln -s /etc $out").to_nix());
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    let real = fx
        .store
        .real_store_dir()
        .join(out.built_outputs["out"].path.to_string());
    assert_eq!(std::fs::read_link(&real).unwrap(), Path::new("/etc"));

    // Symlinks inside $out pointing at host files.
    let (_, out, _) = fx.build_expr(
        "inside.nix",
        &Expr::new(
            "inside",
            "mkdir $out; ln -s /etc/passwd $out/passwd; ln -s /etc/shadow $out/shadow; ln -s / $out/root",
        )
        .to_nix(),
    );
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);

    // The build dir full of traps, deleted after a success ...
    let traps = "ln -s /etc /build/etc; ln -s /etc/passwd /build/passwd; mkdir -p /build/d/e; \
                 ln -s / /build/d/root; ln -s /etc /build/d/e/etc; chmod 0 /build/d/e; chmod 0 /build/d; \
                 chmod 0 /build";
    let (_, out, _) = fx.build_expr(
        "traps.nix",
        &Expr::new("traps", &format!("touch $out; {traps}")).to_nix(),
    );
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    // ... and kept after a failure.
    let (drv_path, drv) = fx.instantiate(
        "traps-fail.nix",
        &Expr::new("traps-fail", &format!("{traps}; exit 1")).to_nix(),
    );
    let mut settings = common::settings();
    settings.keep_failed = true;
    let mut ev = Collect::default();
    let out = fx.build_with(&drv_path, &drv, &settings, &mut ev);
    assert_eq!(out.status, BuildStatus::PermanentFailure);
    assert_eq!(ev.notes.len(), 1, "{:?}", ev.notes);
    let kept = ev.notes[0].split('\'').nth(1).unwrap();
    assert!(
        std::fs::symlink_metadata(Path::new(kept).join("etc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    nixnest_build::fsutil::delete_path(Path::new(kept).parent().unwrap()).unwrap();

    // A recursive fixed output that is a symlink to /etc/passwd: hashed and copied as a
    // symlink through the private copy, never by following it.
    let mut h = Hasher::new(HashAlgo::Sha256);
    {
        let mut nar = NarWriter::new(HashSink(&mut h)).unwrap();
        nar.symlink(b"/etc/passwd").unwrap();
        nar.finish().unwrap();
    }
    let nar_hash = h.finish();
    let (_, out, _) = fx.build_expr(
        "fodlink.nix",
        &Expr::new("fodlink", "ln -s /etc/passwd $out")
            .env("outputHashMode", "recursive")
            .env("outputHashAlgo", "sha256")
            .env("outputHash", &nar_hash.to_base16())
            .to_nix(),
    );
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    let real = fx
        .store
        .real_store_dir()
        .join(out.built_outputs["out"].path.to_string());
    assert_eq!(std::fs::read_link(&real).unwrap(), Path::new("/etc/passwd"));
    // A flat fixed output must be a regular file.
    let (_, out, _) = fx.build_expr(
        "fodflat.nix",
        &Expr::new("fodflat", "ln -s /etc/passwd $out")
            .env("outputHashMode", "flat")
            .env("outputHashAlgo", "sha256")
            .env("outputHash", &Hash::sha256("x").to_base16())
            .to_nix(),
    );
    assert_eq!(out.status, BuildStatus::OutputRejected);
    assert!(
        out.error_msg
            .as_deref()
            .unwrap()
            .contains("should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)"),
        "{:?}",
        out.error_msg
    );

    let after: Vec<String> = WATCHED.iter().map(|p| fingerprint(p)).collect();
    assert_eq!(before, after, "a host file was modified");
    // No chroot, no private copy, no build dir left.
    let left: Vec<String> = std::fs::read_dir(fx.store.real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".chroot") || n.contains("nixnest-output"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_dir(fx.ts.state_dir().join("builds"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn suspicious_outputs_are_rejected() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate(
        "gw.nix",
        &Expr::new("gw", "mkdir $out; chmod 775 $out").to_nix(),
    );
    let out = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(out.status, BuildStatus::OutputRejected);
    let p = drv.output_paths(fx.store.store_dir()).unwrap()["out"]
        .clone()
        .unwrap();
    let chroot_path = fx
        .store
        .real_store_dir()
        .join(format!("{drv_path}.chroot/root"))
        .join(fx.print(&p).trim_start_matches('/'));
    assert_eq!(
        out.error_msg.as_deref().unwrap(),
        format!(
            "suspicious ownership or permission on '{}' for output 'out'; rejecting this build output",
            chroot_path.display()
        )
    );
    // Nothing was registered or moved into the store.
    assert!(!fx.store.is_valid_path(&p).unwrap());
    assert!(!fx.store.real_store_dir().join(p.to_string()).exists());

    // A missing output.
    let (drv_path, drv) = fx.instantiate("none.nix", &Expr::new("none", "true").to_nix());
    let out = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(out.status, BuildStatus::OutputRejected);
    assert!(
        out.error_msg.as_deref().unwrap().starts_with(&format!(
            "builder for '{}' failed to produce output path for output 'out' at '",
            fx.print(&drv_path)
        )),
        "{:?}",
        out.error_msg
    );
}

/// A hasher as a `Write` sink.
struct HashSink<'a>(&'a mut Hasher);

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn output_checks() {
    require_env!();
    let fx = Fx::new(1);
    let expr = |name: &str, attr: &str| {
        Expr::new(
            name,
            "mkdir $out $dev; echo $PATH > $out/p; echo $dev > $out/d; touch $dev/x",
        )
        .attr("outputs", r#"[ "out" "dev" ]"#)
        .attr(
            attr.split_once('=').unwrap().0,
            attr.split_once('=').unwrap().1,
        )
        .to_nix()
    };
    let check = |name: &str, attr: &str| {
        let (drv_path, drv) = fx.instantiate(&format!("{name}.nix"), &expr(name, attr));
        let out = fx.build_with(
            &drv_path,
            &drv,
            &common::settings(),
            &mut Collect::default(),
        );
        let paths = drv.output_paths(fx.store.store_dir()).unwrap();
        let out_p = fx.print(paths["out"].as_ref().unwrap());
        let dev_p = fx.print(paths["dev"].as_ref().unwrap());
        let bb = fx.print(drv.input_srcs.iter().next().unwrap());
        (out, out_p, dev_p, bb)
    };
    let refused = |o: &nixnest_build::BuildOutcome| {
        assert_eq!(o.status, BuildStatus::OutputRejected, "{:?}", o.error_msg);
        assert!(o.built_outputs.is_empty());
        o.error_msg.clone().unwrap()
    };

    let (o, out, _, bb) = check("c1", r#"allowedReferences=[ "dev" ]"#);
    assert_eq!(
        refused(&o),
        format!("output '{out}' is not allowed to refer to the following paths:\n  {bb}")
    );
    let (o, ..) = check("c2", r#"allowedReferences=[ "dev" ./bb ]"#);
    assert_eq!(o.status, BuildStatus::Built, "{:?}", o.error_msg);
    let (o, out, dev, _) = check("c3", r#"disallowedReferences=[ "dev" ]"#);
    assert_eq!(
        refused(&o),
        format!("output '{out}' is not allowed to refer to the following paths:\n  {dev}")
    );
    let (o, out, _, bb) = check("c4", r#"allowedRequisites=[ "dev" ]"#);
    assert_eq!(
        refused(&o),
        format!("output '{out}' is not allowed to refer to the following paths:\n  {bb}")
    );
    let (o, out, _, bb) = check("c5", r#"disallowedRequisites=[ ./bb ]"#);
    assert_eq!(
        refused(&o),
        format!("output '{out}' is not allowed to refer to the following paths:\n  {bb}")
    );
    let (o, ..) = check("c6", r#"allowedReferences=[ "nonsense" ]"#);
    assert_eq!(
        refused(&o),
        "derivation contains an illegal reference specifier 'nonsense'"
    );
}
