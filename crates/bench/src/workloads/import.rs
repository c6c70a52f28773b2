//! Workload 3: importing big objects — one large file, and a directory of many small
//! files — with `AddToStoreNar` (framed NAR upload at ≥ 1.23).
//!
//! The NAR is generated once per run into a scratch file (pseudo-random contents, so no
//! layer can compress or deduplicate it), with its hash, so the client's only work during
//! the timed part is reading that file and framing it. Each round uses a fresh store and
//! a fresh daemon (the path must not be valid yet), and removes both afterwards. After the
//! upload, `IsValidPath` must say yes.

use nixnest_protocol::client::UnixDaemonClient;
use nixnest_testkit::TestStore;
use tokio::io::BufReader;

use super::{Ctx, Round, Runner, Stopwatch, store_dir, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, IoContext, Result};
use crate::objects::{BigShape, NarFile};

struct Import {
    kind: Kind,
    nar: NarFile,
}

pub fn start_large(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    let nar = ctx.big_nar(
        "bench-large",
        BigShape::OneFile {
            bytes: ctx.sizes.import_bytes,
        },
    )?;
    Ok(Box::new(Import { kind, nar }))
}

pub fn start_files(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    let nar = ctx.big_nar(
        "bench-files",
        BigShape::ManyFiles {
            files: ctx.sizes.import_files,
            bytes: ctx.sizes.import_bytes,
        },
    )?;
    Ok(Box::new(Import { kind, nar }))
}

impl Runner for Import {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        let store = TestStore::new();
        let sd = store_dir(&store)?;
        let info = self.nar.info(&sd)?;
        let running = Running::start(self.kind, &store, &ctx.programs);
        let socket = running.socket().to_owned();
        let file = self.nar.file.clone();
        let sampler = sample.then(|| running.procs.sample());
        let t = Stopwatch::start(&running);
        ctx.rt.block_on(async {
            let mut c = UnixDaemonClient::connect(&socket, sd.clone()).await?;
            let f = tokio::fs::File::open(&file)
                .await
                .context(|| format!("opening {}", file.display()))?;
            let mut nar = BufReader::with_capacity(1 << 20, f);
            c.add_to_store_nar(&info, false, true, &mut nar).await?;
            if !c.is_valid_path(&info.path).await? {
                return Err(Error::Check(format!(
                    "{} not valid after AddToStoreNar",
                    info.path
                )));
            }
            Ok(())
        })?;
        let (elapsed, cpu) = t.stop();
        let memory = sampler.map(|s| s.stop());
        let mib_per_s = self.nar.nar_size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64();
        drop(running);
        drop(store);
        Ok(Round {
            elapsed: Some(elapsed),
            memory,
            notes: with_cpu(cpu, vec![("mib_per_s", mib_per_s)]),
        })
    }
}
