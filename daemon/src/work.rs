//! The work phase of one operation (CppNix's `startWork` … `stopWork`): the session's
//! stderr [`Output`], and [`drive`], the one helper that runs a store call on the
//! blocking pool while its log streams to the client and its payload streams in from
//! the client.
//!
//! ```text
//!   session task (async)                               blocking-pool thread
//!   ────────────────────                               ────────────────────
//!   Output ◄──── Event (log line, activity, data) ◄─── Job::log (store Logger), Job::output (Write)
//!   Payload ───► chunk (≤ 256 KiB, one per want) ────► Job::input (Read)
//!           ◄─── want ◄──────────────────────────────
//! ```
//!
//! * **Memory is constant.** The event queue holds at most [`EVENT_QUEUE`] messages of at
//!   most [`CHUNK`] bytes, a payload chunk at most [`INPUT_CHUNK`] bytes; the blocking side
//!   waits when the client is slow.
//! * **Payload bytes are read only on demand**, one chunk per request from the job, so
//!   no stderr message is ever written while a `STDERR_READ` request is half-written (the
//!   read runs to completion before the next event is forwarded). A pulled payload
//!   (`STDERR_READ`) gets one payload read per request, so the client is asked only for
//!   what the store consumes. A payload that marks its own end (framed, inline NAR; see
//!   [`PayloadInput`]) is read until the chunk is full or the payload ends: each hand-off
//!   between the session and the blocking thread costs two thread switches, and clients
//!   frame uploads in 32 KiB pieces, so filling whole chunks moves a 1 GiB upload in
//!   4,096 hand-offs instead of 32,768.
//! * **The caller drains the payload** afterwards, whatever the job did: the store does
//!   not drain on failure, and the next request must start at the right byte.
//! * **Activity ids** on the wire are the session's own (1, 2, …); the store's ids are
//!   mapped, and activities a failed job left open are stopped before the reply.
//! * `STDERR_NEXT` is filtered by the session's verbosity; activities and results are
//!   always forwarded (clients filter them), and clients < 1.20 get them downgraded by
//!   the protocol crate.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use nixnest_protocol::response::Response;
use nixnest_protocol::stderr::{
    ActivityType, Field, NixError, ResultType, StartActivity, StderrMessage, Verbosity,
};
use nixnest_protocol::{ProtocolVersion, WireType, WireWriter};
use nixnest_store::{LocalStore, Logger, TempRoots};

use crate::config::Settings;
use crate::error::{OpError, OpResult};
use crate::view::StoreView;

/// Most bytes a job's output sends to the session at once.
pub const CHUNK: usize = 64 * 1024;

/// Most payload bytes handed from the session to a job at once.
pub const INPUT_CHUNK: usize = 256 * 1024;

/// A request's payload as [`drive`] reads it.
pub trait PayloadInput: AsyncRead + Unpin {
    /// Whether reading past what the job asked for is harmless because the payload
    /// ends by itself (a read at its end returns 0 without asking the client for
    /// anything). Then [`drive`] fills whole chunks; otherwise it does one read per
    /// chunk the job wants.
    fn ends_by_itself(&self) -> bool;
}

impl<R, W> PayloadInput for nixnest_protocol::payload::Payload<'_, R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    fn ends_by_itself(&self) -> bool {
        !matches!(self, nixnest_protocol::payload::Payload::Pulled(_))
    }
}

impl<R: AsyncRead + Unpin + Send> PayloadInput for nixnest_protocol::framed::FramedReader<R> {
    fn ends_by_itself(&self) -> bool {
        true
    }
}

#[cfg(test)]
impl PayloadInput for &[u8] {
    fn ends_by_itself(&self) -> bool {
        true
    }
}

impl PayloadInput for tokio::io::Empty {
    fn ends_by_itself(&self) -> bool {
        true
    }
}

/// Events a job may have queued before it waits for the session.
pub const EVENT_QUEUE: usize = 32;

// ---------------------------------------------------------------------------------------
// The session's stderr output
// ---------------------------------------------------------------------------------------

/// The write half of a connection, shared between the session's [`Output`] and a pulled
/// payload, which writes its own `STDERR_READ` requests. Only one of them writes at a
/// time (see the module docs), so the lock is never contended.
pub struct SharedSink<W>(Arc<Mutex<W>>);

impl<W> SharedSink<W> {
    pub fn new(inner: W) -> Self {
        SharedSink(Arc::new(Mutex::new(inner)))
    }
}

