//! The smaller composite values: garbage-collector options and results, QueryMissing's
//! reply, substitutable path infos, SetOptions' settings, builder-RPC SingleDerivedPath.
//!
//! ```text
//! GcOptions  u64 action (0 live, 1 dead, 2 delete dead, 3 delete specific),
//!            pathsToDelete: set<path>                      (no feature)
//!                         | u64 0, set<path>, bool deleteReferrers | u64 1 (whole store)
//!                                                 (feature delete-dead-specific-referrers)
//!            bool ignoreLiveness, u64 maxFreed, u64 0, u64 0, u64 0 (obsolete)
//! GcResult   set<string> paths, u64 bytesFreed, u64 0 (obsolete)
//! Missing    set<path> willBuild, set<path> willSubstitute, set<path> unknown,
//!            u64 downloadSize, u64 narSize
//! SubstitutablePathInfo  optpath deriver, set<path> references, u64 downloadSize, u64 narSize
//! ClientSettings (SetOptions): 12 u64 fields, [≥1.12] u64 n, n × (string name, string value)
//! SingleDerivedPath  u64 0, path | u64 1, SingleDerivedPath, string output
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use tokio::io::AsyncRead;

use nixnest_core::StorePath;
use nixnest_core::store_path::validate_output_name;

use crate::error::{Error, Result};
use crate::stderr::Verbosity;
use crate::types::{read_opt_path, read_path, write_opt_path, write_path};
use crate::version::feature;
use crate::wire::{WireReader, WireType, WireWriter, limits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GcAction {
    ReturnLive = 0,
    ReturnDead = 1,
    DeleteDead = 2,
    DeleteSpecific = 3,
}

impl WireType for GcAction {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        match r.read_u64().await? {
            0 => Ok(GcAction::ReturnLive),
            1 => Ok(GcAction::ReturnDead),
            2 => Ok(GcAction::DeleteDead),
            3 => Ok(GcAction::DeleteSpecific),
            value => Err(Error::BadEnum {
                field: "gc action",
                kind: "garbage collector action (0-3)",
                value,
            }),
        }
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(*self as u64);
    }
}

/// Which paths a collection considers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcPaths {
    /// These paths (for DeleteSpecific); without the feature an empty set is how
    /// "the whole store" is said for the other actions.
    Specific {
        paths: BTreeSet<StorePath>,
        /// Also delete dead referrers of the paths (feature form only).
        delete_referrers: bool,
    },
    WholeStore,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOptions {
    pub action: GcAction,
    pub paths: GcPaths,
    pub ignore_liveness: bool,
    /// Bytes; `u64::MAX` = no limit.
    pub max_freed: u64,
}

impl WireType for GcOptions {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let action = GcAction::decode(r).await?;
        let paths = if r.has_feature(feature::DELETE_DEAD_SPECIFIC_REFERRERS) {
            match r.read_u64().await? {
                0 => {
                    let paths = BTreeSet::<StorePath>::decode(r).await?;
                    let delete_referrers = r.read_bool("deleteReferrers").await?;
                    GcPaths::Specific {
                        paths,
                        delete_referrers,
                    }
                }
                1 => GcPaths::WholeStore,
                value => {
                    return Err(Error::BadEnum {
                        field: "pathsToDelete",
                        kind: "GCPaths tag (0 specific, 1 whole store)",
                        value,
                    });
                }
            }
        } else {
            GcPaths::Specific {
                paths: BTreeSet::<StorePath>::decode(r).await?,
                delete_referrers: false,
            }
        };
        let ignore_liveness = r.read_bool("ignoreLiveness").await?;
        let max_freed = r.read_u64().await?;
        for _ in 0..3 {
            r.read_u64().await?;
        }
        Ok(GcOptions {
            action,
            paths,
            ignore_liveness,
            max_freed,
        })
    }

    fn encode(&self, w: &mut WireWriter) {
        self.action.encode(w);
        if w.has_feature(feature::DELETE_DEAD_SPECIFIC_REFERRERS) {
            match &self.paths {
                GcPaths::Specific {
                    paths,
                    delete_referrers,
                } => {
                    w.write_u64(0);
                    paths.encode(w);
                    w.write_bool(*delete_referrers);
                }
                GcPaths::WholeStore => w.write_u64(1),
            }
        } else {
            match &self.paths {
                GcPaths::Specific { paths, .. } => paths.encode(w),
                GcPaths::WholeStore => w.write_u64(0),
            }
        }
        w.write_bool(self.ignore_liveness);
        w.write_u64(self.max_freed);
        for _ in 0..3 {
            w.write_u64(0);
        }
    }
}

