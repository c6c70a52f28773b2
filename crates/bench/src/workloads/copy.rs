//! Workload 4: `nix copy` of a closure from a local store into the daemon's store — the
//! daemon's ingest path for many small paths (`QueryValidPaths`, then
//! `AddMultipleToStore` from clients ≥ 1.32).
//!
//! Per round: a fresh daemon store, and a source store next to it, a chroot store
//! (`local?root=<root>/src`) with the same logical store dir, filled with the real
//! `nix-store --import` (host 2.8, local mode) of `copy_paths` small paths that form a DAG
//! whose closure is the whole set. Timed: the sid client (Nix 2.34) running
//! `nix copy --no-check-sigs --from local?root=… --to unix://<socket> <top path>`. Then
//! every path must be valid in the daemon's store.

use std::collections::BTreeSet;

use nixnest_protocol::client::UnixDaemonClient;
use nixnest_testkit::{Client, TestStore};

use super::{
    CLIENT_TIMEOUT, Ctx, Round, Runner, Stopwatch, exec, import_local, store_dir, with_cpu,
};
use crate::daemons::{Kind, Running};
use crate::error::{Error, Result};
use crate::objects::{self, Links};

struct Copy {
    kind: Kind,
}

pub fn start(_ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    if !Client::Sid.is_available() {
        return Err(Error::Unsupported(
            "the sid client chroot is missing (tests/prepare-clients)".into(),
        ));
    }
    Ok(Box::new(Copy { kind }))
}

impl Runner for Copy {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        let n = ctx.sizes.copy_paths;
        let store = TestStore::new();
        let sd = store_dir(&store)?;
        let objs = objects::small_objects(&sd, "copy", n, 64, Links::Dag)?;
        let src_root = store.path("src");
        std::fs::create_dir_all(&src_root)
            .map_err(|e| Error::io(format!("creating {}", src_root.display()), e))?;
        let src_uri = format!("local?root={}", src_root.display());
        import_local(&store, &objects::export_stream(&sd, &objs), Some(&src_uri))?;
        let all: BTreeSet<_> = objs.iter().map(|o| o.info.path.clone()).collect();
        let top = objs
            .last()
            .map(|o| sd.print(&o.info.path))
            .ok_or_else(|| Error::Setup("copy needs at least one path".into()))?;
        drop(objs);

        let running = Running::start(self.kind, &store, &ctx.programs);
        let mut cmd = store
            .client(Client::Sid)
            .daemon(&running.daemon)
            .command("nix");
        cmd.args(["copy", "--no-check-sigs", "--from", &src_uri, "--to"])
            .arg(running.daemon.uri())
            .arg(&top);
        let sampler = sample.then(|| running.procs.sample());
        let t = Stopwatch::start(&running);
        exec(&mut cmd, None, CLIENT_TIMEOUT)?;
        let (elapsed, cpu) = t.stop();
        let memory = sampler.map(|s| s.stop());

        let socket = running.socket().to_owned();
        let valid = ctx.rt.block_on(async {
            let mut c = UnixDaemonClient::connect(&socket, sd.clone()).await?;
            Ok::<_, Error>(c.query_valid_paths(&all, false).await?)
        })?;
        if valid.len() != all.len() {
            return Err(Error::Check(format!(
                "{} of {} copied paths are valid in the daemon's store",
                valid.len(),
                all.len()
            )));
        }
        drop(running);
        Ok(Round {
            elapsed: Some(elapsed),
            memory,
            notes: with_cpu(cpu, vec![("paths_per_s", n as f64 / elapsed.as_secs_f64())]),
        })
    }
}