impl<W> Clone for SharedSink<W> {
    fn clone(&self) -> Self {
        SharedSink(Arc::clone(&self.0))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SharedSink<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *inner).poll_shutdown(cx)
    }
}

/// Where an operation's data output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Inside the work phase: log and activities are forwarded; data becomes
    /// `STDERR_WRITE` chunks (ExportPath).
    Working,
    /// After `STDERR_LAST` (NarFromPath): data is written raw; log lines can no longer be
    /// sent and only go to the daemon's own log.
    Raw,
}

/// Everything the session writes: stderr messages, replies, raw data. Each message is
/// flushed as soon as it is encoded (the client waits for them).
pub struct Output<W> {
    w: WireWriter,
    sink: SharedSink<W>,
    verbosity: Verbosity,
    /// Job activity id → session activity id, for the activities still open.
    activities: HashMap<u64, u64>,
    next_activity: u64,
}

fn level_of(v: nixnest_store::Verbosity) -> Verbosity {
    Verbosity::from_u64(v as u64).unwrap_or(Verbosity::Vomit)
}

impl<W: AsyncWrite + Unpin> Output<W> {
    /// `w` must already carry the negotiated version and features.
    pub fn new(w: WireWriter, sink: SharedSink<W>) -> Self {
        Output {
            w,
            sink,
            // CppNix's default until the client's SetOptions arrives.
            verbosity: Verbosity::Info,
            activities: HashMap::new(),
            next_activity: 1,
        }
    }

    pub fn version(&self) -> ProtocolVersion {
        self.w.version()
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    pub fn set_verbosity(&mut self, v: Verbosity) {
        self.verbosity = v;
    }

    /// Another handle on the socket's write half (for pulled payloads).
    pub fn sink(&self) -> SharedSink<W> {
        self.sink.clone()
    }

    async fn flush(&mut self) -> OpResult<()> {
        self.w
            .flush_into(&mut self.sink)
            .await
            .map_err(OpError::Disconnected)
    }

    /// Writes one stderr message as the negotiated version wants it, and flushes.
    pub async fn send(&mut self, msg: &StderrMessage) -> OpResult<()> {
        msg.encode(&mut self.w);
        self.flush().await
    }

    /// A log line at `level`, sent if the client's verbosity admits it.
    pub async fn log(&mut self, level: Verbosity, text: &str) -> OpResult<()> {
        if level > self.verbosity {
            return Ok(());
        }
        let mut line = text.as_bytes().to_vec();
        line.push(b'\n');
        self.send(&StderrMessage::Next(line)).await
    }

    /// A fresh activity id for an activity the session itself starts.
    pub fn new_activity(&mut self) -> u64 {
        let id = self.next_activity;
        self.next_activity += 1;
        id
    }

    /// Forwards one event of a job.
    pub async fn event(&mut self, ev: Event, phase: Phase) -> OpResult<()> {
        if phase == Phase::Raw {
            match ev {
                Event::Data(bytes) => return self.raw(&bytes).await,
                Event::Log { text, .. } => tracing::debug!("after STDERR_LAST, not sent: {text}"),
                _ => {}
            }
            return Ok(());
        }
        match ev {
            Event::Log { level, text } => self.log(level_of(level), &text).await,
            Event::Start {
                id,
                level,
                kind,
                text,
            } => {
                let sid = self.new_activity();
                self.activities.insert(id, sid);
                self.send(&StderrMessage::StartActivity(StartActivity {
                    id: sid,
                    level: level_of(level),
                    activity_type: ActivityType::from_u64(kind),
                    text: text.into_bytes(),
                    fields: Vec::new(),
                    parent: 0,
                }))
                .await
            }
            Event::Result { id, kind, fields } => match self.activities.get(&id) {
                Some(&sid) => {
                    self.send(&StderrMessage::Result {
                        id: sid,
                        result_type: ResultType::from_u64(kind),
                        fields: fields.into_iter().map(Field::Int).collect(),
                    })
                    .await
                }
                None => Ok(()),
            },
            Event::Stop { id } => match self.activities.remove(&id) {
                Some(sid) => self.send(&StderrMessage::StopActivity { id: sid }).await,
                None => Ok(()),
            },
            Event::Data(bytes) => self.send(&StderrMessage::Write(bytes)).await,
        }
    }

    /// Stops the activities a job left open (it failed or forgot).
    pub async fn stop_open_activities(&mut self) -> OpResult<()> {
        let mut open: Vec<u64> = self.activities.drain().map(|(_, sid)| sid).collect();
        open.sort_unstable();
        for sid in open.into_iter().rev() {
            self.send(&StderrMessage::StopActivity { id: sid }).await?;
        }
        Ok(())
    }

    /// `STDERR_LAST` and the reply body.
    pub async fn reply(&mut self, resp: &Response) -> OpResult<()> {
        StderrMessage::Last.encode(&mut self.w);
        resp.encode(&mut self.w);
        self.flush().await
    }

    /// `STDERR_LAST` alone (NarFromPath, whose NAR follows raw).
    pub async fn last(&mut self) -> OpResult<()> {
        self.send(&StderrMessage::Last).await
    }

    /// `STDERR_ERROR`. Clients < 1.26 get the whole text, `error: …`, as CppNix sends it
    /// to them; newer ones the bare message in the structured form.
    pub async fn error(&mut self, e: &NixError) -> OpResult<()> {
        let mut e = e.clone();
        if !self.version().at_least(26) {
            e.msg = format!("error: {}", e.msg);
        }
        self.send(&StderrMessage::Error(e)).await
    }

    /// Raw bytes outside any message (NarFromPath's NAR).
    pub async fn raw(&mut self, bytes: &[u8]) -> OpResult<()> {
        self.w.write_raw(bytes);
        self.flush().await
    }
}

// ---------------------------------------------------------------------------------------
// Jobs on the blocking pool
// ---------------------------------------------------------------------------------------

/// What a job sends to its session.
#[derive(Debug)]
pub enum Event {
    Log {
        level: nixnest_store::Verbosity,
        text: String,
    },
    Start {
        id: u64,
        level: nixnest_store::Verbosity,
        /// Wire number of the activity type.
        kind: u64,
        text: String,
    },
    Result {
        id: u64,
        /// Wire number of the result type.
        kind: u64,
        fields: Vec<u64>,
    },
    Stop {
        id: u64,
    },
    Data(Vec<u8>),
}

/// The store's [`Logger`] for a job: every message becomes an [`Event`]. If the session
/// is gone the messages are dropped (the job then finishes on its own).
#[derive(Clone)]
pub struct JobLogger(mpsc::Sender<Event>);

impl JobLogger {
    fn send(&self, ev: Event) {
        let _ = self.0.blocking_send(ev);
    }
}

impl Logger for JobLogger {
    fn log(&self, level: nixnest_store::Verbosity, msg: &str) {
        self.send(Event::Log {
            level,
            text: msg.to_owned(),
        });
    }