/// CollectGarbage's reply. `paths` are printed paths (they may name junk such as
/// `.lock` files that are not store paths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcResult {
    pub paths: BTreeSet<String>,
    pub bytes_freed: u64,
}

impl WireType for GcResult {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let paths = BTreeSet::<String>::decode(r).await?;
        let bytes_freed = r.read_u64().await?;
        r.read_u64().await?;
        Ok(GcResult { paths, bytes_freed })
    }
    fn encode(&self, w: &mut WireWriter) {
        self.paths.encode(w);
        w.write_u64(self.bytes_freed);
        w.write_u64(0);
    }
}

/// QueryMissing's reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub will_build: BTreeSet<StorePath>,
    pub will_substitute: BTreeSet<StorePath>,
    pub unknown: BTreeSet<StorePath>,
    pub download_size: u64,
    pub nar_size: u64,
}

impl WireType for Missing {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        Ok(Missing {
            will_build: BTreeSet::decode(r).await?,
            will_substitute: BTreeSet::decode(r).await?,
            unknown: BTreeSet::decode(r).await?,
            download_size: r.read_u64().await?,
            nar_size: r.read_u64().await?,
        })
    }
    fn encode(&self, w: &mut WireWriter) {
        self.will_build.encode(w);
        self.will_substitute.encode(w);
        self.unknown.encode(w);
        w.write_u64(self.download_size);
        w.write_u64(self.nar_size);
    }
}

/// What a substituter knows about a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubstitutablePathInfo {
    pub deriver: Option<StorePath>,
    pub references: BTreeSet<StorePath>,
    pub download_size: u64,
    pub nar_size: u64,
}

impl WireType for SubstitutablePathInfo {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        Ok(SubstitutablePathInfo {
            deriver: read_opt_path(r, "deriver").await?,
            references: BTreeSet::decode(r).await?,
            download_size: r.read_u64().await?,
            nar_size: r.read_u64().await?,
        })
    }
    fn encode(&self, w: &mut WireWriter) {
        write_opt_path(w, self.deriver.as_ref());
        self.references.encode(w);
        w.write_u64(self.download_size);
        w.write_u64(self.nar_size);
    }
}

/// SetOptions' payload: the client's settings for this session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    /// Also the session's filter for `STDERR_NEXT`.
    pub verbosity: Verbosity,
    pub max_build_jobs: u64,
    pub max_silent_time: u64,
    /// Obsolete `useBuildHook` (clients send 1).
    pub use_build_hook: u64,
    /// `verboseBuild` as a verbosity: `Error` (0) means true, `Vomit` (7) false.
    pub verbose_build: Verbosity,
    /// Obsolete `logType` (0).
    pub log_type: u64,
    /// Obsolete `printBuildTrace` (0).
    pub print_build_trace: u64,
    pub build_cores: u64,
    pub use_substitutes: bool,
    /// Settings overridden on the client's command line, canonical names, in the order
    /// sent (≥ 1.12).
    pub overrides: Vec<(String, String)>,
}

impl ClientSettings {
    pub fn verbose_build(&self) -> bool {
        self.verbose_build == Verbosity::Error
    }
}

impl Default for ClientSettings {
    /// What a Nix 2.8 client sends without options.
    fn default() -> Self {
        ClientSettings {
            keep_failed: false,
            keep_going: false,
            try_fallback: false,
            verbosity: Verbosity::Info,
            max_build_jobs: 1,
            max_silent_time: 0,
            use_build_hook: 1,
            verbose_build: Verbosity::Error,
            log_type: 0,
            print_build_trace: 0,
            build_cores: 0,
            use_substitutes: true,
            overrides: Vec::new(),
        }
    }
}

