//! A protocol-aware proxy: forwards every byte between a client and a real daemon
//! unchanged, and decodes both directions with this crate's codec on the side.
//!
//! Per connection two forwarders copy bytes (client → daemon, daemon → client) and hand
//! a copy of each chunk to an unbounded channel, so decoding can never slow or alter
//! the forwarded stream. Two decoders read those copies: the client side decodes the
//! handshake, then requests and their payloads (framed, inline NAR, `STDERR_READ`
//! answers); the daemon side decodes the handshake, then for each request the client
//! sent, the stderr messages and the reply. They tell each other what they need to
//! know: the peer's version and features, the pending requests, and when the daemon
//! asked for data with `STDERR_READ`.
//!
//! The log is JSON lines, one per event:
//! ```text
//! {"conn":1,"event":"open"}
//! {"conn":1,"dir":"c2d","handshake":{"version":"1.34","features":[]}}
//! {"conn":1,"dir":"d2c","handshake":{"version":"1.34","nix_version":"2.8.0","trust":"Unknown","features":[]}}
//! {"conn":1,"dir":"c2d","op":"QueryPathInfo","opcode":26,"request":"…","payload_bytes":0}
//! {"conn":1,"dir":"d2c","op":"QueryPathInfo","opcode":26,"result":"ok","reply":"…","stderr":0}
//! {"conn":1,"dir":"d2c","op":"EnsurePath","opcode":10,"result":"error","error":"…","stderr":0}
//! {"conn":1,"dir":"c2d","decode_error":"…","op":"AddToStore"}
//! {"conn":1,"event":"close"}
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use nixnest_core::{StoreDir, ValidPathInfo};

use crate::error::{Error, Result};
use crate::framed::FramedReader;
use crate::handshake::{HandshakeInfo, WORKER_MAGIC_1, WORKER_MAGIC_2};
use crate::request::{PayloadKind, Request};
use crate::response::Response;
use crate::stderr::StderrMessage;
use crate::version::{FeatureSet, ProtocolVersion};
use crate::wire::{WireReader, WireType, limits};

/// Where log lines go.
#[derive(Clone)]
pub struct Log(Arc<Mutex<Box<dyn Write + Send>>>);

