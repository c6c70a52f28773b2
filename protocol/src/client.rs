//! An async client for the worker protocol: what the tests, benchmarks and recursive
//! Nix use to talk to a daemon (ours or Nix's).
//!
//! Per operation: write the request and flush; upload the payload if the op has one
//! (framed data is sent while stderr messages are read, as Nix's client does with a
//! second thread, so neither side can block the other); read stderr messages until
//! `STDERR_LAST` (then the reply) or `STDERR_ERROR` (then [`Error::Remote`], and the
//! connection stays usable). Log messages go to the callback set with
//! [`DaemonClient::set_logger`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use nixnest_core::{
    ContentAddressMethod, DerivedPath, HashAlgo, StoreDir, StorePath, ValidPathInfo,
};

use crate::error::{Error, Result};
use crate::framed::FramedWriter;
use crate::handshake::{Negotiated, client_handshake};
use crate::request::{AddToStoreRequest, RealisationKey, RegisterDrvOutput, Request};
use crate::response::Response;
use crate::stderr::StderrMessage;
use crate::types::{
    BuildMode, BuildResult, ClientSettings, GcOptions, GcResult, KeyedBuildResult, Missing,
    Realisation,
};
use crate::version::{FeatureSet, ProtocolVersion};
use crate::wire::{WireReader, WireType, WireWriter};

type Logger = Box<dyn FnMut(&StderrMessage) + Send>;

/// A connection to a daemon.
pub struct DaemonClient<R, W> {
    r: WireReader<R>,
    w: WireWriter,
    sink: W,
    negotiated: Negotiated,
    logger: Option<Logger>,
}

pub type UnixDaemonClient = DaemonClient<BufReader<OwnedReadHalf>, OwnedWriteHalf>;

impl UnixDaemonClient {
    /// Connects to a daemon socket and performs the handshake at our newest version.
    pub async fn connect(socket: impl AsRef<Path>, store_dir: StoreDir) -> Result<Self> {
        let stream = UnixStream::connect(socket).await?;
        let (rd, wr) = stream.into_split();
        DaemonClient::handshake(
            BufReader::new(rd),
            wr,
            store_dir,
            ProtocolVersion::LATEST,
            &FeatureSet::new(),
        )
        .await
    }
}

