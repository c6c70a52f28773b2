//! Requests: `u64 opcode` followed by the operation's fixed fields.
//!
//! [`Request::decode`] reads exactly the fixed fields. Operations that stream a payload
//! after them say so through [`Request::payload`]; the daemon consumes that payload
//! after it has entered the work phase, and drains it when it fails half-way so the
//! next request starts in sync. The request layouts are in the spec's §4 table; the
//! version-dependent ones are documented at their variants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tokio::io::AsyncRead;

use nixnest_core::{
    BasicDerivation, ContentAddress, ContentAddressMethod, DerivedPath, HashAlgo, StorePath,
    ValidPathInfo,
};

use crate::error::{Error, Result};
use crate::types::{
    BuildMode, ClientSettings, DrvOutput, DrvOutputWithPath, GcOptions, Realisation,
    SingleDerivedPath, UnkeyedRealisation, read_base_name, read_basic_derivation, read_path,
    write_basic_derivation, write_path,
};
use crate::version::{ProtocolVersion, feature};
use crate::wire::{WireReader, WireType, WireWriter, limits};

macro_rules! opcodes {
    ($($name:ident = $n:expr,)*) => {
        /// Worker operation numbers (`WorkerProto::Op`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Opcode {
            $($name = $n,)*
        }

        impl Opcode {
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            pub fn from_u64(v: u64) -> Option<Opcode> {
                match v {
                    $($n => Some(Opcode::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Opcode::$name => stringify!($name),)*
                }
            }
        }
    };
}

opcodes! {
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGC = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
    SubmitOutput = 1000,
    AddToStoreScanning = 1001,
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u64)
    }
}

/// How an operation's payload follows its fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    None,
    /// A framed stream (`u64 len, bytes` … `u64 0`): [`crate::framed::FramedReader`].
    Framed,
    /// A NAR written inline, self-delimiting: the daemon parses it to find its end.
    InlineNar,
    /// Pulled by the daemon with `STDERR_READ`: [`crate::framed::StderrReadSource`].
    StderrRead,
}

/// AddToStore (7) fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddToStoreRequest {
    /// < 1.25: `string name, bool fixed, u64 recursive (0/1), string hashAlgo`, then the
    /// data as an inline NAR (for flat files a NAR of one regular file).
    Legacy {
        name: String,
        fixed: bool,
        recursive: bool,
        hash_algo: String,
    },
    /// ≥ 1.25: `string name, string camStr, set<path> references, bool repair`, then the
    /// data framed (a NAR for `fixed:r:`, raw bytes for flat and text).
    ContentAddressed {
        name: String,
        method: ContentAddressMethod,
        algo: HashAlgo,
        references: BTreeSet<StorePath>,
        repair: bool,
    },
}

impl AddToStoreRequest {
    /// The name as sent; the store validates it when it adds the path (after the work
    /// phase started, so a bad name is an ordinary error, not a dropped connection).
    pub fn name(&self) -> &str {
        match self {
            AddToStoreRequest::Legacy { name, .. }
            | AddToStoreRequest::ContentAddressed { name, .. } => name,
        }
    }

    /// The method and algorithm the data is hashed with. In the legacy form `fixed = 0`
    /// means Nix's default, a NAR hashed with sha256, whatever else was sent.
    pub fn method_and_algo(&self) -> Result<(ContentAddressMethod, HashAlgo)> {
        match self {
            AddToStoreRequest::Legacy { fixed: false, .. } => {
                Ok((ContentAddressMethod::NixArchive, HashAlgo::Sha256))
            }
            AddToStoreRequest::Legacy {
                recursive,
                hash_algo,
                ..
            } => {
                let algo = HashAlgo::parse(hash_algo).map_err(Error::value("hashAlgo"))?;
                let method = if *recursive {
                    ContentAddressMethod::NixArchive
                } else {
                    ContentAddressMethod::Flat
                };
                Ok((method, algo))
            }
            AddToStoreRequest::ContentAddressed { method, algo, .. } => Ok((*method, *algo)),
        }
    }
}

/// RegisterDrvOutput (42) argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterDrvOutput {
    /// < 1.31: `string DrvOutput id, string outPath base name`.
    Legacy { id: DrvOutput, out_path: StorePath },
    /// ≥ 1.31: one string of Realisation JSON.
    Json(Realisation),
    /// Feature `realisation-with-path-not-hash`: DrvOutput + UnkeyedRealisation.
    WithPath {
        key: DrvOutputWithPath,
        value: UnkeyedRealisation,
    },
}

