//! Workload 1: many short sessions, one after another — what every `nix` command costs
//! the daemon before it does any work.
//!
//! Each connection is our protocol client's handshake (at 1.38, or the daemon's version)
//! and one `IsValidPath` of a path that is valid, then close. CppNix forks a worker per
//! connection; nixnest spawns a task. A real client would measure its own start-up, so the
//! protocol client drives this one. The store holds one path, imported before the daemon
//! starts.

use nixnest_core::{StoreDir, StorePath};
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_testkit::TestStore;

use super::{Ctx, Round, Runner, Stopwatch, import_local, store_dir, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, Result};
use crate::objects::{self, Links};

struct Connections {
    running: Running,
    store_dir: StoreDir,
    probe: StorePath,
    // Dropped last: the daemon must die before its store.
    _store: TestStore,
}

pub fn start(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    let store = TestStore::new();
    let sd = store_dir(&store)?;
    let objs = objects::small_objects(&sd, "conn", 1, 64, Links::None)?;
    import_local(&store, &objects::export_stream(&sd, &objs), None)?;
    let probe = objs
        .first()
        .map(|o| o.info.path.clone())
        .ok_or_else(|| Error::Check("no probe object".into()))?;
    let running = Running::start(kind, &store, &ctx.programs);
    Ok(Box::new(Connections {
        running,
        store_dir: sd,
        probe,
        _store: store,
    }))
}

impl Runner for Connections {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        let n = ctx.sizes.connections;
        let sampler = sample.then(|| self.running.procs.sample());
        let socket = self.running.socket().to_owned();
        let t = Stopwatch::start(&self.running);
        ctx.rt.block_on(async {
            for _ in 0..n {
                let mut c = UnixDaemonClient::connect(&socket, self.store_dir.clone()).await?;
                if !c.is_valid_path(&self.probe).await? {
                    return Err(Error::Check(format!(
                        "IsValidPath says the imported {} is not valid",
                        self.probe
                    )));
                }
            }
            Ok(())
        })?;
        let (elapsed, cpu) = t.stop();
        Ok(Round {
            elapsed: Some(elapsed),
            memory: sampler.map(|s| s.stop()),
            notes: with_cpu(
                cpu,
                vec![(
                    "ms_per_connection",
                    elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64,
                )],
            ),
        })
    }
}
