//! Workload 6: a recursive-Nix build whose builder runs `recursive_inner` inner builds
//! through the daemon's per-build socket.
//!
//! CppNix's recursive Nix (`experimental-features = recursive-nix`, the derivation has
//! `requiredSystemFeatures = [ "recursive-nix" ]`, the daemon's `system-features` lists
//! it) gives the builder `NIX_REMOTE=unix://…` to a restricted daemon for this build. The
//! builder needs a Nix client inside its sandbox; nothing in a test store has one, so the
//! harness makes a *client bundle*: the host's `nix` 2.8 binary and every shared library
//! `ldd` lists, loader included, as a source path `./nixbundle` of the expression. The
//! builder runs it as `<bundle>/lib/ld-linux-x86-64.so.2 --library-path <bundle>/lib
//! <bundle>/bin/nix build --impure --expr 'import <inner.nix> { … }'` once per inner build;
//! each inner derivation is a busybox build of its own (the outer build's `bb` input, made
//! a dependency with `builtins.storePath`).
//!
//! Per round: a fresh sandboxed store (two build users, `max-jobs = 2`) and daemon,
//! `nix-instantiate` (untimed), then timed: `nix-store --realise` of the outer derivation
//! (sid client). Reported with it: milliseconds per inner build, which include the inner
//! client's own start-up and evaluation (the same for every daemon).
//!
//! A daemon that cannot build the outer derivation with one inner build is reported "not
//! measured" with its error (nixnest until its builder and recursive Nix land).

use std::path::{Path, PathBuf};

use nixnest_testkit::{BuildUsers, Client, Derivation, TestStore};

use super::{CLIENT_TIMEOUT, Ctx, Round, Runner, Stopwatch, exec, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, IoContext, Result};

struct Recursive {
    kind: Kind,
    bundle: PathBuf,
}

pub fn start(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    if !Client::Sid.is_available() {
        return Err(Error::Unsupported(
            "the sid client chroot is missing (tests/prepare-clients)".into(),
        ));
    }
    let bundle = ctx.scratch.join("nixbundle");
    if !bundle.exists() {
        make_bundle(Path::new("/usr/bin/nix"), &bundle)?;
    }
    let probe = Recursive { kind, bundle };
    if let Err(e) = probe.build(ctx, 1, false) {
        return Err(match (kind, e) {
            (Kind::Nixnest, Error::Command { stderr, .. }) => Error::Unsupported(format!(
                "the daemon cannot run a recursive-Nix build yet: {}",
                super::build::first_error_line(&stderr)
            )),
            (Kind::Nixnest, e) => Error::Unsupported(format!(
                "the daemon cannot run a recursive-Nix build yet: {}",
                super::build::first_error_line(&e.to_string())
            )),
            (Kind::Nix(_), e) => e,
        });
    }
    Ok(Box::new(probe))
}

impl Runner for Recursive {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        self.build(ctx, ctx.sizes.recursive_inner, sample)
    }
}

/// The inner derivation, a function of its number and the busybox path.
const INNER_NIX: &str = r#"{ i, bb }:
derivation {
  name = "inner-${i}";
  system = builtins.currentSystem;
  builder = "${builtins.storePath bb}/bin/sh";
  args = [ "-c" "echo inner ${i} > $out" ];
}
"#;

/// The outer builder: `n` inner builds through the recursive daemon, then `$out`.
fn outer_script(n: usize) -> String {
    format!(
        r#"set -e
export HOME=$TMPDIR NIX_STORE_DIR=$NIX_STORE NIX_CONFIG='experimental-features = nix-command'
i=0
while [ $i -lt {n} ]; do
  $nixbundle/lib/ld-linux-x86-64.so.2 --library-path $nixbundle/lib $nixbundle/bin/nix \
    build --impure --no-link --expr "import $inner {{ i = \"$i-$salt\"; bb = \"$bb\"; }}"
  i=$((i + 1))
done
echo $i > $out
"#
    )
}

