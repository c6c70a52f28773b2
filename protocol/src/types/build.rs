//! Build requests and results.
//!
//! ```text
//! BuildMode    u64 0 normal | 1 repair | 2 check
//! BuildResult  u64 status, string errorMsg,
//!              [≥1.29] u64 timesBuilt, bool isNonDeterministic, i64 startTime, i64 stopTime,
//!              [≥1.37] opt<i64> cpuUser µs, opt<i64> cpuSystem µs,
//!              [≥1.28] builtOutputs:
//!                 map<string DrvOutput id, string Realisation JSON>                (no feature)
//!                 map<string outputName, UnkeyedRealisation>   (realisation-with-path-not-hash)
//! KeyedBuildResult  DerivedPath, BuildResult
//! BasicDerivation   u64 n, n × (string name, string path, string hashAlgo, string hash),
//!                   set<path> inputSrcs, string platform, string builder,
//!                   list<string> args, u64 n, n × (string key, string value)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::AsyncRead;

use nixnest_core::{DerivedPath, StorePath};

use crate::error::{Error, Result};
use crate::types::realisation::{DrvOutput, Realisation, UnkeyedRealisation};
use crate::version::feature;
use crate::wire::{Tagged, WireReader, WireType, WireWriter, limits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildMode {
    Normal,
    Repair,
    Check,
}

impl WireType for BuildMode {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        match r.read_u64().await? {
            0 => Ok(BuildMode::Normal),
            1 => Ok(BuildMode::Repair),
            2 => Ok(BuildMode::Check),
            value => Err(Error::BadEnum {
                field: "build mode",
                kind: "build mode (0 normal, 1 repair, 2 check)",
                value,
            }),
        }
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(match self {
            BuildMode::Normal => 0,
            BuildMode::Repair => 1,
            BuildMode::Check => 2,
        });
    }
}

/// `BuildResult::Status` with Nix's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    TransientFailure = 6,
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 15] = [
        BuildStatus::Built,
        BuildStatus::Substituted,
        BuildStatus::AlreadyValid,
        BuildStatus::PermanentFailure,
        BuildStatus::InputRejected,
        BuildStatus::OutputRejected,
        BuildStatus::TransientFailure,
        BuildStatus::CachedFailure,
        BuildStatus::TimedOut,
        BuildStatus::MiscFailure,
        BuildStatus::DependencyFailed,
        BuildStatus::LogLimitExceeded,
        BuildStatus::NotDeterministic,
        BuildStatus::ResolvesToAlreadyValid,
        BuildStatus::NoSubstituters,
    ];

    pub fn from_u64(v: u64) -> Option<Self> {
        BuildStatus::ALL.into_iter().find(|s| *s as u64 == v)
    }

    pub fn is_success(self) -> bool {
        matches!(
            self,
            BuildStatus::Built
                | BuildStatus::Substituted
                | BuildStatus::AlreadyValid
                | BuildStatus::ResolvesToAlreadyValid
        )
    }
}

/// The outcome of building one derived path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildResult {
    pub status: BuildStatus,
    pub error_msg: String,
    pub times_built: u64,
    pub is_non_deterministic: bool,
    pub start_time: i64,
    pub stop_time: i64,
    /// Microseconds of user CPU time, if measured (≥ 1.37).
    pub cpu_user: Option<i64>,
    pub cpu_system: Option<i64>,
    /// Keyed by output name. Without the feature the wire key is the realisation's
    /// DrvOutput id; with it, the output name (and the id's hash is not sent: decoding
    /// gives [`DrvOutput::placeholder`]).
    pub built_outputs: BTreeMap<String, Realisation>,
}

impl BuildResult {
    pub fn new(status: BuildStatus) -> Self {
        BuildResult {
            status,
            error_msg: String::new(),
            times_built: 0,
            is_non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            cpu_user: None,
            cpu_system: None,
            built_outputs: BTreeMap::new(),
        }
    }

    pub fn failure(status: BuildStatus, msg: impl Into<String>) -> Self {
        BuildResult {
            error_msg: msg.into(),
            ..BuildResult::new(status)
        }
    }
}

