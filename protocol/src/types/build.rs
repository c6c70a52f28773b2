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

use nixnest_core::{BasicDerivation, DerivationOutput, DerivedPath, DrvOutput, StorePath};

use crate::error::{Error, Result};
use crate::types::realisation::{Realisation, UnkeyedRealisation, placeholder_drv_output};
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
    /// gives [`placeholder_drv_output`]).
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
                        id: placeholder_drv_output(&name),
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

/// Reads a BasicDerivation (BuildDerivation's argument). Its name is not on the wire:
/// it is the name of the drv path sent before it, minus `.drv`. Outputs are checked as
/// in a `.drv` file (a fixed output's path must follow from its content address).
pub async fn read_basic_derivation<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
    drv_path: &StorePath,
) -> Result<BasicDerivation> {
    let name = drv_path
        .derivation_name()
        .ok_or_else(|| Error::invalid("drvPath", format!("'{drv_path}' is not a .drv path")))?
        .to_owned();
    let n = r.read_count(limits::ITEMS, "outputs").await?;
    let mut outputs = BTreeMap::new();
    for _ in 0..n {
        let output = r.read_string(limits::SHORT, "output name").await?;
        let path = r.read_string(limits::STORE_PATH, "output path").await?;
        let hash_algo = r.read_string(limits::SHORT, "output hashAlgo").await?;
        let hash = r.read_string(limits::SHORT, "output hash").await?;
        let out = DerivationOutput::from_aterm_fields(
            r.store_dir(),
            &name,
            &output,
            &path,
            &hash_algo,
            &hash,
        )
        .map_err(Error::value("derivation output"))?;
        outputs.insert(output, out);
    }
    let input_srcs = BTreeSet::<StorePath>::decode(r).await?;
    let platform = r.read_string(limits::SHORT, "platform").await?;
    let builder = r.read_text("builder").await?;
    let args = Vec::<String>::decode(r).await?;
    let env = BTreeMap::<String, String>::decode(r).await?;
    Ok(BasicDerivation {
        name,
        outputs,
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}

/// Writes a BasicDerivation: per output the same `(path, hashAlgo, hash)` strings as in
/// the `.drv` file.
pub fn write_basic_derivation(w: &mut WireWriter, drv: &BasicDerivation) {
    w.write_u64(drv.outputs.len() as u64);
    for (output, o) in &drv.outputs {
        // Only a fixed output whose path cannot be computed fails here, and such a
        // derivation could not have been read or built; its strings are left empty.
        let (path, algo, hash) = o
            .to_aterm_fields(w.store_dir(), &drv.name, output)
            .unwrap_or_default();
        w.write_str(output);
        w.write_str(&path);
        w.write_str(&algo);
        w.write_str(&hash);
    }
    drv.input_srcs.encode(w);
    w.write_str(&drv.platform);
    w.write_str(&drv.builder);
    drv.args.encode(w);
    drv.env.encode(w);
}
