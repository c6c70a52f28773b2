//! One client connection, start to end: the worker-protocol session.
//!
//! ```text
//! a build user's connection (seed style): find its build's view, or close unanswered
//! handshake (version, features: none offered — `disable-set-options` in a build's view —,
//!            daemon version string, trust flag)
//! create <state>/{profiles,gcroots}/per-user/<user> for the peer (not for builds)
//! loop:
//!     read one whole request (opcode + fixed fields)        ─ EOF here: the client is done
//!     span op{name}; status shows the op
//!     the view permits it? ─ no: STDERR_ERROR once, close
//!     run it (ops::dispatch): stderr messages stream out
//!     STDERR_LAST + reply | STDERR_ERROR (session goes on) | STDERR_ERROR + close
//! ```
//!
//! A request that cannot be read completely (an unknown opcode — its arguments cannot be
//! skipped —, a malformed field, a path outside the store) gets one `STDERR_ERROR` and the
//! connection is closed, because the position in the stream is lost. Errors after the
//! request was read (including failures while consuming its payload, which is drained to
//! its end) are reported and the session continues. A client that disconnects at any
//! point only ends its own session.
//!
//! Per-session state: the negotiated version and features (inside the reader and
//! writer), the session's settings (the daemon's, with this client's `SetOptions`
//! applied — never shared), the verbosity that filters `STDERR_NEXT`, the activity id
//! counter (in [`Output`]), the [`Policy`] derived from the peer's
//! [`Access`](crate::auth::Access), the [`StoreView`] (a build's sessions get the
//! build's view and end when it closes), and a temp-roots session: every path the
//! session adds or roots stays alive until the connection closes.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};
use tracing::Instrument;

use nixnest_protocol::handshake::{ServerOffer, server_handshake};
use nixnest_protocol::payload::Payload;
use nixnest_protocol::request::{Opcode, Request};
use nixnest_protocol::stderr::NixError;
use nixnest_protocol::{Error as ProtoError, FeatureSet, ProtocolVersion, WireReader, WireWriter};
use nixnest_store::{LocalStore, TempRoots};

use crate::auth::Access;
use crate::builds::Scheduler;
use crate::config::Settings;
use crate::control::SessionGuard;
use crate::error::{OpError, OpResult, protocol_message};
use crate::listener::{Connection, Handler, Shutdown};
use crate::ops::{self, Outcome};
use crate::policy::Policy;
use crate::recursive::{BuildView, Recursive};
use crate::view::StoreView;
use crate::work::{self, Job, JobContext, Output, Phase, SharedSink};

/// What every session of the daemon shares.
pub struct Shared {
    pub store: Arc<LocalStore>,
    /// Builds derivations (daemon-wide: slots, build users, builds in flight).
    pub scheduler: Arc<Scheduler>,
    /// Recursive Nix: the views of running builds (shared with the scheduler).
    pub recursive: Arc<Recursive>,
}

/// The worker-protocol [`Handler`]: serves each connection as a [`Session`].
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker over `store` whose builds go to `scheduler` (and whose recursive-Nix
    /// state is the scheduler's).
    pub fn new(store: Arc<LocalStore>, scheduler: Arc<Scheduler>) -> Self {
        let recursive = Arc::clone(scheduler.recursive());
        Worker {
            shared: Arc::new(Shared {
                store,
                scheduler,
                recursive,
            }),
        }
    }

    /// What the sessions share (per-build sockets start sessions from it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Handler for Worker {
    async fn handle<S>(&self, conn: Connection<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve(Arc::clone(&self.shared), conn).await;
    }
}

type Reader<S> = WireReader<BufReader<ReadHalf<S>>>;

/// One connection's state.
pub struct Session<S> {
    pub(crate) reader: Reader<S>,
    pub(crate) out: Output<WriteHalf<S>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: Policy,
    pub(crate) view: Arc<StoreView>,
    /// The daemon's settings, to which each SetOptions is applied afresh.
    pub(crate) daemon_settings: Arc<Settings>,
    /// This session's settings.
    pub(crate) settings: Arc<Settings>,
    pub(crate) roots: Arc<TempRoots>,
    /// The listener's connection id (the builds it starts are listed with it).
    pub(crate) id: u64,
}

