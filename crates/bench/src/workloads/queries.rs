//! Workload 2: many clients at once asking about paths — the daemon's read path under
//! concurrency (CppNix: one process and one SQLite connection per client; nixnest: tasks
//! sharing a reader pool).
//!
//! The store is filled before the daemon starts with the real `nix-store --import` of one
//! export stream of `query_paths` small paths. Each round connects `query_clients` clients
//! (untimed), then times all of them doing `queries_per_client` `QueryPathInfo`s each,
//! concurrently, over paths picked by a per-client pseudo-random sequence. Every answer's
//! NAR hash is checked against the imported one.

use std::sync::Arc;

use nixnest_core::{Hash, StoreDir, StorePath};
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_testkit::TestStore;

use super::{Ctx, Round, Runner, Stopwatch, import_local, store_dir, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, Result};
use crate::objects::{self, Links};

struct Queries {
    running: Running,
    store_dir: StoreDir,
    paths: Arc<Vec<(StorePath, Hash)>>,
    _store: TestStore,
}

pub fn start(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    let store = TestStore::new();
    let sd = store_dir(&store)?;
    let objs = objects::small_objects(&sd, "q", ctx.sizes.query_paths, 64, Links::None)?;
    import_local(&store, &objects::export_stream(&sd, &objs), None)?;
    let paths = objs
        .into_iter()
        .map(|o| (o.info.path, o.info.nar_hash))
        .collect();
    let running = Running::start(kind, &store, &ctx.programs);
    Ok(Box::new(Queries {
        running,
        store_dir: sd,
        paths: Arc::new(paths),
        _store: store,
    }))
}

impl Runner for Queries {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        let s = &ctx.sizes;
        let socket = self.running.socket().to_owned();
        let clients = ctx.rt.block_on(async {
            let mut clients = Vec::with_capacity(s.query_clients);
            for _ in 0..s.query_clients {
                clients.push(UnixDaemonClient::connect(&socket, self.store_dir.clone()).await?);
            }
            Ok::<_, Error>(clients)
        })?;
        let sampler = sample.then(|| self.running.procs.sample());
        let per_client = s.queries_per_client;
        let t = Stopwatch::start(&self.running);
        ctx.rt.block_on(async {
            let mut tasks = Vec::new();
            for (i, mut c) in clients.into_iter().enumerate() {
                let paths = Arc::clone(&self.paths);
                tasks.push(tokio::spawn(async move {
                    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    for _ in 0..per_client {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = (x % paths.len().max(1) as u64) as usize;
                        let Some((path, hash)) = paths.get(k) else {
                            continue;
                        };
                        match c.query_path_info(path).await? {
                            Some(info) if info.nar_hash == *hash => {}
                            Some(_) => {
                                return Err(Error::Check(format!("wrong narHash for {path}")));
                            }
                            None => return Err(Error::Check(format!("{path} is not valid"))),
                        }
                    }
                    Ok(())
                }));
            }
            for task in tasks {
                task.await
                    .map_err(|e| Error::Check(format!("client task died: {e}")))??;
            }
            Ok::<_, Error>(())
        })?;
        let (elapsed, cpu) = t.stop();
        let total = (s.query_clients * per_client).max(1) as f64;
        Ok(Round {
            elapsed: Some(elapsed),
            memory: sampler.map(|s| s.stop()),
            notes: with_cpu(
                cpu,
                vec![("queries_per_s", total / elapsed.as_secs_f64().max(1e-9))],
            ),
        })
    }
}
