//! Store contents the scenarios share, made the same way on every side.
//!
//! [`build_closure`] builds two busybox derivations with the host's Nix 2.8 in *local* mode
//! (no daemon: nixnest does not build, and the comparison is about serving a store that real
//! Nix wrote): `dep` (a file) and `app` (a directory that refers to `dep`), so the store holds
//! a closure with references, derivers, `DerivationOutputs` rows and build logs. Everything is
//! deterministic, so both sides get byte-identical stores (apart from registration times).

use nixnest_testkit::{Derivation, RunExt};

use super::Side;

/// The paths [`build_closure`] made.
#[derive(Clone, Debug)]
pub struct Closure {
    /// `…-dep`: a regular file.
    pub dep: String,
    /// `…-app`: a directory with a file naming `dep`, a copy of it and a symlink to it.
    pub app: String,
    pub dep_drv: String,
    pub app_drv: String,
    /// The busybox toolchain source (`…-bb`), an input of both derivations.
    pub bb: String,
    /// The expression file (`<root>/closure.nix`, attributes `dep` and `app`).
    pub expr: String,
}

/// The expression of [`build_closure`].
pub fn closure_expr() -> String {
    let dep = Derivation::new("dep", "echo building dep; echo dep-data > $out");
    let app = Derivation::new(
        "app",
        "echo building app; echo 'a line on stderr' >&2; mkdir $out; \
         echo \"uses $dep\" > $out/ref; cp $dep $out/copy; ln -s $dep $out/link",
    )
    .attr("dep", "dep");
    format!(
        "let\n  dep = {};\n  app = {};\nin {{ inherit dep app; }}\n",
        dep.to_nix(),
        app.to_nix()
    )
}

/// Builds the closure in local mode (before or while a daemon runs); see the module docs.
pub fn build_closure(side: &Side) -> Closure {
    let expr = side.store.write_expr("closure.nix", &closure_expr());
    let expr = expr.display().to_string();
    let drvs = side
        .local("nix-instantiate")
        .args([&expr, "-A", "dep", "-A", "app"])
        .run();
    let mut drvs = drvs.lines();
    let dep_drv = drvs.next().expect("dep.drv").to_owned();
    let app_drv = drvs.next().expect("app.drv").to_owned();
    // `nix-store -r`, not `nix-build --no-out-link`: the latter leaves a GC root named after
    // its pid (`/tmp/nix-build-<pid>-0/result`), which would differ between the sides.
    // As root without build users, whatever the store's configuration says (a test may set
    // `build-users-group` to a group of its own).
    let app = side
        .local("nix-store")
        .args(["-r", &app_drv, "--option", "build-users-group", ""])
        .run();
    let dep = side
        .local("nix-store")
        .args(["-q", "--outputs", &dep_drv])
        .run();
    let bb = side
        .local("nix-store")
        .args(["-q", "--references", &dep_drv])
        .run()
        .lines()
        .find(|l| l.ends_with("-bb"))
        .expect("bb is an input source")
        .to_owned();
    Closure {
        dep,
        app,
        dep_drv,
        app_drv,
        bb,
        expr,
    }
}