/// Serves one connection until the client hangs up, the session fails, or the daemon
/// shuts down (between requests). A build user's connection (seed style) is served with
/// its running build's view, or closed unanswered when there is none.
pub async fn serve<S>(shared: Arc<Shared>, conn: Connection<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Access::BuildUser { uid } = conn.access {
        let user = conn
            .peer
            .as_ref()
            .map_or_else(|| uid.to_string(), |p| p.user());
        match shared.recursive.admit_build_user(uid, &user) {
            Ok((view, permit)) => {
                tracing::info!("serving build user {user} for '{}'", view.printed());
                serve_in_view(shared, conn, view, permit).await;
            }
            // As any rejection: logged, and closed without a protocol byte.
            Err(message) => tracing::error!("error processing connection: {message}"),
        }
        return;
    }
    serve_with(shared, conn, StoreView::Full).await;
}

/// Serves a connection of a running build (recursive Nix) with the build's `view` until
/// the client hangs up or the view closes (the builder exited). `slot` is the session's
/// place in the build's budget ([`BuildView::try_session`]), held until it ends.
pub async fn serve_in_view<S>(
    shared: Arc<Shared>,
    conn: Connection<S>,
    view: Arc<BuildView>,
    slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closing = Arc::clone(&view);
    tokio::select! {
        biased;
        () = closing.closed() => {
            tracing::debug!("the build's builder exited: closing its session");
        }
        () = serve_with(shared, conn, StoreView::Build(view)) => {}
    }
    drop(slot);
}

async fn serve_with<S>(shared: Arc<Shared>, conn: Connection<S>, view: StoreView)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        id,
        stream,
        peer,
        access,
        settings,
        mut shutdown,
        session: guard,
    } = conn;
    let store_dir = shared.store.store_dir().clone();
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = WireReader::new(
        BufReader::new(rd),
        ProtocolVersion::LATEST,
        store_dir.clone(),
    );
    let mut w = WireWriter::new(ProtocolVersion::LATEST, store_dir);
    let mut sink = SharedSink::new(wr);
    let policy = Policy::new(access);
    if policy.restricted_view() != view.is_restricted() {
        // A build user without its build's view (or the reverse) must never be served.
        tracing::error!("internal error: session access and store view disagree; closing");
        return;
    }
    // Neither `realisation-with-path-not-hash` nor `delete-dead-specific-referrers` is
    // implemented, so none is offered (a 2.24–2.34 daemon offers none either). A build's
    // session offers `disable-set-options`, as CppNix does in recursive contexts: its
    // settings would not be applied anyway.
    let mut features = FeatureSet::new();
    if view.is_restricted() {
        features.insert(nixnest_protocol::version::feature::DISABLE_SET_OPTIONS);
    }
    let offer = ServerOffer {
        version: ProtocolVersion::LATEST,
        features,
        nix_version: crate::DAEMON_VERSION_STRING.to_owned(),
        trust: policy.trust_level(),
    };
    let negotiated = tokio::select! {
        biased;
        () = shutdown.wait() => return,
        r = server_handshake(&mut reader, &mut w, &mut sink, &offer) => r,
    };
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(e @ (ProtoError::Eof | ProtoError::Io(_))) => {
            tracing::debug!("client left during the handshake: {e}");
            return;
        }
        Err(e) => {
            tracing::info!("handshake failed: {e}");
            return;
        }
    };
    tracing::debug!(
        "handshake done: protocol {} (client {})",
        negotiated.version,
        negotiated.peer_version
    );

    if let Some(peer) = &peer
        && policy.creates_user_dirs()
    {
        let store = Arc::clone(&shared.store);
        let (user, uid) = (peer.user(), peer.uid);
        match tokio::task::spawn_blocking(move || store.create_user_dirs(&user, uid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("creating the per-user directories: {e}"),
            Err(e) => tracing::warn!("creating the per-user directories: {e}"),
        }
    }

    let roots = Arc::new(shared.store.temp_roots_session());
    let mut session = Session {
        reader,
        out: Output::new(w, sink),
        shared,
        policy,
        view: Arc::new(view),
        daemon_settings: Arc::clone(&settings),
        settings,
        roots,
        id,
    };
    session.serve_requests(&mut shutdown, &guard).await;
    // Dropping the temp roots deletes their file: store work, so not on this thread.
    let roots = session.roots;
    let _ = tokio::task::spawn_blocking(move || drop(roots)).await;
}