impl Recursive {
    fn build(&self, ctx: &Ctx, n: usize, sample: bool) -> Result<Round> {
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(2))
            .conf("max-jobs = 2")
            .conf("experimental-features = nix-command recursive-nix")
            .conf("system-features = recursive-nix")
            .build();
        link_tree(&self.bundle, &store.path("nixbundle"))?;
        store.write("inner.nix", INNER_NIX);
        let outer = Derivation::new("recursive", &outer_script(n))
            .attr("nixbundle", "./nixbundle")
            .attr("inner", "./inner.nix")
            .attr("bb", "./bb")
            .env("salt", &std::process::id().to_string())
            .attr("requiredSystemFeatures", r#"[ "recursive-nix" ]"#);
        let expr = store.write_expr("recursive.nix", &outer.to_nix());
        let running = Running::start(self.kind, &store, &ctx.programs);
        let client = store.client(Client::Sid).daemon(&running.daemon);

        let mut inst = client.command("nix-instantiate");
        inst.arg(&expr);
        let drv = exec(&mut inst, None, CLIENT_TIMEOUT)?;
        let mut realise = client.command("nix-store");
        realise.arg("--realise").arg(drv.trim());
        let sampler = sample.then(|| running.procs.sample());
        let t = Stopwatch::start(&running);
        let out = exec(&mut realise, None, CLIENT_TIMEOUT)?;
        let (elapsed, cpu) = t.stop();
        let memory = sampler.map(|s| s.stop());
        let text = std::fs::read_to_string(out.trim())
            .context(|| format!("reading the output {}", out.trim()))?;
        if text.trim() != n.to_string() {
            return Err(Error::Check(format!(
                "the outer build reports {:?} inner builds, expected {n}",
                text.trim()
            )));
        }
        drop(running);
        Ok(Round {
            elapsed: Some(elapsed),
            memory,
            notes: with_cpu(
                cpu,
                vec![(
                    "ms_per_inner_build",
                    elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64,
                )],
            ),
        })
    }
}

/// Copies `program` and every shared library `ldd` lists for it (the loader as
/// `lib/ld-linux-x86-64.so.2`) into `dir/bin` and `dir/lib`.
fn make_bundle(program: &Path, dir: &Path) -> Result<()> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .context(|| format!("running ldd {}", program.display()))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    for sub in ["bin", "lib"] {
        std::fs::create_dir_all(tmp.join(sub))
            .context(|| format!("creating {}", tmp.join(sub).display()))?;
    }
    let copy = |from: &Path, to: PathBuf| -> Result<()> {
        std::fs::copy(from, &to)
            .map(drop)
            .context(|| format!("copying {} to {}", from.display(), to.display()))
    };
    copy(program, tmp.join("bin/nix"))?;
    let mut loader = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once("=>") {
            let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            else {
                continue;
            };
            copy(Path::new(path), tmp.join("lib").join(name.trim()))?;
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            copy(Path::new(path), tmp.join("lib/ld-linux-x86-64.so.2"))?;
            loader = true;
        }
    }
    if !loader {
        return Err(Error::Setup(format!(
            "ldd {} named no dynamic loader",
            program.display()
        )));
    }
    std::fs::rename(&tmp, dir).context(|| format!("renaming to {}", dir.display()))
}

/// Recreates the tree `from` at `to` with hard links (the bundle is copied into every
/// round's store root; links make that free).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).context(|| format!("creating {}", to.display()))?;
    let entries = std::fs::read_dir(from).context(|| format!("reading {}", from.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("reading {}", from.display()))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if entry
            .file_type()
            .context(|| format!("stat {}", src.display()))?
            .is_dir()
        {
            link_tree(&src, &dst)?;
        } else {
            std::fs::hard_link(&src, &dst)
                .context(|| format!("linking {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