    fn start_activity(
        &self,
        id: u64,
        level: nixnest_store::Verbosity,
        kind: nixnest_store::logger::ActivityType,
        text: &str,
    ) {
        self.send(Event::Start {
            id,
            level,
            kind: kind as u64,
            text: text.to_owned(),
        });
    }

    fn progress(&self, id: u64, done: u64, expected: u64) {
        // CppNix's resProgress: done, expected, running, failed.
        self.send(Event::Result {
            id,
            kind: ResultType::Progress.to_u64(),
            fields: vec![done, expected, 0, 0],
        });
    }

    fn result(&self, id: u64, kind: nixnest_store::ResultType, fields: &[u64]) {
        self.send(Event::Result {
            id,
            kind: kind as u64,
            fields: fields.to_vec(),
        });
    }

    fn stop_activity(&self, id: u64) {
        self.send(Event::Stop { id });
    }
}

/// The request's payload as a blocking `Read`: each refill asks the session for up to
/// [`INPUT_CHUNK`] bytes and waits for them. A job without payload reads end-of-file.
pub struct JobInput {
    want: Option<mpsc::Sender<usize>>,
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl JobInput {
    fn refill(&mut self) -> io::Result<()> {
        let Some(want) = &self.want else {
            self.eof = true;
            return Ok(());
        };
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the connection was closed");
        want.blocking_send(INPUT_CHUNK).map_err(|_| gone())?;
        match self.chunks.blocking_recv() {
            Some(Ok(data)) if data.is_empty() => self.eof = true,
            Some(Ok(data)) => {
                self.buf = data;
                self.pos = 0;
            }
            Some(Err(e)) => return Err(e),
            None => return Err(gone()),
        }
        Ok(())
    }
}

impl Read for JobInput {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.buf.len() && !self.eof {
            self.refill()?;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

/// The job's data output (ExportPath's export record, NarFromPath's NAR), buffered into
/// [`CHUNK`]-sized [`Event::Data`] messages.
pub struct JobOutput {
    events: mpsc::Sender<Event>,
    buf: Vec<u8>,
}

impl JobOutput {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.events
            .blocking_send(Event::Data(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the connection was closed"))
    }
}

impl Write for JobOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        let n = (CHUNK - self.buf.len()).min(data.len());
        self.buf
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// What a job works with. The fields are public so that a store call can borrow the
/// store, the temp roots, the input and the logger at once.
pub struct Job {
    pub store: Arc<LocalStore>,
    /// The session's temp roots: what the job adds stays alive until the connection
    /// closes.
    pub roots: Arc<TempRoots>,
    pub view: Arc<StoreView>,
    /// The session's settings (daemon settings + the client's SetOptions).
    pub settings: Arc<Settings>,
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    pub log: JobLogger,
    pub input: JobInput,
    pub output: JobOutput,
}

/// Runs one of the protocol's async decoders over a [`BlockingReader`] to completion on
/// a blocking-pool thread. Tokio's own `block_on` cannot be used there: it enters the
/// runtime, inside which the job's channel waits would panic. A decoder over a blocking
/// reader never waits for a wake-up, so polling it once normally finishes it.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

impl Job {
    /// A log line from the session's own code (not the store's).
    pub fn log_line(&self, level: nixnest_store::Verbosity, text: impl Into<String>) {
        self.log.send(Event::Log {
            level,
            text: text.into(),
        });
    }
}

/// Lets the protocol's async decoders read from a blocking reader (on a blocking-pool
/// thread only: every poll blocks until data is there), see [`block_on`].
pub struct BlockingReader<'a, R>(pub &'a mut R);

impl<R: Read + Unpin> AsyncRead for BlockingReader<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.0.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The session state a job is built from.
pub struct JobContext {
    pub store: Arc<LocalStore>,
    pub roots: Arc<TempRoots>,
    pub view: Arc<StoreView>,
    pub settings: Arc<Settings>,
}

/// Runs `job` on the blocking pool with `payload` (if any) as its input, forwarding its
/// events to `out` while it runs; returns once the job is done and every event it sent
/// has been written. The caller drains `payload` afterwards.
pub async fn drive<W, P, T, F>(
    out: &mut Output<W>,
    ctx: JobContext,
    mut payload: Option<&mut P>,
    phase: Phase,
    job: F,
) -> OpResult<T>
where
    W: AsyncWrite + Unpin,
    P: PayloadInput,
    T: Send + 'static,
    F: FnOnce(&mut Job) -> OpResult<T> + Send + 'static,
{
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (want_tx, mut want_rx) = mpsc::channel::<usize>(1);
    let (chunk_tx, chunk_rx) = mpsc::channel(1);
    let has_payload = payload.is_some();
    let fill = payload.as_ref().is_some_and(|p| p.ends_by_itself());
    let state = Job {
        store: ctx.store,
        roots: ctx.roots,
        view: ctx.view,
        settings: ctx.settings,
        version: out.version(),
        log: JobLogger(ev_tx.clone()),
        input: JobInput {
            want: has_payload.then_some(want_tx),
            chunks: chunk_rx,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        },
        output: JobOutput {
            events: ev_tx,
            buf: Vec::new(),
        },
    };
    let mut handle = tokio::task::spawn_blocking(move || {
        let mut state = state;
        let result = job(&mut state).and_then(|v| {
            state.output.flush().map_err(OpError::Disconnected)?;
            Ok(v)
        });
        // Dropping the job closes its channels: the session sees the end of its events.
        drop(state);
        result
    });

    let mut events_open = true;
    let mut wants_open = has_payload;
    let mut joined = None;
    let mut broken: Option<nixnest_protocol::Error> = None;
    let mut buf = if has_payload {
        vec![0u8; INPUT_CHUNK]
    } else {
        Vec::new()
    };
    while joined.is_none() || events_open {
        tokio::select! {
            biased;
            ev = ev_rx.recv(), if events_open => match ev {
                Some(ev) => out.event(ev, phase).await?,
                None => events_open = false,
            },
            want = want_rx.recv(), if wants_open => match want {
                None => wants_open = false,
                Some(n) => {
                    let reply = match (&broken, payload.as_mut()) {
                        (None, Some(p)) => {
                            let n = n.clamp(1, buf.len());
                            match read_chunk(p, buf.get_mut(..n).unwrap_or_default(), fill).await {
                                Ok(k) => Ok(buf.get(..k).unwrap_or_default().to_vec()),
                                Err(e) => {
                                    let e = nixnest_protocol::Error::from(e);
                                    let kind = match e {
                                        nixnest_protocol::Error::Eof => io::ErrorKind::UnexpectedEof,
                                        _ => io::ErrorKind::InvalidData,
                                    };
                                    let copy = io::Error::new(kind, crate::error::protocol_message(&e));
                                    broken = Some(e);
                                    Err(copy)
                                }
                            }
                        }
                        _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the request's data ended")),
                    };
                    let _ = chunk_tx.send(reply).await;
                }
            },
            res = &mut handle, if joined.is_none() => joined = Some(res),
        }
    }
    if phase == Phase::Working {
        out.stop_open_activities().await?;
    }
    let result = match joined {
        Some(Ok(result)) => result,
        Some(Err(e)) => {
            tracing::error!("a store operation panicked: {e}");
            Err(OpError::failed(format!(
                "internal error in nixnest-daemon (please report it): {e}"
            )))
        }
        None => Err(OpError::failed("internal error: the operation vanished")),
    };
    match broken {
        Some(e) => Err(OpError::Broken(e)),
        None => result,
    }
}

/// One chunk for the job: one read, or with `fill` as many as it takes to fill `buf` or
/// reach the payload's end.
async fn read_chunk<P: AsyncRead + Unpin>(
    p: &mut P,
    buf: &mut [u8],
    fill: bool,
) -> io::Result<usize> {
    let mut got = p.read(buf).await?;
    while fill && got > 0 && got < buf.len() {
        let k = p.read(buf.get_mut(got..).unwrap_or_default()).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixnest_protocol::wire::StoreDir;
    use nixnest_store::StoreConfig;

    fn context() -> (tempfile::TempDir, JobContext) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            LocalStore::open(StoreConfig::under(dir.path()), &nixnest_store::NullLogger).unwrap();
        let roots = store.temp_roots_session();
        let env = crate::config::ConfigEnv::from_vars(|_| None, None).unwrap();
        let ctx = JobContext {
            store: Arc::new(store),
            roots: Arc::new(roots),
            view: Arc::new(StoreView::Full),
            settings: Arc::new(Settings::defaults(&env)),
        };
        (dir, ctx)
    }

    fn output(buf: tokio::io::DuplexStream) -> Output<tokio::io::DuplexStream> {
        let w = WireWriter::new(ProtocolVersion::LATEST, StoreDir::default());
        Output::new(w, SharedSink::new(buf))
    }

    async fn messages(mut rd: tokio::io::DuplexStream) -> Vec<StderrMessage> {
        let mut bytes = Vec::new();
        rd.read_to_end(&mut bytes).await.unwrap();
        let mut r = nixnest_protocol::WireReader::new(
            &bytes[..],
            ProtocolVersion::LATEST,
            StoreDir::default(),
        );
        let mut out = Vec::new();
        while !r.get_ref().is_empty() {
            out.push(StderrMessage::decode(&mut r).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn log_is_filtered_activities_mapped_and_open_ones_stopped() {
        let (_d, ctx) = context();
        let (wr, rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        out.set_verbosity(Verbosity::Info);
        let r = drive(&mut out, ctx, None::<&mut &[u8]>, Phase::Working, |job| {
            use nixnest_store::Verbosity as V;
            job.log.log(V::Info, "shown");
            job.log.log(V::Debug, "hidden");
            let kind = nixnest_store::logger::ActivityType::OptimiseStore;
            job.log.start_activity(1 << 40, V::Error, kind, "");
            job.log.progress(1 << 40, 1, 2);
            job.log.start_activity(7, V::Debug, kind, "left open");
            job.log.stop_activity(1 << 40);
            Ok(42)
        })
        .await
        .unwrap();
        assert_eq!(r, 42);
        drop(out);
        let got = messages(rd).await;
        let start = |id, level, text: &str| {
            StderrMessage::StartActivity(StartActivity {
                id,
                level,
                activity_type: ActivityType::OptimiseStore,
                text: text.as_bytes().to_vec(),
                fields: vec![],
                parent: 0,
            })
        };
        assert_eq!(
            got,
            vec![
                StderrMessage::Next(b"shown\n".to_vec()),
                start(1, Verbosity::Error, ""),
                StderrMessage::Result {
                    id: 1,
                    result_type: ResultType::Progress,
                    fields: vec![Field::Int(1), Field::Int(2), Field::Int(0), Field::Int(0)],
                },
                start(2, Verbosity::Debug, "left open"),
                StderrMessage::StopActivity { id: 1 },
                StderrMessage::StopActivity { id: 2 },
            ]
        );
    }

    #[tokio::test]
    async fn payload_is_read_on_demand_and_data_streams_back() {
        let (_d, ctx) = context();
        let (wr, rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut payload = &data[..];
        let copied = drive(&mut out, ctx, Some(&mut payload), Phase::Working, |job| {
            let mut first = [0u8; 10];
            job.input.read_exact(&mut first).unwrap();
            let mut rest = Vec::new();
            job.input.read_to_end(&mut rest).unwrap();
            job.output.write_all(&first).unwrap();
            Ok(10 + rest.len())
        })
        .await
        .unwrap();
        assert_eq!(copied, data.len());
        drop(out);
        assert_eq!(
            messages(rd).await,
            vec![StderrMessage::Write(data[..10].to_vec())]
        );
    }

    #[tokio::test]
    async fn a_job_that_stops_reading_leaves_the_rest_unread() {
        let (_d, ctx) = context();
        let (wr, _rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        let data = vec![7u8; 3 * INPUT_CHUNK];
        let mut payload = &data[..];
        drive(&mut out, ctx, Some(&mut payload), Phase::Working, |job| {
            let mut one = [0u8; 1];
            job.input.read_exact(&mut one).unwrap();
            Err::<(), _>(OpError::failed("stopped"))
        })
        .await
        .unwrap_err();
        // Exactly one chunk was taken from the payload; the caller drains the rest.
        assert_eq!(payload.len(), 2 * INPUT_CHUNK);
    }

    /// A framed upload in small frames reaches the job in whole chunks.
    #[tokio::test]
    async fn a_framed_payload_is_handed_over_in_full_chunks() {
        let (_d, ctx) = context();
        let (wr, _rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        let data: Vec<u8> = (0..INPUT_CHUNK + 5000).map(|i| (i % 253) as u8).collect();
        let mut bytes = Vec::new();
        for frame in data.chunks(1000) {
            bytes.extend_from_slice(&(frame.len() as u64).to_le_bytes());
            bytes.extend_from_slice(frame);
        }
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let mut framed = nixnest_protocol::framed::FramedReader::new(&bytes[..]);
        let (sizes, all) = drive(&mut out, ctx, Some(&mut framed), Phase::Working, |job| {
            let mut sizes = Vec::new();
            let mut all = Vec::new();
            let mut buf = vec![0u8; 2 * INPUT_CHUNK];
            loop {
                let n = job.input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sizes.push(n);
                all.extend_from_slice(&buf[..n]);
            }
            Ok((sizes, all))
        })
        .await
        .unwrap();
        assert_eq!(all, data);
        assert_eq!(sizes, vec![INPUT_CHUNK, 5000]);
    }

    #[tokio::test]
    async fn a_broken_payload_is_reported_as_broken() {
        let (_d, ctx) = context();
        let (wr, _rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        // A framed stream announcing more than it holds.
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        let mut framed = nixnest_protocol::framed::FramedReader::new(&bytes[..]);
        let err = drive(&mut out, ctx, Some(&mut framed), Phase::Working, |job| {
            let mut all = Vec::new();
            job.input.read_to_end(&mut all)?;
            Ok(all)
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, OpError::Broken(nixnest_protocol::Error::Eof)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn panics_become_errors() {
        let (_d, ctx) = context();
        let (wr, _rd) = tokio::io::duplex(1 << 20);
        let mut out = output(wr);
        let err = drive(
            &mut out,
            ctx,
            None::<&mut &[u8]>,
            Phase::Working,
            |_| -> OpResult<()> { panic!("boom") },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("internal error"), "{err}");
    }

    #[tokio::test]
    async fn legacy_clients_get_the_error_prefix() {
        let (wr, rd) = tokio::io::duplex(1 << 20);
        let w = WireWriter::new(ProtocolVersion::new(1, 21), StoreDir::default());
        let mut out = Output::new(w, SharedSink::new(wr));
        out.error(&NixError::new("boom")).await.unwrap();
        drop(out);
        let mut bytes = Vec::new();
        let mut rd = rd;
        rd.read_to_end(&mut bytes).await.unwrap();
        let mut r = nixnest_protocol::WireReader::new(
            &bytes[..],
            ProtocolVersion::new(1, 21),
            StoreDir::default(),
        );
        let m = StderrMessage::decode(&mut r).await.unwrap();
        assert_eq!(m, StderrMessage::Error(NixError::new("error: boom")));
    }
}