/// Reads the next request; `Ok(None)` when the client closed the connection between
/// requests.
async fn read_request<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
) -> Result<Option<Request>, ProtoError> {
    let n = match r.read_u64().await {
        Ok(n) => n,
        Err(ProtoError::Eof) => return Ok(None),
        Err(e) => return Err(e),
    };
    let op = Opcode::from_u64(n).ok_or(ProtoError::UnknownOpcode(n))?;
    Request::decode_op(op, r).await.map(Some)
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve_requests(&mut self, shutdown: &mut Shutdown, guard: &SessionGuard) {
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.wait() => {
                    tracing::debug!("daemon shutting down: closing the idle session");
                    return;
                }
                next = read_request(&mut self.reader) => next,
            };
            let req = match next {
                Ok(Some(req)) => req,
                Ok(None) => {
                    tracing::debug!("client closed the connection");
                    return;
                }
                Err(e @ (ProtoError::Eof | ProtoError::Io(_))) => {
                    tracing::debug!("client left in the middle of a request: {e}");
                    return;
                }
                Err(e) => {
                    // The stream position is lost: say why once, then close.
                    let msg = protocol_message(&e);
                    tracing::warn!("closing the connection after a bad request: {msg}");
                    let _ = self.out.error(&NixError::new(msg)).await;
                    return;
                }
            };
            let op = req.opcode();
            guard.set_op(Some(op.name()));
            let span = tracing::info_span!("op", name = op.name());
            let keep_going = self.serve_one(req).instrument(span).await;
            guard.set_op(None);
            if !keep_going {
                return;
            }
        }
    }

    /// Runs one request and writes its outcome; false when the session must end.
    async fn serve_one(&mut self, req: Request) -> bool {
        let outcome = ops::dispatch(self, req).await;
        let written = match outcome {
            Ok(Outcome::Reply(resp)) => self.out.reply(&resp).await,
            Ok(Outcome::Sent) => Ok(()),
            Err(OpError::Failed(e)) => {
                tracing::debug!("failed: {e}");
                self.out.error(&e).await
            }
            Err(OpError::Refused(e)) => {
                tracing::info!("refused, closing the connection: {e}");
                let _ = self.out.error(&e).await;
                return false;
            }
            Err(OpError::Broken(e)) => {
                let msg = protocol_message(&e);
                tracing::warn!("closing the connection: {msg}");
                if !matches!(e, ProtoError::Eof | ProtoError::Io(_)) {
                    let _ = self.out.error(&NixError::new(msg)).await;
                }
                return false;
            }
            Err(OpError::Disconnected(e)) => {
                tracing::debug!("client disconnected: {e}");
                return false;
            }
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("client disconnected: {e}");
                false
            }
        }
    }

    fn job_context(&self) -> JobContext {
        JobContext {
            store: Arc::clone(&self.shared.store),
            roots: Arc::clone(&self.roots),
            view: Arc::clone(&self.view),
            settings: Arc::clone(&self.settings),
        }
    }

    /// Runs `job` on the blocking pool, streaming its log to the client.
    pub(crate) async fn run<T, F>(&mut self, job: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Job) -> OpResult<T> + Send + 'static,
    {
        let ctx = self.job_context();
        work::drive(
            &mut self.out,
            ctx,
            None::<&mut tokio::io::Empty>,
            Phase::Working,
            job,
        )
        .await
    }

    /// Runs `job` with `req`'s payload as its input, then drains whatever it left.
    pub(crate) async fn run_with_payload<T, F>(&mut self, req: &Request, job: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Job) -> OpResult<T> + Send + 'static,
    {
        let ctx = self.job_context();
        let mut pull_sink = self.out.sink();
        let mut payload = Payload::new(req, &mut self.reader, &mut pull_sink);
        let result = work::drive(&mut self.out, ctx, Some(&mut payload), Phase::Working, job).await;
        if matches!(result, Err(OpError::Broken(_) | OpError::Disconnected(_))) {
            return result;
        }
        match payload.drain().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("drained {n} unread payload bytes"),
            Err(e) => return Err(OpError::Broken(e)),
        }
        result
    }

    /// Drains `req`'s payload without using it (an operation refused after its fixed
    /// fields were read).
    pub(crate) async fn skip_payload(&mut self, req: &Request) -> OpResult<()> {
        let mut pull_sink = self.out.sink();
        let mut payload = Payload::new(req, &mut self.reader, &mut pull_sink);
        payload.drain().await.map_err(OpError::Broken)?;
        Ok(())
    }

    /// Runs `job` after `STDERR_LAST` was sent: its data output goes to the client raw.
    pub(crate) async fn run_raw<T, F>(&mut self, job: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Job) -> OpResult<T> + Send + 'static,
    {
        let ctx = self.job_context();
        work::drive(
            &mut self.out,
            ctx,
            None::<&mut tokio::io::Empty>,
            Phase::Raw,
            job,
        )
        .await
    }
}
