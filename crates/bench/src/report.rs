//! The results: a Markdown table for people (and `docs/benchmarks.md`), and JSON for
//! tools.
//!
//! JSON layout (`--json FILE`):
//! ```text
//! { "machine": {...}, "command": "...", "daemons": {"nixnest": "...", ...},
//!   "memory_method": "...",
//!   "workloads": [ { "name", "title",
//!       "nixnest_s", "nix_daemon_s", "ratio", "nixnest_rss_kib", "nix_daemon_rss_kib",
//!       "nix_daemon_2_8_s", "ratio_2_8", "nix_daemon_2_8_rss_kib",
//!       "results": { "<daemon id>": { "status", "reason"?, "median_s", "rounds_s",
//!                                     "rss_kib", "memory": {...}, "notes": {...} } } } ] }
//! ```
//! `nix_daemon_*` is the newest real daemon measured (2.34 when present), `ratio` is its
//! time divided by nixnest's (above 1: nixnest is faster). Values that were not measured
//! are `null`, with the reason in `results`.

use serde_json::{Map, Value, json};

use crate::daemons::Kind;
use crate::machine::Machine;
use crate::workloads::{Outcome, Workload};

pub struct Row {
    pub id: &'static str,
    pub title: String,
    pub timed: bool,
    pub outcomes: Vec<(Kind, Outcome)>,
}

impl Row {
    pub fn new(w: &Workload, outcomes: Vec<(Kind, Outcome)>) -> Row {
        Row {
            id: w.id,
            title: w.title.clone(),
            timed: w.timed,
            outcomes,
        }
    }

    fn outcome(&self, kind: Kind) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, o)| o)
    }

    fn seconds(&self, kind: Kind) -> Option<f64> {
        match self.outcome(kind)? {
            Outcome::Measured(m) if self.timed => m.median(),
            _ => None,
        }
    }

    fn rss_kib(&self, kind: Kind) -> Option<u64> {
        match self.outcome(kind)? {
            Outcome::Measured(m) => m.memory.map(|p| p.rss_kib()),
            _ => None,
        }
    }
}

pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub quick: bool,
    pub kinds: Vec<Kind>,
    pub rows: Vec<Row>,
}

/// The newest real daemon among `kinds` (the one `ratio` compares against).
fn newest_real(kinds: &[Kind]) -> Option<Kind> {
    kinds
        .iter()
        .filter_map(|&k| match k {
            Kind::Nix(c) => Some((version_key(c.version()), k)),
            Kind::Nixnest => None,
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, k)| k)
}

/// `"2.34.8"` → `[2, 34, 8]`, which orders versions correctly.
fn version_key(v: &str) -> Vec<u32> {
    v.split('.').filter_map(|p| p.parse().ok()).collect()
}

impl Report {
    /// The Markdown report: machine, command, the table, notes and footnotes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("Machine:\n\n");
        for l in self.machine.lines() {
            out.push_str(&format!("* {l}\n"));
        }
        out.push_str(&format!("\nCommand: `{}`\n", self.command));
        if self.quick {
            out.push_str("\n**Quick run**: tiny sizes, one round; it checks the harness, its numbers mean nothing.\n");
        }
        out.push_str("\nDaemons:\n\n");
        for k in &self.kinds {
            out.push_str(&format!("* `{}`: {}\n", k.id(), k.describe()));
        }
        out.push('\n');