impl Log {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Log(Arc::new(Mutex::new(out)))
    }

    pub fn line(&self, v: Value) {
        // One write per line, so a reader never sees half a line from us.
        let line = format!("{v}\n");
        if let Ok(mut out) = self.0.lock() {
            // A log that cannot be written must not stop the forwarding.
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// Reads the chunks a forwarder copied, as a byte stream.
struct ChannelReader {
    rx: mpsc::UnboundedReceiver<Bytes>,
    current: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.current = b,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        let chunk = self.current.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Copies `from` to `to`, handing every chunk to `tap` as well.
async fn forward<R, W>(mut from: R, mut to: W, tap: mpsc::UnboundedSender<Bytes>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        // The decoder may have given up; forwarding goes on regardless.
        let _ = tap.send(chunk);
    }
    let _ = to.shutdown().await;
}

/// What the daemon-side decoder tells the client-side one.
enum DaemonEvent {
    /// The daemon sent `STDERR_READ n`: the client answers with one string.
    ReadRequest,
    /// The current op (one with a `STDERR_READ` payload) is finished.
    OpDone,
}

struct Shared {
    conn: u64,
    log: Log,
    store_dir: StoreDir,
}

impl Shared {
    fn line(&self, dir: &str, mut v: Value) {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("conn".into(), json!(self.conn));
            obj.insert("dir".into(), json!(dir));
        }
        self.log.line(v);
    }
}

fn short(s: String) -> String {
    const MAX: usize = 600;
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

fn features_json(f: &FeatureSet) -> Value {
    json!(f.iter().collect::<Vec<_>>())
}

struct Handshake {
    version: ProtocolVersion,
    features: FeatureSet,
}

/// The client → daemon side.
/// How the client-side decoder talks to the daemon-side one.
struct C2dLinks {
    version_tx: oneshot::Sender<u64>,
    peer_version_rx: oneshot::Receiver<u64>,
    features_tx: oneshot::Sender<FeatureSet>,
    peer_features_rx: oneshot::Receiver<FeatureSet>,
    ops_tx: mpsc::UnboundedSender<Request>,
    events: mpsc::UnboundedReceiver<DaemonEvent>,
}

/// How the daemon-side decoder talks to the client-side one.
struct D2cLinks {
    version_tx: oneshot::Sender<u64>,
    peer_version_rx: oneshot::Receiver<u64>,
    features_tx: oneshot::Sender<FeatureSet>,
    peer_features_rx: oneshot::Receiver<FeatureSet>,
    ops_rx: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedSender<DaemonEvent>,
}

async fn decode_c2d(
    sh: &Shared,
    r: &mut WireReader<ChannelReader>,
    links: C2dLinks,
    current_op: &mut Option<&'static str>,
) -> Result<()> {
    let C2dLinks {
        version_tx: client_version_tx,
        peer_version_rx: daemon_version_rx,
        features_tx: client_features_tx,
        peer_features_rx: daemon_features_rx,
        ops_tx,
        mut events,
    } = links;
    let magic = r.read_u64().await?;
    if magic != WORKER_MAGIC_1 {
        return Err(Error::BadMagic {
            expected: WORKER_MAGIC_1,
            got: magic,
        });
    }
    let client = r.read_u64().await?;
    let _ = client_version_tx.send(client);
    let daemon = daemon_version_rx.await.map_err(|_| Error::Eof)?;
    let version = ProtocolVersion::from_wire(client).min(ProtocolVersion::from_wire(daemon));
    r.set_version(version);
    let mut hs = Handshake {
        version,
        features: FeatureSet::new(),
    };
    if version.at_least(38) {
        let n = r.read_count(1024, "features").await?;
        let mut ours = FeatureSet::new();
        for _ in 0..n {
            ours.insert(r.read_string(limits::SHORT, "feature").await?);
        }
        let _ = client_features_tx.send(ours.clone());
        let theirs = daemon_features_rx.await.map_err(|_| Error::Eof)?;
        hs.features = ours.intersection(&theirs);
    }
    r.set_features(hs.features.clone());
    if version.at_least(14) && r.read_u64().await? != 0 {
        r.read_u64().await?;
    }
    if version.at_least(11) {
        r.read_u64().await?;
    }
    sh.line(
        "c2d",
        json!({"handshake": {"version": hs.version.to_string(),
                             "client_version": ProtocolVersion::from_wire(client).to_string(),
                             "features": features_json(&hs.features)}}),
    );

    loop {
        // A clean end of the client's stream between requests is the normal close.
        let mut first = [0u8; 8];
        match r.read_raw(&mut first).await {
            Ok(()) => {}
            Err(Error::Eof) => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u64::from_le_bytes(first);
        let op = crate::request::Opcode::from_u64(n).ok_or(Error::UnknownOpcode(n))?;
        *current_op = Some(op.name());
        let req = Request::decode_op(op, r).await?;
        let payload = req.payload(version);
        let mut extra = json!({});
        let payload_bytes = match payload {
            PayloadKind::None => 0,
            PayloadKind::Framed => match &req {
                Request::AddMultipleToStore { .. } => {
                    let mut inner =
                        WireReader::new(FramedReader::new(&mut *r), version, sh.store_dir.clone());
                    let count = inner
                        .read_count(limits::ITEMS, "AddMultipleToStore count")
                        .await?;
                    let mut paths = Vec::new();
                    for _ in 0..count {
                        let info = ValidPathInfo::decode(&mut inner).await?;
                        let nar = crate::nar::copy_nar(&mut inner, &mut tokio::io::sink()).await?;
                        if nar != info.nar_size {
                            return Err(Error::invalid(
                                "AddMultipleToStore",
                                format!(
                                    "NAR of {} is {nar} bytes, narSize says {}",
                                    info.path, info.nar_size
                                ),
                            ));
                        }
                        paths.push(sh.store_dir.print(&info.path));
                    }
                    let mut framed = inner.into_inner();
                    let left = framed.drain().await?;
                    if left != 0 {
                        return Err(Error::invalid(
                            "AddMultipleToStore",
                            format!("{left} bytes after the last item"),
                        ));
                    }
                    extra = json!({"paths": paths});
                    framed.bytes_read()
                }
                _ => FramedReader::new(&mut *r).drain().await?,
            },
            PayloadKind::InlineNar => crate::nar::copy_nar(r, &mut tokio::io::sink()).await?,
            PayloadKind::StderrRead => 0,
        };
        let mut line = json!({"op": op.name(), "opcode": op as u64,
                              "request": short(format!("{req:?}")),
                              "payload_bytes": payload_bytes});
        if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        if ops_tx.send(req).is_err() {
            return Err(Error::Unexpected("daemon-side decoder stopped".into()));
        }
        if payload == PayloadKind::StderrRead {
            let mut pulled = 0u64;
            while let Some(DaemonEvent::ReadRequest) = events.recv().await {
                pulled += r.skip_bytes(limits::STRING, "STDERR_READ reply").await?;
            }
            if let Some(l) = line.as_object_mut() {
                l.insert("pulled_bytes".into(), json!(pulled));
            }
        }
        sh.line("c2d", line);
        *current_op = None;
    }
}

/// The daemon → client side.
async fn decode_d2c(
    sh: &Shared,
    r: &mut WireReader<ChannelReader>,
    links: D2cLinks,
    current_op: &mut Option<&'static str>,
) -> Result<()> {
    let D2cLinks {
        version_tx: daemon_version_tx,
        peer_version_rx: client_version_rx,
        features_tx: daemon_features_tx,
        peer_features_rx: client_features_rx,
        mut ops_rx,
        events,
    } = links;
    let magic = r.read_u64().await?;
    if magic != WORKER_MAGIC_2 {
        return Err(Error::BadMagic {
            expected: WORKER_MAGIC_2,
            got: magic,
        });
    }
    let daemon = r.read_u64().await?;
    let _ = daemon_version_tx.send(daemon);
    let client = client_version_rx.await.map_err(|_| Error::Eof)?;
    let version = ProtocolVersion::from_wire(client).min(ProtocolVersion::from_wire(daemon));
    r.set_version(version);
    let mut features = FeatureSet::new();
    if version.at_least(38) {
        let n = r.read_count(1024, "features").await?;
        let mut ours = FeatureSet::new();
        for _ in 0..n {
            ours.insert(r.read_string(limits::SHORT, "feature").await?);
        }
        let _ = daemon_features_tx.send(ours.clone());
        let theirs = client_features_rx.await.map_err(|_| Error::Eof)?;
        features = ours.intersection(&theirs);
    }
    r.set_features(features.clone());
    let info = HandshakeInfo::decode(r).await?;
    let mut setup_messages = 0;
    loop {
        match StderrMessage::decode(r).await? {
            StderrMessage::Last => break,
            StderrMessage::Error(e) => {
                sh.line("d2c", json!({"handshake_error": e.to_string()}));
                return Ok(());
            }
            _ => setup_messages += 1,
        }
    }
    sh.line(
        "d2c",
        json!({"handshake": {"version": version.to_string(),
                             "daemon_version": ProtocolVersion::from_wire(daemon).to_string(),
                             "nix_version": info.daemon_nix_version,
                             "trust": format!("{:?}", info.trust),
                             "features": features_json(&features),
                             "stderr": setup_messages}}),
    );

    while let Some(req) = ops_rx.recv().await {
        let op = req.opcode();
        *current_op = Some(op.name());
        let pulls = req.payload(version) == PayloadKind::StderrRead;
        let mut messages = 0u64;
        let mut written = 0u64;
        let outcome = loop {
            match StderrMessage::decode(r).await? {
                StderrMessage::Last => break Ok(()),
                StderrMessage::Error(e) => break Err(e),
                StderrMessage::Read(_) => {
                    let _ = events.send(DaemonEvent::ReadRequest);
                }
                StderrMessage::Write(data) => written += data.len() as u64,
                _ => messages += 1,
            }
        };
        if pulls {
            let _ = events.send(DaemonEvent::OpDone);
        }
        let mut line = json!({"op": op.name(), "opcode": op as u64, "stderr": messages});
        match outcome {
            Ok(()) => {
                let reply = Response::decode(&req, r).await?;
                let l = line.as_object_mut();
                if let Some(l) = l {
                    l.insert("result".into(), json!("ok"));
                    l.insert("reply".into(), json!(short(format!("{reply:?}"))));
                    if written > 0 {
                        l.insert("written_bytes".into(), json!(written));
                    }
                }
                if let Request::NarFromPath(_) = req {
                    let n = crate::nar::copy_nar(r, &mut tokio::io::sink()).await?;
                    if let Some(l) = line.as_object_mut() {
                        l.insert("nar_bytes".into(), json!(n));
                    }
                }
            }
            Err(e) => {
                if let Some(l) = line.as_object_mut() {
                    l.insert("result".into(), json!("error"));
                    l.insert("error".into(), json!(short(e.to_string())));
                }
            }
        }
        sh.line("d2c", line);
        *current_op = None;
    }
    // The client is gone. Whatever the daemon still sends (Nix repeats a STDERR_ERROR
    // before closing after a failed request) must still decode.
    loop {
        let mut word = [0u8; 8];
        match r.read_raw(&mut word).await {
            Ok(()) => {}
            Err(Error::Eof) => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut rest = WireReader::new(
            std::io::Cursor::new(word.to_vec()).chain(&mut *r),
            version,
            sh.store_dir.clone(),
        );
        rest.set_features(features.clone());
        let m = StderrMessage::decode(&mut rest).await?;
        sh.line(
            "d2c",
            json!({"unsolicited": m.name(), "message": short(format!("{m:?}"))}),
        );
    }
}

/// Serves one client connection: connects to the daemon, forwards, decodes.
pub async fn tap_connection(
    client: UnixStream,
    daemon: PathBuf,
    conn: u64,
    log: Log,
    store_dir: StoreDir,
) {
    let sh = Arc::new(Shared {
        conn,
        log,
        store_dir,
    });
    let upstream = match UnixStream::connect(&daemon).await {
        Ok(s) => s,
        Err(e) => {
            sh.line(
                "-",
                json!({"event": "connect_failed", "error": e.to_string()}),
            );
            return;
        }
    };
    sh.log.line(json!({"conn": conn, "event": "open"}));
    let (crd, cwr) = client.into_split();
    let (drd, dwr) = upstream.into_split();
    let (c2d_tx, c2d_rx) = mpsc::unbounded_channel();
    let (d2c_tx, d2c_rx) = mpsc::unbounded_channel();
    let fwd_c2d = tokio::spawn(forward(crd, dwr, c2d_tx));
    let fwd_d2c = tokio::spawn(forward(drd, cwr, d2c_tx));

    let (cv_tx, cv_rx) = oneshot::channel();
    let (dv_tx, dv_rx) = oneshot::channel();
    let (cf_tx, cf_rx) = oneshot::channel();
    let (df_tx, df_rx) = oneshot::channel();
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();

    let store_dir = sh.store_dir.clone();
    let sh1 = sh.clone();
    let c2d = tokio::spawn(async move {
        let mut r = WireReader::new(
            ChannelReader {
                rx: c2d_rx,
                current: Bytes::new(),
            },
            ProtocolVersion::LATEST,
            store_dir,
        );
        let mut op = None;
        let res = decode_c2d(
            &sh1,
            &mut r,
            C2dLinks {
                version_tx: cv_tx,
                peer_version_rx: dv_rx,
                features_tx: cf_tx,
                peer_features_rx: df_rx,
                ops_tx,
                events: ev_rx,
            },
            &mut op,
        )
        .await;
        report(&sh1, "c2d", res, op);
        // Keep consuming so nothing else depends on this decoder.
        let _ = tokio::io::copy(r.get_mut(), &mut tokio::io::sink()).await;
    });
    let store_dir = sh.store_dir.clone();
    let sh2 = sh.clone();
    let d2c = tokio::spawn(async move {
        let mut r = WireReader::new(
            ChannelReader {
                rx: d2c_rx,
                current: Bytes::new(),
            },
            ProtocolVersion::LATEST,
            store_dir,
        );
        let mut op = None;
        let res = decode_d2c(
            &sh2,
            &mut r,
            D2cLinks {
                version_tx: dv_tx,
                peer_version_rx: cv_rx,
                features_tx: df_tx,
                peer_features_rx: cf_rx,
                ops_rx,
                events: ev_tx,
            },
            &mut op,
        )
        .await;
        report(&sh2, "d2c", res, op);
        let _ = tokio::io::copy(r.get_mut(), &mut tokio::io::sink()).await;
    });
    let _ = tokio::join!(fwd_c2d, fwd_d2c, c2d, d2c);
    sh.log.line(json!({"conn": conn, "event": "close"}));
}

fn report(sh: &Shared, dir: &str, res: Result<()>, op: Option<&'static str>) {
    match res {
        Ok(()) => {}
        // The stream ended inside a message: only an error if an op was in flight
        // (a peer that hangs up mid-handshake is the peer's business, but say so).
        Err(e) => sh.line(dir, json!({"decode_error": e.to_string(), "op": op})),
    }
}

/// Accepts clients on `listen` and taps each connection to `daemon` until the process
/// is stopped.
pub async fn serve(
    listen: UnixListener,
    daemon: PathBuf,
    log: Log,
    store_dir: StoreDir,
) -> std::io::Result<()> {
    let mut conn = 0u64;
    loop {
        let (client, _) = match listen.accept().await {
            Ok(c) => c,
            Err(e) => {
                log.line(json!({"event": "accept_error", "error": e.to_string()}));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        conn += 1;
        tokio::spawn(tap_connection(
            client,
            daemon.clone(),
            conn,
            log.clone(),
            store_dir.clone(),
        ));
    }
}
