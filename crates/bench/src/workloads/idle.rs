//! Workload 8: memory at rest — an idle daemon, and the same daemon holding many idle
//! sessions.
//!
//! `idle`: a fresh daemon on an empty store, left alone for a moment, then one look at its
//! memory (sum of PSS over its processes; see [`crate::memory`]).
//!
//! `idle-connections`: the same, then `idle_connections` clients connect one after another
//! (handshake + `SetOptions`, what every real client sends first) and stay open; timed:
//! opening them all. After a moment, a second look: the memory with all sessions open,
//! and the difference per connection. CppNix holds a forked worker per session.

use std::time::Duration;

use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::types::ClientSettings;
use nixnest_testkit::TestStore;

use super::{Ctx, Round, Runner, Stopwatch, store_dir, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::Result;
use crate::memory::MemoryPeak;

/// How long a daemon is left alone before its memory is read: long enough for start-up
/// work to finish and for exiting processes to be gone.
const SETTLE: Duration = Duration::from_millis(500);

struct Idle {
    kind: Kind,
    connections: bool,
}

pub fn start_idle(_ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    Ok(Box::new(Idle {
        kind,
        connections: false,
    }))
}

pub fn start_connections(_ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    Ok(Box::new(Idle {
        kind,
        connections: true,
    }))
}

impl Runner for Idle {
    fn round(&mut self, ctx: &Ctx, _sample: bool) -> Result<Round> {
        let n = ctx.sizes.idle_connections;
        let store = TestStore::new();
        let sd = store_dir(&store)?;
        // nixnest serves max-connections sessions at once (default 1024); the others
        // would wait in the backlog, which is not what this measures.
        let cap = (n + 16).to_string();
        let running = Running::start_with(
            self.kind,
            &store,
            &ctx.programs,
            &[("max-connections", &cap)],
        );
        std::thread::sleep(SETTLE);
        let idle = running.procs.snapshot();
        if !self.connections {
            return Ok(Round {
                elapsed: None,
                memory: Some(MemoryPeak::from_snapshot(&idle)),
                notes: vec![("processes", idle.processes as f64)],
            });
        }
        let socket = running.socket().to_owned();
        let t = Stopwatch::start(&running);
        let clients = ctx.rt.block_on(async {
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                let mut c = UnixDaemonClient::connect(&socket, sd.clone()).await?;
                c.set_options(&ClientSettings::default()).await?;
                clients.push(c);
            }
            Ok::<_, crate::error::Error>(clients)
        })?;
        let (elapsed, cpu) = t.stop();
        std::thread::sleep(SETTLE);
        let busy = running.procs.snapshot();
        drop(clients);
        let per_connection = busy.pss_kib.saturating_sub(idle.pss_kib) as f64 / n.max(1) as f64;
        Ok(Round {
            elapsed: Some(elapsed),
            memory: Some(MemoryPeak::from_snapshot(&busy)),
            notes: with_cpu(
                cpu,
                vec![
                    ("idle_kib", idle.pss_kib as f64),
                    ("kib_per_connection", per_connection),
                    ("processes", busy.processes as f64),
                ],
            ),
        })
    }
}