        let has_nixnest = self.kinds.contains(&Kind::Nixnest);
        let mut header = vec!["workload".to_owned()];
        for k in &self.kinds {
            header.push(format!("{} time", k.id()));
            if *k != Kind::Nixnest && has_nixnest {
                header.push(format!("{} / nixnest", k.id()));
            }
        }
        for k in &self.kinds {
            header.push(format!("{} RSS", k.id()));
        }
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        ));

        let mut footnotes: Vec<String> = Vec::new();
        for row in &self.rows {
            let mut cells = vec![row.title.clone()];
            for k in &self.kinds {
                let cell = match row.outcome(*k) {
                    Some(Outcome::Measured(_)) if !row.timed => "—".to_owned(),
                    Some(Outcome::Measured(m)) => m.median().map_or("—".into(), fmt_seconds),
                    Some(Outcome::NotMeasured(why)) => {
                        footnotes.push(format!("{} on {}: not measured: {why}", row.id, k.id()));
                        format!("not measured [{}]", footnotes.len())
                    }
                    Some(Outcome::Failed(why)) => {
                        footnotes.push(format!(
                            "{} on {}: failed: {}",
                            row.id,
                            k.id(),
                            one_line(why)
                        ));
                        format!("failed [{}]", footnotes.len())
                    }
                    None => "—".to_owned(),
                };
                cells.push(cell);
                if *k != Kind::Nixnest && has_nixnest {
                    cells.push(match (row.seconds(*k), row.seconds(Kind::Nixnest)) {
                        (Some(real), Some(ours)) if ours > 0.0 => fmt_ratio(real / ours),
                        _ => "—".to_owned(),
                    });
                }
            }
            for k in &self.kinds {
                cells.push(row.rss_kib(*k).map_or("—".into(), fmt_kib));
            }
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }

        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|row| {
                let parts: Vec<String> = row
                    .outcomes
                    .iter()
                    .filter_map(|(k, o)| match o {
                        Outcome::Measured(m) if !m.notes.is_empty() => Some(format!(
                            "{}: {}",
                            k.id(),
                            m.notes
                                .iter()
                                .map(|(n, v)| format!("{n} {}", fmt_num(*v)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                        _ => None,
                    })
                    .collect();
                (!parts.is_empty()).then(|| format!("* {}: {}", row.id, parts.join("; ")))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nDerived values (medians over the rounds):\n\n");
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        let memory: Vec<String> = self
            .rows
            .iter()
            .flat_map(|row| {
                row.outcomes.iter().filter_map(move |(k, o)| match o {
                    Outcome::Measured(m) => m.memory.map(|p| {
                        format!(
                            "* {} on {}: PSS-sum peak {}, main VmHWM {}, largest other VmHWM {}, up to {} processes (+{} builders, not counted), {} samples{}",
                            row.id,
                            k.id(),
                            fmt_kib(p.pss_peak_kib),
                            fmt_kib(p.main_hwm_kib),
                            fmt_kib(p.worker_max_hwm_kib),
                            p.processes_peak,
                            p.build_processes_peak,
                            p.samples,
                            p.cgroup_peak_kib
                                .map(|c| format!(", cgroup memory.peak {}", fmt_kib(c)))
                                .unwrap_or_default()
                        )
                    }),
                    _ => None,
                })
            })
            .collect();
        if !memory.is_empty() {
            out.push_str("\nMemory details:\n\n");
            for m in memory {
                out.push_str(&m);
                out.push('\n');
            }
        }
        if !footnotes.is_empty() {
            out.push('\n');
            for (i, f) in footnotes.iter().enumerate() {
                out.push_str(&format!("[{}] {f}\n", i + 1));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let newest = newest_real(&self.kinds);
        let host = self
            .kinds
            .iter()
            .copied()
            .find(|k| *k == Kind::Nix(nixnest_testkit::Client::Host));
        let workloads: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let ours = row.seconds(Kind::Nixnest);
                let ratio = |k: Option<Kind>| match (k.and_then(|k| row.seconds(k)), ours) {
                    (Some(real), Some(ours)) if ours > 0.0 => json!(real / ours),
                    _ => Value::Null,
                };
                let mut results = Map::new();
                for (k, o) in &row.outcomes {
                    results.insert(k.id().to_owned(), outcome_json(o, row.timed));
                }
                json!({
                    "name": row.id,
                    "title": row.title,
                    "nixnest_s": ours,
                    "nix_daemon_s": newest.and_then(|k| row.seconds(k)),
                    "ratio": ratio(newest),
                    "nixnest_rss_kib": row.rss_kib(Kind::Nixnest),
                    "nix_daemon_rss_kib": newest.and_then(|k| row.rss_kib(k)),
                    "nix_daemon_version": newest.map(|k| k.id()),
                    "nix_daemon_2_8_s": host.and_then(|k| row.seconds(k)),
                    "ratio_2_8": ratio(host),
                    "nix_daemon_2_8_rss_kib": host.and_then(|k| row.rss_kib(k)),
                    "results": results,
                })
            })
            .collect();
        let daemons: Map<String, Value> = self
            .kinds
            .iter()
            .map(|k| (k.id().to_owned(), json!(k.describe())))
            .collect();
        json!({
            "machine": self.machine,
            "command": self.command,
            "quick": self.quick,
            "daemons": daemons,
            "memory_method": crate::memory::method_name(),
            "workloads": workloads,
        })
    }
}

fn outcome_json(o: &Outcome, timed: bool) -> Value {
    match o {
        Outcome::Measured(m) => {
            let notes: Map<String, Value> = m
                .notes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            json!({
                "status": "measured",
                "median_s": if timed { m.median() } else { None },
                "rounds_s": if timed { m.times.clone() } else { Vec::new() },
                "rss_kib": m.memory.map(|p| p.rss_kib()),
                "memory": m.memory.map(|p| json!({
                    "pss_peak_kib": p.pss_peak_kib,
                    "main_hwm_kib": p.main_hwm_kib,
                    "worker_max_hwm_kib": p.worker_max_hwm_kib,
                    "processes_peak": p.processes_peak,
                    "build_processes_peak": p.build_processes_peak,
                    "samples": p.samples,
                    "cgroup_peak_kib": p.cgroup_peak_kib,
                })),
                "notes": notes,
            })
        }
        Outcome::NotMeasured(why) => json!({"status": "not measured", "reason": why}),
        Outcome::Failed(why) => json!({"status": "failed", "reason": why}),
    }
}

fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 300 {
        let cut: String = joined.chars().take(300).collect();
        format!("{cut} …")
    } else {
        joined
    }
}

fn fmt_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 1.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}× (nixnest slower)")
    }
}

fn fmt_kib(k: u64) -> String {
    if k >= 10 * 1024 {
        format!("{:.0} MiB", k as f64 / 1024.0)
    } else if k >= 1024 {
        format!("{:.1} MiB", k as f64 / 1024.0)
    } else {
        format!("{k} KiB")
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixnest_testkit::Client;

    #[test]
    fn newest_real_daemon_is_2_34() {
        let kinds = [
            Kind::Nixnest,
            Kind::Nix(Client::Host),
            Kind::Nix(Client::Sid),
        ];
        assert_eq!(newest_real(&kinds), Some(Kind::Nix(Client::Sid)));
        assert_eq!(
            newest_real(&[Kind::Nixnest, Kind::Nix(Client::Host)]),
            Some(Kind::Nix(Client::Host))
        );
        assert_eq!(newest_real(&[Kind::Nixnest]), None);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_seconds(0.0123), "12.3 ms");
        assert_eq!(fmt_seconds(2.5), "2.50 s");
        assert_eq!(fmt_ratio(31.62), "31.6×");
        assert_eq!(fmt_ratio(0.5), "0.50× (nixnest slower)");
        assert_eq!(fmt_kib(512), "512 KiB");
        assert_eq!(fmt_kib(2048), "2.0 MiB");
        assert_eq!(fmt_kib(65536), "64 MiB");
    }
}