/// QueryRealisation (43) argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RealisationKey {
    /// `sha256:<hex>!<out>` (without the feature).
    Id(DrvOutput),
    /// Feature `realisation-with-path-not-hash`.
    WithPath(DrvOutputWithPath),
}

impl RealisationKey {
    pub fn output(&self) -> &str {
        match self {
            RealisationKey::Id(d) => &d.output,
            RealisationKey::WithPath(d) => &d.output,
        }
    }
}

/// A decoded request: the fixed fields of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    IsValidPath(StorePath),
    HasSubstitutes(StorePath),
    QueryPathHash(StorePath),
    QueryReferences(StorePath),
    QueryReferrers(StorePath),
    AddToStore(AddToStoreRequest),
    /// `string name, string text, set<path> references` (obsolete since 1.25).
    AddTextToStore {
        name: String,
        text: Vec<u8>,
        references: BTreeSet<StorePath>,
    },
    /// `list<DerivedPath>, [≥1.15] u64 BuildMode`.
    BuildPaths {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    EnsurePath(StorePath),
    AddTempRoot(StorePath),
    /// An absolute path of a symlink outside the store.
    AddIndirectRoot(String),
    SyncWithGC,
    FindRoots,
    /// `path, u64 sign` (the flag is obsolete and ignored).
    ExportPath(StorePath),
    QueryDeriver(StorePath),
    SetOptions(ClientSettings),
    CollectGarbage(GcOptions),
    QuerySubstitutablePathInfo(StorePath),
    QueryDerivationOutputs(StorePath),
    QueryAllValidPaths,
    QueryPathInfo(StorePath),
    /// The export stream is pulled with `STDERR_READ`.
    ImportPaths,
    QueryDerivationOutputNames(StorePath),
    /// The 32-character hash part.
    QueryPathFromHashPart(String),
    /// < 1.22: `set<path>`; ≥ 1.22: `map<path, string ca-or-empty>`.
    QuerySubstitutablePathInfos(BTreeMap<StorePath, Option<ContentAddress>>),
    /// `set<path>, [≥1.27] bool substitute`.
    QueryValidPaths {
        paths: BTreeSet<StorePath>,
        substitute: bool,
    },
    QuerySubstitutablePaths(BTreeSet<StorePath>),
    QueryValidDerivers(StorePath),
    OptimiseStore,
    VerifyStore {
        check_contents: bool,
        repair: bool,
    },
    /// `path drvPath, BasicDerivation, u64 BuildMode`.
    BuildDerivation {
        drv_path: StorePath,
        drv: BasicDerivation,
        mode: BuildMode,
    },
    AddSignatures {
        path: StorePath,
        sigs: BTreeSet<String>,
    },
    NarFromPath(StorePath),
    /// `ValidPathInfo with path, bool repair, bool dontCheckSigs`, then the NAR
    /// (≥1.23 framed, 1.21–1.22 via `STDERR_READ`, < 1.21 inline).
    AddToStoreNar {
        info: ValidPathInfo,
        repair: bool,
        dont_check_sigs: bool,
    },
    QueryMissing(Vec<DerivedPath>),
    QueryDerivationOutputMap(StorePath),
    RegisterDrvOutput(RegisterDrvOutput),
    QueryRealisation(RealisationKey),
    /// `bool repair, bool dontCheckSigs`, then a framed stream of
    /// `u64 n, n × (ValidPathInfo with path, NAR)`.
    AddMultipleToStore {
        repair: bool,
        dont_check_sigs: bool,
    },
    /// The derivation's base name, then the log framed.
    AddBuildLog(StorePath),
    BuildPathsWithResults {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    AddPermRoot {
        path: StorePath,
        gc_root: String,
    },
    /// Builder RPC (feature `submit-output`).
    SubmitOutput {
        path: SingleDerivedPath,
        output: String,
    },
    /// Builder RPC (feature `add-to-store-scanning`): `string name, string camStr`, then
    /// the data framed.
    AddToStoreScanning {
        name: String,
        method: ContentAddressMethod,
        algo: HashAlgo,
    },
}

async fn read_cam<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
) -> Result<(ContentAddressMethod, HashAlgo)> {
    let s = r.read_string(limits::SHORT, "camStr").await?;
    ContentAddressMethod::parse_with_algo(&s).map_err(Error::value("camStr"))
}

