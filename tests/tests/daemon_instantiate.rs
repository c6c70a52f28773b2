//! Evaluation against the daemon: `nix-instantiate` (AddToStore of sources and `.drv` text
//! with references), showing derivations, `nix-store -q --outputs` and dry runs (QueryMissing
//! 40), compared between the real `nix-daemon` and nixnest for the 2.8, 2.26 and 2.34 clients
//! (see `common`). Nothing is built.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::closure_expr;
use common::*;
use nixnest_testkit::Client;

#[test]
fn instantiate_and_query_derivations() {
    compare("instantiate", plain_store, |side| {
        side.store.write_expr("closure.nix", &closure_expr());
        side.start_daemon();

        let drvs = side
            .step(
                "nix-instantiate two derivations",
                side.cmd("nix-instantiate", ["closure.nix", "-A", "dep", "-A", "app"]),
            )
            .ok()
            .run();
        let drvs: Vec<String> = drvs.lines().map(str::to_owned).collect();
        let (dep_drv, app_drv) = (drvs[0].clone(), drvs[1].clone());
        side.step(
            "nix-instantiate again (everything exists)",
            side.cmd("nix-instantiate", ["closure.nix", "-A", "app"]),
        )
        .ok()
        .run();

        let show: &[&str] = match side.client {
            Client::Host => &["show-derivation"],
            Client::Trixie | Client::Sid => &["derivation", "show"],
        };
        side.step(
            "show the derivation",
            side.cmd("nix", show.iter().copied().chain([app_drv.as_str()])),
        )
        .ok()
        .run();
        side.step(
            "show the derivation with -r",
            side.cmd("nix", show.iter().copied().chain(["-r", app_drv.as_str()])),
        )
        .ok()
        .run();
        for (label, args) in [
            ("-q --outputs", vec!["-q", "--outputs", &app_drv, &dep_drv]),
            (
                "-q --references of a .drv",
                vec!["-q", "--references", &app_drv],
            ),
            (
                "-q --requisites of a .drv",
                vec!["-q", "--requisites", &app_drv],
            ),
            (
                "-q --referrers of a .drv",
                vec!["-q", "--referrers", &dep_drv],
            ),
            ("-q --deriver of a .drv", vec!["-q", "--deriver", &app_drv]),
            ("-r --dry-run", vec!["-r", "--dry-run", &app_drv]),
        ] {
            side.step(label, side.cmd("nix-store", args)).ok().run();
        }
        side.step(
            "nix build --dry-run",
            side.cmd(
                "nix",
                [
                    "build",
                    "--dry-run",
                    "--no-link",
                    "-f",
                    "closure.nix",
                    "app",
                ],
            ),
        )
        .ok()
        .run();
        let missing = side.store_path("00000000000000000000000000000000-missing");
        side.step(
            "-r --dry-run of an unknown path",
            side.cmd("nix-store", ["-r", "--dry-run", &missing]),
        )
        .ok()
        .run();
        side.snapshot("after instantiating");
    });
}
