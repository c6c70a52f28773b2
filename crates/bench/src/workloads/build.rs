//! Workload 5: building many trivial derivations — the daemon's per-build overhead
//! (locks, build user, sandbox set-up, output registration), with `max-jobs` builds at a
//! time.
//!
//! The derivations are busybox `sh -c 'echo ${#deps} > $out'` builds (the test rig's
//! [`Derivation`]) in layers: each depends on two of the previous layer, so up to a
//! layer's width can build at once. Outputs refer to nothing, so each sandbox holds only
//! busybox and two inputs: the per-build cost measured is the daemon's, not that of
//! mounting ever larger input closures (with `echo $deps`, the closures grow with depth
//! and 2.8's slot time per build triples at 500 derivations). Stores are sandboxed (`sandbox = true`, no fallback)
//! with a private build-users group of `max-jobs` users and `max-jobs = <n>` in `nix.conf`.
//!
//! Per round: a fresh store and daemon; `nix-instantiate` through the daemon (untimed);
//! timed: `nix-store --realise` of every `.drv` (sid client, Nix 2.34) through the daemon.
//! Reported with it: milliseconds of build-slot time per build, `elapsed × max-jobs / n`,
//! an upper bound of the per-build overhead (the builders themselves take about a
//! millisecond).
//!
//! Before the first round a single derivation is built; a daemon that cannot do that (no
//! builder yet) is reported "not measured" with its error.

use nixnest_testkit::{BuildUsers, Client, Derivation, TestStore};

use super::{CLIENT_TIMEOUT, Ctx, Round, Runner, Stopwatch, exec, with_cpu};
use crate::daemons::{Kind, Running};
use crate::error::{Error, Result};

struct Build {
    kind: Kind,
}

pub fn start(ctx: &Ctx, kind: Kind) -> Result<Box<dyn Runner>> {
    if !Client::Sid.is_available() {
        return Err(Error::Unsupported(
            "the sid client chroot is missing (tests/prepare-clients)".into(),
        ));
    }
    let probe = Build { kind };
    if let Err(e) = probe.build_dag(ctx, 1, false) {
        return Err(match (kind, e) {
            (Kind::Nixnest, Error::Command { stderr, .. }) => Error::Unsupported(format!(
                "the daemon cannot build yet: {}",
                first_error_line(&stderr)
            )),
            (Kind::Nixnest, e) => Error::Unsupported(format!(
                "the daemon cannot build yet: {}",
                first_error_line(&e.to_string())
            )),
            (Kind::Nix(_), e) => e,
        });
    }
    Ok(Box::new(probe))
}

/// The line of a Nix client's output that states the error (Nix prints the expression
/// around it too).
pub(super) fn first_error_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("error:"))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or_default()
        .to_owned()
}

/// The expression of `n` derivations in layers (see the module docs), evaluating to the
/// list of all of them.
fn dag_expr(n: usize, salt: &str) -> String {
    let width = ((n as f64).sqrt() as usize).clamp(2, 20);
    let mut expr = String::from("let\n");
    for i in 0..n {
        let mut deps: Vec<usize> = Vec::new();
        if i >= width {
            let prev = (i / width - 1) * width;
            let p = i % width;
            deps.push(prev + p);
            let q = prev + (p + 1) % width;
            if q != prev + p {
                deps.push(q);
            }
        }
        let deps: Vec<String> = deps.iter().map(|d| format!("d{d}")).collect();
        let drv = Derivation::new(&format!("bench-{i}"), "echo ${#deps} > $out")
            .env("salt", salt)
            .attr("deps", &format!("[ {} ]", deps.join(" ")));
        expr.push_str(&format!("d{i} = {};\n", drv.to_nix()));
    }
    expr.push_str("in [");
    for i in 0..n {
        expr.push_str(&format!(" d{i}"));
    }
    expr.push_str(" ]\n");
    expr
}

impl Build {
    /// Builds a DAG of `n` derivations on a fresh store; the timed part is the realise.
    fn build_dag(&self, ctx: &Ctx, n: usize, sample: bool) -> Result<Round> {
        let jobs = ctx.sizes.max_jobs.max(1);
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(jobs))
            .conf(format!("max-jobs = {jobs}"))
            .build();
        let expr = store.write_expr("dag.nix", &dag_expr(n, &std::process::id().to_string()));
        let running = Running::start(self.kind, &store, &ctx.programs);
        let client = store.client(Client::Sid).daemon(&running.daemon);

        let mut inst = client.command("nix-instantiate");
        inst.arg(&expr);
        let drvs: Vec<String> = exec(&mut inst, None, CLIENT_TIMEOUT)?
            .lines()
            .map(str::to_owned)
            .collect();
        if drvs.len() != n {
            return Err(Error::Check(format!(
                "nix-instantiate gave {} derivations, expected {n}",
                drvs.len()
            )));
        }

        let mut realise = client.command("nix-store");
        realise.arg("--realise").args(&drvs);
        let sampler = sample.then(|| running.procs.sample());
        let t = Stopwatch::start(&running);
        let outs = exec(&mut realise, None, CLIENT_TIMEOUT)?;
        let (elapsed, cpu) = t.stop();
        let memory = sampler.map(|s| s.stop());
        let built = outs
            .lines()
            .filter(|l| std::path::Path::new(l).exists())
            .count();
        if built != n {
            return Err(Error::Check(format!(
                "{built} of {n} outputs exist after the build"
            )));
        }
        drop(running);
        Ok(Round {
            elapsed: Some(elapsed),
            memory,
            notes: with_cpu(
                cpu,
                vec![(
                    "slot_ms_per_build",
                    elapsed.as_secs_f64() * 1000.0 * jobs as f64 / n as f64,
                )],
            ),
        })
    }
}

impl Runner for Build {
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round> {
        self.build_dag(ctx, ctx.sizes.build_drvs, sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_refers_to_earlier_layers_only() {
        let e = dag_expr(9, "s");
        assert!(e.contains("d0 = derivation"));
        assert!(e.contains("d8 = derivation"));
        // width 3: d3 depends on d0 and d1, d5 on d2 and d0.
        assert!(e.contains("deps = [ d0 d1 ]"));
        assert!(e.contains("deps = [ d2 d0 ]"));
        assert!(e.ends_with("in [ d0 d1 d2 d3 d4 d5 d6 d7 d8 ]\n"));
    }
}