fn require_feature<R>(r: &WireReader<R>, op: &'static str, f: &'static str) -> Result<()> {
    if r.has_feature(f) {
        Ok(())
    } else {
        Err(Error::NotNegotiated {
            op,
            needs: f,
            have: r.version(),
        })
    }
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        use Request as R;
        match self {
            R::IsValidPath(_) => Opcode::IsValidPath,
            R::HasSubstitutes(_) => Opcode::HasSubstitutes,
            R::QueryPathHash(_) => Opcode::QueryPathHash,
            R::QueryReferences(_) => Opcode::QueryReferences,
            R::QueryReferrers(_) => Opcode::QueryReferrers,
            R::AddToStore(_) => Opcode::AddToStore,
            R::AddTextToStore { .. } => Opcode::AddTextToStore,
            R::BuildPaths { .. } => Opcode::BuildPaths,
            R::EnsurePath(_) => Opcode::EnsurePath,
            R::AddTempRoot(_) => Opcode::AddTempRoot,
            R::AddIndirectRoot(_) => Opcode::AddIndirectRoot,
            R::SyncWithGC => Opcode::SyncWithGC,
            R::FindRoots => Opcode::FindRoots,
            R::ExportPath(_) => Opcode::ExportPath,
            R::QueryDeriver(_) => Opcode::QueryDeriver,
            R::SetOptions(_) => Opcode::SetOptions,
            R::CollectGarbage(_) => Opcode::CollectGarbage,
            R::QuerySubstitutablePathInfo(_) => Opcode::QuerySubstitutablePathInfo,
            R::QueryDerivationOutputs(_) => Opcode::QueryDerivationOutputs,
            R::QueryAllValidPaths => Opcode::QueryAllValidPaths,
            R::QueryPathInfo(_) => Opcode::QueryPathInfo,
            R::ImportPaths => Opcode::ImportPaths,
            R::QueryDerivationOutputNames(_) => Opcode::QueryDerivationOutputNames,
            R::QueryPathFromHashPart(_) => Opcode::QueryPathFromHashPart,
            R::QuerySubstitutablePathInfos(_) => Opcode::QuerySubstitutablePathInfos,
            R::QueryValidPaths { .. } => Opcode::QueryValidPaths,
            R::QuerySubstitutablePaths(_) => Opcode::QuerySubstitutablePaths,
            R::QueryValidDerivers(_) => Opcode::QueryValidDerivers,
            R::OptimiseStore => Opcode::OptimiseStore,
            R::VerifyStore { .. } => Opcode::VerifyStore,
            R::BuildDerivation { .. } => Opcode::BuildDerivation,
            R::AddSignatures { .. } => Opcode::AddSignatures,
            R::NarFromPath(_) => Opcode::NarFromPath,
            R::AddToStoreNar { .. } => Opcode::AddToStoreNar,
            R::QueryMissing(_) => Opcode::QueryMissing,
            R::QueryDerivationOutputMap(_) => Opcode::QueryDerivationOutputMap,
            R::RegisterDrvOutput(_) => Opcode::RegisterDrvOutput,
            R::QueryRealisation(_) => Opcode::QueryRealisation,
            R::AddMultipleToStore { .. } => Opcode::AddMultipleToStore,
            R::AddBuildLog(_) => Opcode::AddBuildLog,
            R::BuildPathsWithResults { .. } => Opcode::BuildPathsWithResults,
            R::AddPermRoot { .. } => Opcode::AddPermRoot,
            R::SubmitOutput { .. } => Opcode::SubmitOutput,
            R::AddToStoreScanning { .. } => Opcode::AddToStoreScanning,
        }
    }

    /// How this request's payload follows it at the negotiated `version`.
    pub fn payload(&self, version: ProtocolVersion) -> PayloadKind {
        match self {
            Request::AddToStore(AddToStoreRequest::Legacy { .. }) => PayloadKind::InlineNar,
            Request::AddToStore(AddToStoreRequest::ContentAddressed { .. })
            | Request::AddMultipleToStore { .. }
            | Request::AddBuildLog(_)
            | Request::AddToStoreScanning { .. } => PayloadKind::Framed,
            Request::AddToStoreNar { .. } if version.at_least(23) => PayloadKind::Framed,
            Request::AddToStoreNar { .. } if version.at_least(21) => PayloadKind::StderrRead,
            Request::AddToStoreNar { .. } => PayloadKind::InlineNar,
            Request::ImportPaths => PayloadKind::StderrRead,
            _ => PayloadKind::None,
        }
    }

    /// Encodes the opcode and the fixed fields (not the payload).
    pub fn encode(&self, w: &mut WireWriter) {
        use Request as R;
        w.write_u64(self.opcode() as u64);
        match self {
            R::IsValidPath(p)
            | R::HasSubstitutes(p)
            | R::QueryPathHash(p)
            | R::QueryReferences(p)
            | R::QueryReferrers(p)
            | R::EnsurePath(p)
            | R::AddTempRoot(p)
            | R::QueryDeriver(p)
            | R::QuerySubstitutablePathInfo(p)
            | R::QueryDerivationOutputs(p)
            | R::QueryPathInfo(p)
            | R::QueryDerivationOutputNames(p)
            | R::QueryValidDerivers(p)
            | R::NarFromPath(p)
            | R::QueryDerivationOutputMap(p) => write_path(w, p),
            R::AddToStore(AddToStoreRequest::Legacy {
                name,
                fixed,
                recursive,
                hash_algo,
            }) => {
                w.write_str(name);
                w.write_bool(*fixed);
                w.write_bool(*recursive);
                w.write_str(hash_algo);
            }
            R::AddToStore(AddToStoreRequest::ContentAddressed {
                name,
                method,
                algo,
                references,
                repair,
            }) => {
                w.write_str(name);
                w.write_str(&method.render_with_algo(*algo));
                references.encode(w);
                w.write_bool(*repair);
            }
            R::AddTextToStore {
                name,
                text,
                references,
            } => {
                w.write_str(name);
                w.write_bytes(text);
                references.encode(w);
            }
            R::BuildPaths { paths, mode } => {
                paths.encode(w);
                if w.version().at_least(15) {
                    mode.encode(w);
                }
            }
            R::AddIndirectRoot(s) | R::QueryPathFromHashPart(s) => w.write_str(s),
            R::SyncWithGC
            | R::FindRoots
            | R::QueryAllValidPaths
            | R::ImportPaths
            | R::OptimiseStore => {}
            R::ExportPath(p) => {
                write_path(w, p);
                w.write_u64(0);
            }
            R::SetOptions(s) => s.encode(w),
            R::CollectGarbage(o) => o.encode(w),
            R::QuerySubstitutablePathInfos(m) => {
                if w.version().at_least(22) {
                    m.encode(w);
                } else {
                    w.write_u64(m.len() as u64);
                    for p in m.keys() {
                        write_path(w, p);
                    }
                }
            }
            R::QueryValidPaths { paths, substitute } => {
                paths.encode(w);
                if w.version().at_least(27) {
                    w.write_bool(*substitute);
                }
            }
            R::QuerySubstitutablePaths(paths) => paths.encode(w),
            R::VerifyStore {
                check_contents,
                repair,
            } => {
                w.write_bool(*check_contents);
                w.write_bool(*repair);
            }
            R::BuildDerivation {
                drv_path,
                drv,
                mode,
            } => {
                write_path(w, drv_path);
                write_basic_derivation(w, drv);
                mode.encode(w);
            }
            R::AddSignatures { path, sigs } => {
                write_path(w, path);
                sigs.encode(w);
            }
            R::AddToStoreNar {
                info,
                repair,
                dont_check_sigs,
            } => {
                info.encode(w);
                w.write_bool(*repair);
                w.write_bool(*dont_check_sigs);
            }
            R::QueryMissing(paths) => paths.encode(w),
            R::RegisterDrvOutput(RegisterDrvOutput::Legacy { id, out_path }) => {
                id.encode(w);
                w.write_str(&out_path.to_string());
            }
            R::RegisterDrvOutput(RegisterDrvOutput::Json(real)) => real.encode(w),
            R::RegisterDrvOutput(RegisterDrvOutput::WithPath { key, value }) => {
                key.encode(w);
                value.encode(w);
            }
            R::QueryRealisation(RealisationKey::Id(id)) => id.encode(w),
            R::QueryRealisation(RealisationKey::WithPath(key)) => key.encode(w),
            R::AddMultipleToStore {
                repair,
                dont_check_sigs,
            } => {
                w.write_bool(*repair);
                w.write_bool(*dont_check_sigs);
            }
            R::AddBuildLog(p) => w.write_str(&p.to_string()),
            R::BuildPathsWithResults { paths, mode } => {
                paths.encode(w);
                mode.encode(w);
            }
            R::AddPermRoot { path, gc_root } => {
                write_path(w, path);
                w.write_str(gc_root);
            }
            R::SubmitOutput { path, output } => {
                path.encode(w);
                w.write_str(output);
            }
            R::AddToStoreScanning { name, method, algo } => {
                w.write_str(name);
                w.write_str(&method.render_with_algo(*algo));
            }
        }
    }

    /// Reads an opcode and the fixed fields of its request. An unknown opcode is
    /// [`Error::UnknownOpcode`]: its arguments cannot be skipped, so the connection must
    /// be closed after reporting it.
    pub async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Request> {
        let n = r.read_u64().await?;
        let op = Opcode::from_u64(n).ok_or(Error::UnknownOpcode(n))?;
        Request::decode_op(op, r).await
    }

    /// Reads the fixed fields of `op` (whose number was already read), holding at most
    /// [`limits::REQUEST`] bytes of strings.
    pub async fn decode_op<R: AsyncRead + Unpin + Send>(
        op: Opcode,
        r: &mut WireReader<R>,
    ) -> Result<Request> {
        r.set_budget(limits::REQUEST);
        let req = Request::decode_fields(op, r).await;
        r.clear_budget();
        req
    }

    async fn decode_fields<R: AsyncRead + Unpin + Send>(
        op: Opcode,
        r: &mut WireReader<R>,
    ) -> Result<Request> {
        use Opcode as O;
        let v = r.version();
        Ok(match op {
            O::IsValidPath => Request::IsValidPath(read_path(r, "path").await?),
            O::HasSubstitutes => Request::HasSubstitutes(read_path(r, "path").await?),
            O::QueryPathHash => Request::QueryPathHash(read_path(r, "path").await?),
            O::QueryReferences => Request::QueryReferences(read_path(r, "path").await?),
            O::QueryReferrers => Request::QueryReferrers(read_path(r, "path").await?),
            O::AddToStore if v.at_least(25) => {
                let name = r.read_string(limits::SHORT, "name").await?;
                let (method, algo) = read_cam(r).await?;
                let references = BTreeSet::<StorePath>::decode(r).await?;
                let repair = r.read_bool("repair").await?;
                Request::AddToStore(AddToStoreRequest::ContentAddressed {
                    name,
                    method,
                    algo,
                    references,
                    repair,
                })
            }
            O::AddToStore => {
                let name = r.read_string(limits::SHORT, "name").await?;
                let fixed = r.read_bool("fixed").await?;
                let recursive = r.read_bool("recursive").await?;
                let hash_algo = r.read_string(limits::SHORT, "hashAlgo").await?;
                Request::AddToStore(AddToStoreRequest::Legacy {
                    name,
                    fixed,
                    recursive,
                    hash_algo,
                })
            }
            O::AddTextToStore => Request::AddTextToStore {
                name: r.read_string(limits::SHORT, "name").await?,
                text: r.read_bytes(limits::FILE_CONTENTS, "text").await?,
                references: BTreeSet::decode(r).await?,
            },
            O::BuildPaths => {
                let paths = Vec::<DerivedPath>::decode(r).await?;
                let mode = if v.at_least(15) {
                    BuildMode::decode(r).await?
                } else {
                    BuildMode::Normal
                };
                Request::BuildPaths { paths, mode }
            }
            O::EnsurePath => Request::EnsurePath(read_path(r, "path").await?),
            O::AddTempRoot => Request::AddTempRoot(read_path(r, "path").await?),
            O::AddIndirectRoot => {
                Request::AddIndirectRoot(r.read_string(limits::SHORT, "root path").await?)
            }
            O::SyncWithGC => Request::SyncWithGC,
            O::FindRoots => Request::FindRoots,
            O::ExportPath => {
                let path = read_path(r, "path").await?;
                r.read_u64().await?;
                Request::ExportPath(path)
            }
            O::QueryDeriver => Request::QueryDeriver(read_path(r, "path").await?),
            O::SetOptions => Request::SetOptions(ClientSettings::decode(r).await?),
            O::CollectGarbage => Request::CollectGarbage(GcOptions::decode(r).await?),
            O::QuerySubstitutablePathInfo => {
                Request::QuerySubstitutablePathInfo(read_path(r, "path").await?)
            }
            O::QueryDerivationOutputs => {
                Request::QueryDerivationOutputs(read_path(r, "path").await?)
            }
            O::QueryAllValidPaths => Request::QueryAllValidPaths,
            O::QueryPathInfo => Request::QueryPathInfo(read_path(r, "path").await?),
            O::ImportPaths => Request::ImportPaths,
            O::QueryDerivationOutputNames => {
                Request::QueryDerivationOutputNames(read_path(r, "path").await?)
            }
            O::QueryPathFromHashPart => {
                Request::QueryPathFromHashPart(r.read_string(limits::SHORT, "hash part").await?)
            }
            O::QuerySubstitutablePathInfos => {
                let map = if v.at_least(22) {
                    BTreeMap::<StorePath, Option<ContentAddress>>::decode(r).await?
                } else {
                    BTreeSet::<StorePath>::decode(r)
                        .await?
                        .into_iter()
                        .map(|p| (p, None))
                        .collect()
                };
                Request::QuerySubstitutablePathInfos(map)
            }
            O::QueryValidPaths => {
                let paths = BTreeSet::decode(r).await?;
                let substitute = v.at_least(27) && r.read_bool("substitute").await?;
                Request::QueryValidPaths { paths, substitute }
            }
            O::QuerySubstitutablePaths => {
                Request::QuerySubstitutablePaths(BTreeSet::decode(r).await?)
            }
            O::QueryValidDerivers => Request::QueryValidDerivers(read_path(r, "path").await?),
            O::OptimiseStore => Request::OptimiseStore,
            O::VerifyStore => Request::VerifyStore {
                check_contents: r.read_bool("checkContents").await?,
                repair: r.read_bool("repair").await?,
            },
            O::BuildDerivation => {
                let drv_path = read_path(r, "drvPath").await?;
                let drv = read_basic_derivation(r, &drv_path).await?;
                Request::BuildDerivation {
                    drv_path,
                    drv,
                    mode: BuildMode::decode(r).await?,
                }
            }
            O::AddSignatures => {
                let path = read_path(r, "path").await?;
                let n = r.read_count(limits::ITEMS, "sigs").await?;
                let mut sigs = BTreeSet::new();
                for _ in 0..n {
                    sigs.insert(r.read_string(limits::SHORT, "signature").await?);
                }
                Request::AddSignatures { path, sigs }
            }
            O::NarFromPath => Request::NarFromPath(read_path(r, "path").await?),
            O::AddToStoreNar => Request::AddToStoreNar {
                info: ValidPathInfo::decode(r).await?,
                repair: r.read_bool("repair").await?,
                dont_check_sigs: r.read_bool("dontCheckSigs").await?,
            },
            O::QueryMissing => Request::QueryMissing(Vec::decode(r).await?),
            O::QueryDerivationOutputMap => {
                Request::QueryDerivationOutputMap(read_path(r, "drvPath").await?)
            }
            O::RegisterDrvOutput => Request::RegisterDrvOutput(
                if r.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH) {
                    RegisterDrvOutput::WithPath {
                        key: DrvOutputWithPath::decode(r).await?,
                        value: UnkeyedRealisation::decode(r).await?,
                    }
                } else if v.at_least(31) {
                    RegisterDrvOutput::Json(Realisation::decode(r).await?)
                } else {
                    RegisterDrvOutput::Legacy {
                        id: DrvOutput::decode(r).await?,
                        out_path: read_base_name(r, "outPath").await?,
                    }
                },
            ),
            O::QueryRealisation => Request::QueryRealisation(
                if r.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH) {
                    RealisationKey::WithPath(DrvOutputWithPath::decode(r).await?)
                } else {
                    RealisationKey::Id(DrvOutput::decode(r).await?)
                },
            ),
            O::AddMultipleToStore => Request::AddMultipleToStore {
                repair: r.read_bool("repair").await?,
                dont_check_sigs: r.read_bool("dontCheckSigs").await?,
            },
            O::AddBuildLog => Request::AddBuildLog(read_base_name(r, "drvPath").await?),
            O::BuildPathsWithResults => Request::BuildPathsWithResults {
                paths: Vec::decode(r).await?,
                mode: BuildMode::decode(r).await?,
            },
            O::AddPermRoot => Request::AddPermRoot {
                path: read_path(r, "path").await?,
                gc_root: r.read_string(limits::SHORT, "gcRoot").await?,
            },
            O::SubmitOutput => {
                require_feature(r, "SubmitOutput", feature::SUBMIT_OUTPUT)?;
                Request::SubmitOutput {
                    path: SingleDerivedPath::decode(r).await?,
                    output: r.read_string(limits::SHORT, "output").await?,
                }
            }
            O::AddToStoreScanning => {
                require_feature(r, "AddToStoreScanning", feature::ADD_TO_STORE_SCANNING)?;
                let name = r.read_string(limits::SHORT, "name").await?;
                let (method, algo) = read_cam(r).await?;
                Request::AddToStoreScanning { name, method, algo }
            }
        })
    }
}
