//! Workload 7: garbage collection of many dead paths.
//!
//! Per round: a fresh store filled before the daemon starts with the real
//! `nix-store --import` (host 2.8, local mode) of `gc_paths` small paths linked as a DAG
//! and rooted nowhere, so all of them are dead. Timed: one `CollectGarbage`
//! (`DeleteDead`, whole store) through the daemon from our protocol client — the client
//! would only wait. The daemon must report at least those paths deleted, and the newest
//! one must be gone.

use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::types::{GcAction, GcOptions, GcPaths};
use nixnest_testkit::TestStore;

use super::{Ctx, Round, Runner, Stopwatch, import_local, store_dir, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, Result};
use crate::objects::{self, Links};

struct Gc {
    kind: Kind,
}

pub fn start(_ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    Ok(Box::new(Gc { kind }))
}

impl Runner for Gc {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        let n = ctx.sizes.gc_paths;
        let store = TestStore::new();
        let sd = store_dir(&store)?;
        let objs = objects::small_objects(&sd, "dead", n, 64, Links::Dag)?;
        import_local(&store, &objects::export_stream(&sd, &objs), None)?;
        let last = objs
            .last()
            .map(|o| o.info.path.clone())
            .ok_or_else(|| Error::Setup("gc needs at least one path".into()))?;
        drop(objs);
        let running = Running::start(self.kind, &store, &ctx.programs);
        let socket = running.socket().to_owned();
        let options = GcOptions {
            action: GcAction::DeleteDead,
            paths: GcPaths::WholeStore,
            ignore_liveness: false,
            max_freed: u64::MAX,
        };
        let mut c = ctx
            .rt
            .block_on(UnixDaemonClient::connect(&socket, sd.clone()))?;
        let sampler = sample.then(|| running.procs.sample());
        let t = Stopwatch::start(&running);
        let result = ctx.rt.block_on(c.collect_garbage(&options))?;
        let (elapsed, cpu) = t.stop();
        let memory = sampler.map(|s| s.stop());
        if result.paths.len() < n {
            return Err(Error::Check(format!(
                "GC deleted {} paths, expected at least {n}",
                result.paths.len()
            )));
        }
        if ctx.rt.block_on(c.is_valid_path(&last))? {
            return Err(Error::Check(format!("{last} is still valid after GC")));
        }
        drop(c);
        drop(running);
        Ok(Round {
            elapsed: Some(elapsed),
            memory,
            notes: with_cpu(cpu, vec![("paths_per_s", n as f64 / elapsed.as_secs_f64())]),
        })
    }
}