impl<R, W> DaemonClient<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs the client side of the handshake over any byte stream.
    pub async fn handshake(
        reader: R,
        mut writer: W,
        store_dir: StoreDir,
        version: ProtocolVersion,
        features: &FeatureSet,
    ) -> Result<Self> {
        let mut r = WireReader::new(reader, version, store_dir.clone());
        let mut w = WireWriter::new(version, store_dir);
        let negotiated =
            client_handshake(&mut r, &mut w, &mut writer, version, features, |_| {}).await?;
        Ok(DaemonClient {
            r,
            w,
            sink: writer,
            negotiated,
            logger: None,
        })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    pub fn version(&self) -> ProtocolVersion {
        self.negotiated.version
    }

    pub fn store_dir(&self) -> &StoreDir {
        self.r.store_dir()
    }

    /// Receives every stderr message other than LAST/ERROR/READ/WRITE.
    pub fn set_logger(&mut self, logger: impl FnMut(&StderrMessage) + Send + 'static) {
        self.logger = Some(Box::new(logger));
    }

    async fn send(&mut self, req: &Request) -> Result<()> {
        req.encode(&mut self.w);
        self.w.flush_into(&mut self.sink).await?;
        Ok(())
    }

    /// Sends a request without payload and returns its reply.
    pub async fn call(&mut self, req: &Request) -> Result<Response> {
        self.send(req).await?;
        read_stderr(&mut self.r, &mut self.logger, None).await?;
        Response::decode(req, &mut self.r).await
    }

    /// Sends a request whose payload is a framed stream read from `data`.
    pub async fn call_framed<S: AsyncRead + Unpin + Send>(
        &mut self,
        req: &Request,
        data: &mut S,
    ) -> Result<Response> {
        self.send(req).await?;
        let DaemonClient {
            r, sink, logger, ..
        } = self;
        let upload = async {
            let mut framed = FramedWriter::new(&mut *sink);
            tokio::io::copy(data, &mut framed).await?;
            framed.finish().await?;
            Ok::<(), std::io::Error>(())
        };
        let (up, down) = tokio::join!(upload, read_stderr(r, logger, None));
        // The daemon's error explains a failed upload better than a broken pipe.
        down?;
        up?;
        Response::decode(req, &mut self.r).await
    }

    /// Sends a request whose payload the daemon pulls with `STDERR_READ` (ImportPaths,
    /// AddToStoreNar at 1.21–1.22).
    pub async fn call_pulled<S: AsyncRead + Unpin + Send>(
        &mut self,
        req: &Request,
        data: &mut S,
    ) -> Result<Response> {
        self.send(req).await?;
        loop {
            match StderrMessage::decode(&mut self.r).await? {
                StderrMessage::Last => break,
                StderrMessage::Error(e) => return Err(Error::Remote(e)),
                StderrMessage::Read(n) => {
                    let mut buf = vec![0u8; n.min(1 << 20) as usize];
                    let got = tokio::io::AsyncReadExt::read(data, &mut buf).await?;
                    self.w.write_bytes(buf.get(..got).unwrap_or_default());
                    self.w.flush_into(&mut self.sink).await?;
                }
                m => log(&mut self.logger, &m),
            }
        }
        Response::decode(req, &mut self.r).await
    }

    /// Sends a request whose payload is inline raw bytes (AddToStore < 1.25: a NAR).
    pub async fn call_inline(&mut self, req: &Request, payload: &[u8]) -> Result<Response> {
        req.encode(&mut self.w);
        self.w.write_raw(payload);
        self.w.flush_into(&mut self.sink).await?;
        read_stderr(&mut self.r, &mut self.logger, None).await?;
        Response::decode(req, &mut self.r).await
    }

    // --- typed operations ------------------------------------------------------------

    pub async fn set_options(&mut self, settings: &ClientSettings) -> Result<()> {
        self.call(&Request::SetOptions(settings.clone())).await?;
        Ok(())
    }

    pub async fn is_valid_path(&mut self, path: &StorePath) -> Result<bool> {
        match self.call(&Request::IsValidPath(path.clone())).await? {
            Response::Bool(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub async fn query_path_info(&mut self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
        match self.call(&Request::QueryPathInfo(path.clone())).await? {
            Response::QueryPathInfo(info) => Ok(info.map(|i| i.with_path(path.clone()))),
            other => Err(unexpected(other)),
        }
    }

    async fn paths(&mut self, req: Request) -> Result<BTreeSet<StorePath>> {
        match self.call(&req).await? {
            Response::Paths(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>> {
        self.paths(Request::QueryValidPaths {
            paths: paths.clone(),
            substitute,
        })
        .await
    }

    pub async fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>> {
        self.paths(Request::QueryAllValidPaths).await
    }

    pub async fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths(Request::QueryReferrers(path.clone())).await
    }

    pub async fn query_valid_derivers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths(Request::QueryValidDerivers(path.clone())).await
    }

    pub async fn query_path_from_hash_part(&mut self, hash: &str) -> Result<Option<StorePath>> {
        match self
            .call(&Request::QueryPathFromHashPart(hash.into()))
            .await?
        {
            Response::OptPath(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// AddToStore ≥ 1.25: `data` is a NAR for `NixArchive`, raw bytes otherwise.
    pub async fn add_to_store<S: AsyncRead + Unpin + Send>(
        &mut self,
        name: &str,
        method: ContentAddressMethod,
        algo: HashAlgo,
        references: &BTreeSet<StorePath>,
        repair: bool,
        data: &mut S,
    ) -> Result<ValidPathInfo> {
        let req = Request::AddToStore(AddToStoreRequest::ContentAddressed {
            name: name.into(),
            method,
            algo,
            references: references.clone(),
            repair,
        });
        match self.call_framed(&req, data).await? {
            Response::PathInfo(info) => Ok(*info),
            other => Err(unexpected(other)),
        }
    }

    /// AddToStoreNar with the transport of the negotiated version.
    pub async fn add_to_store_nar<S: AsyncRead + Unpin + Send>(
        &mut self,
        info: &ValidPathInfo,
        repair: bool,
        dont_check_sigs: bool,
        nar: &mut S,
    ) -> Result<()> {
        let req = Request::AddToStoreNar {
            info: info.clone(),
            repair,
            dont_check_sigs,
        };
        if self.version().at_least(23) {
            self.call_framed(&req, nar).await?;
        } else {
            self.call_pulled(&req, nar).await?;
        }
        Ok(())
    }

    /// AddMultipleToStore: `stream` is the framed payload's content
    /// (`u64 n, n × (ValidPathInfo, NAR)`; see [`encode_multiple_item`]).
    pub async fn add_multiple_to_store<S: AsyncRead + Unpin + Send>(
        &mut self,
        repair: bool,
        dont_check_sigs: bool,
        stream: &mut S,
    ) -> Result<()> {
        let req = Request::AddMultipleToStore {
            repair,
            dont_check_sigs,
        };
        self.call_framed(&req, stream).await?;
        Ok(())
    }

    pub async fn add_text_to_store(
        &mut self,
        name: &str,
        text: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath> {
        let req = Request::AddTextToStore {
            name: name.into(),
            text: text.to_vec(),
            references: references.clone(),
        };
        match self.call(&req).await? {
            Response::Path(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    async fn ack(&mut self, req: Request) -> Result<()> {
        match self.call(&req).await? {
            Response::Ack => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn build_paths(&mut self, paths: &[DerivedPath], mode: BuildMode) -> Result<()> {
        self.ack(Request::BuildPaths {
            paths: paths.to_vec(),
            mode,
        })
        .await
    }

    pub async fn build_paths_with_results(
        &mut self,
        paths: &[DerivedPath],
        mode: BuildMode,
    ) -> Result<Vec<KeyedBuildResult>> {
        let req = Request::BuildPathsWithResults {
            paths: paths.to_vec(),
            mode,
        };
        match self.call(&req).await? {
            Response::KeyedBuildResults(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &nixnest_core::BasicDerivation,
        mode: BuildMode,
    ) -> Result<BuildResult> {
        let req = Request::BuildDerivation {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            mode,
        };
        match self.call(&req).await? {
            Response::BuildResult(r) => Ok(*r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ensure_path(&mut self, path: &StorePath) -> Result<()> {
        self.ack(Request::EnsurePath(path.clone())).await
    }

    pub async fn add_temp_root(&mut self, path: &StorePath) -> Result<()> {
        self.ack(Request::AddTempRoot(path.clone())).await
    }

    pub async fn add_indirect_root(&mut self, link: &str) -> Result<()> {
        self.ack(Request::AddIndirectRoot(link.into())).await
    }

    pub async fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<()> {
        self.ack(Request::AddSignatures {
            path: path.clone(),
            sigs: sigs.clone(),
        })
        .await
    }

    pub async fn optimise_store(&mut self) -> Result<()> {
        self.ack(Request::OptimiseStore).await
    }

    /// Returns whether errors were found.
    pub async fn verify_store(&mut self, check_contents: bool, repair: bool) -> Result<bool> {
        match self
            .call(&Request::VerifyStore {
                check_contents,
                repair,
            })
            .await?
        {
            Response::Bool(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub async fn find_roots(&mut self) -> Result<Vec<(String, StorePath)>> {
        match self.call(&Request::FindRoots).await? {
            Response::FindRoots(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn collect_garbage(&mut self, options: &GcOptions) -> Result<GcResult> {
        match self.call(&Request::CollectGarbage(options.clone())).await? {
            Response::CollectGarbage(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn query_missing(&mut self, paths: &[DerivedPath]) -> Result<Missing> {
        match self.call(&Request::QueryMissing(paths.to_vec())).await? {
            Response::Missing(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn query_derivation_output_map(
        &mut self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>> {
        match self
            .call(&Request::QueryDerivationOutputMap(drv.clone()))
            .await?
        {
            Response::OutputMap(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn query_deriver(&mut self, path: &StorePath) -> Result<Option<StorePath>> {
        match self.call(&Request::QueryDeriver(path.clone())).await? {
            Response::OptPath(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// AddPermRoot (≥ 1.36): returns the root's absolute path.
    pub async fn add_perm_root(&mut self, path: &StorePath, gc_root: &str) -> Result<String> {
        let req = Request::AddPermRoot {
            path: path.clone(),
            gc_root: gc_root.into(),
        };
        match self.call(&req).await? {
            Response::Text(root) => Ok(root),
            other => Err(unexpected(other)),
        }
    }

    /// QueryRealisation in the form the connection negotiated.
    pub async fn query_realisation(&mut self, key: &RealisationKey) -> Result<Option<Realisation>> {
        match self.call(&Request::QueryRealisation(key.clone())).await? {
            Response::QueryRealisation(r) => Ok(r.map(|r| *r)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn register_drv_output(&mut self, arg: &RegisterDrvOutput) -> Result<()> {
        self.call(&Request::RegisterDrvOutput(arg.clone())).await?;
        Ok(())
    }

    /// AddBuildLog: `log` is sent framed.
    pub async fn add_build_log<S: AsyncRead + Unpin + Send>(
        &mut self,
        drv: &StorePath,
        log: &mut S,
    ) -> Result<()> {
        match self
            .call_framed(&Request::AddBuildLog(drv.clone()), log)
            .await?
        {
            Response::Ack => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// NarFromPath: copies the NAR the daemon sends after `STDERR_LAST` into `sink`.
    pub async fn nar_from_path<S: AsyncWrite + Unpin + Send>(
        &mut self,
        path: &StorePath,
        sink: &mut S,
    ) -> Result<u64> {
        self.send(&Request::NarFromPath(path.clone())).await?;
        read_stderr(&mut self.r, &mut self.logger, None).await?;
        let n = crate::nar::copy_nar(&mut self.r, sink).await?;
        sink.flush().await?;
        Ok(n)
    }

    /// ExportPath (old daemons): the export record sent through `STDERR_WRITE`.
    pub async fn export_path(&mut self, path: &StorePath) -> Result<Vec<u8>> {
        let req = Request::ExportPath(path.clone());
        self.send(&req).await?;
        let mut data = Vec::new();
        read_stderr(&mut self.r, &mut self.logger, Some(&mut data)).await?;
        Response::decode(&req, &mut self.r).await?;
        Ok(data)
    }
}

/// Encodes one AddMultipleToStore item header (the NAR bytes follow it).
pub fn encode_multiple_item(w: &mut WireWriter, info: &ValidPathInfo) {
    info.encode(w);
}

fn log(logger: &mut Option<Logger>, m: &StderrMessage) {
    if let Some(l) = logger {
        l(m);
    }
}

fn unexpected(r: Response) -> Error {
    Error::Unexpected(format!("reply of the wrong shape: {r:?}"))
}

/// Reads stderr messages until `STDERR_LAST`; `STDERR_ERROR` becomes [`Error::Remote`].
/// `STDERR_WRITE` data goes to `written` (an error if the op does not expect any).
async fn read_stderr<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
    logger: &mut Option<Logger>,
    mut written: Option<&mut Vec<u8>>,
) -> Result<()> {
    loop {
        match StderrMessage::decode(r).await? {
            StderrMessage::Last => return Ok(()),
            StderrMessage::Error(e) => return Err(Error::Remote(e)),
            StderrMessage::Write(data) => match written.as_deref_mut() {
                Some(buf) => buf.extend_from_slice(&data),
                None => return Err(Error::Unexpected("STDERR_WRITE for this operation".into())),
            },
            StderrMessage::Read(_) => {
                return Err(Error::Unexpected("STDERR_READ for this operation".into()));
            }
            m => log(logger, &m),
        }
    }
}