const MAX_OVERRIDES: u64 = 4096;

impl WireType for ClientSettings {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let keep_failed = r.read_bool("keepFailed").await?;
        let keep_going = r.read_bool("keepGoing").await?;
        let try_fallback = r.read_bool("tryFallback").await?;
        let verbosity = Verbosity::read(r, "verbosity").await?;
        let max_build_jobs = r.read_u64().await?;
        let max_silent_time = r.read_u64().await?;
        let use_build_hook = r.read_u64().await?;
        let verbose_build = Verbosity::read(r, "verboseBuild").await?;
        let log_type = r.read_u64().await?;
        let print_build_trace = r.read_u64().await?;
        let build_cores = r.read_u64().await?;
        let use_substitutes = r.read_bool("useSubstitutes").await?;
        let mut overrides = Vec::new();
        if r.version().at_least(12) {
            let n = r.read_count(MAX_OVERRIDES, "overrides").await?;
            for _ in 0..n {
                let name = r.read_string(limits::SHORT, "setting name").await?;
                let value = r.read_text("setting value").await?;
                overrides.push((name, value));
            }
        }
        Ok(ClientSettings {
            keep_failed,
            keep_going,
            try_fallback,
            verbosity,
            max_build_jobs,
            max_silent_time,
            use_build_hook,
            verbose_build,
            log_type,
            print_build_trace,
            build_cores,
            use_substitutes,
            overrides,
        })
    }

    fn encode(&self, w: &mut WireWriter) {
        w.write_bool(self.keep_failed);
        w.write_bool(self.keep_going);
        w.write_bool(self.try_fallback);
        w.write_u64(self.verbosity as u64);
        w.write_u64(self.max_build_jobs);
        w.write_u64(self.max_silent_time);
        w.write_u64(self.use_build_hook);
        w.write_u64(self.verbose_build as u64);
        w.write_u64(self.log_type);
        w.write_u64(self.print_build_trace);
        w.write_u64(self.build_cores);
        w.write_bool(self.use_substitutes);
        if w.version().at_least(12) {
            w.write_u64(self.overrides.len() as u64);
            for (k, v) in &self.overrides {
                w.write_str(k);
                w.write_str(v);
            }
        }
    }
}

/// Builder-RPC's binary derived path (op 1000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SingleDerivedPath {
    Opaque(StorePath),
    Built {
        drv_path: Box<SingleDerivedPath>,
        output: String,
    },
}

/// Nesting deeper than this is not a real dynamic derivation.
const MAX_SINGLE_DERIVED_DEPTH: usize = 16;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn decode_single<'a, R: AsyncRead + Unpin + Send>(
    r: &'a mut WireReader<R>,
    depth: usize,
) -> BoxFuture<'a, Result<SingleDerivedPath>> {
    Box::pin(async move {
        match r.read_u64().await? {
            0 => Ok(SingleDerivedPath::Opaque(read_path(r, "path").await?)),
            1 => {
                if depth >= MAX_SINGLE_DERIVED_DEPTH {
                    return Err(Error::invalid(
                        "SingleDerivedPath",
                        format!("nested more than {MAX_SINGLE_DERIVED_DEPTH} levels"),
                    ));
                }
                let drv_path = Box::new(decode_single(r, depth + 1).await?);
                let output = r.read_string(limits::SHORT, "output").await?;
                validate_output_name(&output).map_err(Error::value("output"))?;
                Ok(SingleDerivedPath::Built { drv_path, output })
            }
            value => Err(Error::BadEnum {
                field: "SingleDerivedPath",
                kind: "SingleDerivedPath tag (0 opaque, 1 built)",
                value,
            }),
        }
    })
}

impl WireType for SingleDerivedPath {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        decode_single(r, 0).await
    }
    fn encode(&self, w: &mut WireWriter) {
        match self {
            SingleDerivedPath::Opaque(p) => {
                w.write_u64(0);
                write_path(w, p);
            }
            SingleDerivedPath::Built { drv_path, output } => {
                w.write_u64(1);
                drv_path.encode(w);
                w.write_str(output);
            }
        }
    }
}