impl WireType for BuildResult {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let value = r.read_u64().await?;
        let status = BuildStatus::from_u64(value).ok_or(Error::BadEnum {
            field: "build status",
            kind: "build status (0-14)",
            value,
        })?;
        let mut res = BuildResult::failure(status, r.read_text("errorMsg").await?);
        let v = r.version();
        if v.at_least(29) {
            res.times_built = r.read_u64().await?;
            res.is_non_deterministic = r.read_bool("isNonDeterministic").await?;
            res.start_time = r.read_i64().await?;
            res.stop_time = r.read_i64().await?;
        }
        if v.at_least(37) {
            res.cpu_user = Tagged::<i64>::decode(r).await?.0;
            res.cpu_system = Tagged::<i64>::decode(r).await?.0;
        }
        if v.at_least(28) {
            let n = r.read_count(limits::ITEMS, "builtOutputs").await?;
            let with_path = r.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH);
            for _ in 0..n {
                if with_path {
                    let name = r.read_string(limits::SHORT, "output name").await?;
                    let u = UnkeyedRealisation::decode(r).await?;
                    let real = Realisation {
                        id: DrvOutput::placeholder(&name),
                        out_path: u.out_path,
                        signatures: u.signatures,
                        dependent_realisations: BTreeMap::new(),
                    };
                    res.built_outputs.insert(name, real);
                } else {
                    let id = DrvOutput::decode(r).await?;
                    let real = Realisation::decode(r).await?;
                    res.built_outputs.insert(id.output, real);
                }
            }
        }
        Ok(res)
    }

    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(self.status as u64);
        w.write_str(&self.error_msg);
        let v = w.version();
        if v.at_least(29) {
            w.write_u64(self.times_built);
            w.write_bool(self.is_non_deterministic);
            w.write_i64(self.start_time);
            w.write_i64(self.stop_time);
        }
        if v.at_least(37) {
            Tagged(self.cpu_user).encode(w);
            Tagged(self.cpu_system).encode(w);
        }
        if v.at_least(28) {
            w.write_u64(self.built_outputs.len() as u64);
            let with_path = w.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH);
            for (name, real) in &self.built_outputs {
                if with_path {
                    w.write_str(name);
                    real.unkeyed().encode(w);
                } else {
                    // The key and the JSON's id name the same output as the map key.
                    let id = DrvOutput {
                        drv_hash: real.id.drv_hash,
                        output: name.clone(),
                    };
                    id.encode(w);
                    Realisation { id, ..real.clone() }.encode(w);
                }
            }
        }
    }
}

/// An element of BuildPathsWithResults' reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedBuildResult {
    pub path: DerivedPath,
    pub result: BuildResult,
}

impl WireType for KeyedBuildResult {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let path = DerivedPath::decode(r).await?;
        let result = BuildResult::decode(r).await?;
        Ok(KeyedBuildResult { path, result })
    }
    fn encode(&self, w: &mut WireWriter) {
        self.path.encode(w);
        self.result.encode(w);
    }
}

/// One output of a BasicDerivation as sent: the same four strings as in the `.drv`
/// ATerm (`path` and `hash` may be empty, `hashAlgo` is `[r:|text:]<algo>` or empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivationOutput {
    pub path: String,
    pub hash_algo: String,
    pub hash: String,
}

/// A derivation without `inputDrvs` (already resolved), as BuildDerivation sends it.
/// Kept as the wire's strings; the daemon turns it into a core derivation (which
/// validates paths and hashes) together with the drv path's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicDerivation {
    pub outputs: BTreeMap<String, DerivationOutput>,
    pub input_srcs: BTreeSet<StorePath>,
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl WireType for BasicDerivation {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let n = r.read_count(limits::ITEMS, "outputs").await?;
        let mut outputs = BTreeMap::new();
        for _ in 0..n {
            let name = r.read_string(limits::SHORT, "output name").await?;
            let path = r.read_string(limits::STORE_PATH, "output path").await?;
            let hash_algo = r.read_string(limits::SHORT, "output hashAlgo").await?;
            let hash = r.read_string(limits::SHORT, "output hash").await?;
            outputs.insert(
                name,
                DerivationOutput {
                    path,
                    hash_algo,
                    hash,
                },
            );
        }
        let input_srcs = BTreeSet::<StorePath>::decode(r).await?;
        let platform = r.read_string(limits::SHORT, "platform").await?;
        let builder = r.read_text("builder").await?;
        let args = Vec::<String>::decode(r).await?;
        let env = BTreeMap::<String, String>::decode(r).await?;
        Ok(BasicDerivation {
            outputs,
            input_srcs,
            platform,
            builder,
            args,
            env,
        })
    }

    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(self.outputs.len() as u64);
        for (name, o) in &self.outputs {
            w.write_str(name);
            w.write_str(&o.path);
            w.write_str(&o.hash_algo);
            w.write_str(&o.hash);
        }
        self.input_srcs.encode(w);
        w.write_str(&self.platform);
        w.write_str(&self.builder);
        self.args.encode(w);
        self.env.encode(w);
    }
}
