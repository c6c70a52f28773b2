//! Our client against a scripted server built from this crate's server-side pieces
//! (handshake, request decoding, stderr messages, framed and `STDERR_READ` payloads),
//! over an in-memory pipe: two or more requests per connection, failures in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

use nixnest_core::{ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath, ValidPathInfo};
use nixnest_protocol::client::DaemonClient;
use nixnest_protocol::framed::{FramedReader, StderrReadSource};
use nixnest_protocol::handshake::{ServerOffer, TrustLevel, server_handshake};
use nixnest_protocol::request::{PayloadKind, Request};
use nixnest_protocol::response::Response;
use nixnest_protocol::stderr::{ActivityType, NixError, StartActivity, StderrMessage, Verbosity};
use nixnest_protocol::types::ClientSettings;
use nixnest_protocol::version::{FeatureSet, ProtocolVersion};
use nixnest_protocol::wire::{WireReader, WireType, WireWriter};
use nixnest_protocol::{Error, Result};

fn nar_of(contents: &[u8]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    let mut out = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        s(&mut out, t);
    }
    out
}

fn path(name: &str) -> StorePath {
    StorePath::new([7; 20], name).unwrap()
}

async fn send<W: AsyncWrite + Unpin>(w: &mut WireWriter, sink: &mut W, m: StderrMessage) {
    m.encode(w);
    w.flush_into(sink).await.unwrap();
}

/// A tiny daemon: answers a handful of ops the way nix-daemon does.
async fn serve(
    rd: ReadHalf<DuplexStream>,
    mut wr: WriteHalf<DuplexStream>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<()> {
    let sd = StoreDir::default();
    let mut r = WireReader::new(rd, ProtocolVersion::LATEST, sd.clone());
    let mut w = WireWriter::new(ProtocolVersion::LATEST, sd);
    let offer = ServerOffer {
        version: ProtocolVersion::LATEST,
        features: FeatureSet::new(),
        nix_version: "nixnest-test".into(),
        trust: TrustLevel::Trusted,
    };
    let n = server_handshake(&mut r, &mut w, &mut wr, &offer).await?;
    loop {
        let req = match Request::decode(&mut r).await {
            Ok(req) => req,
            Err(Error::Eof) => return Ok(()),
            Err(e) => return Err(e),
        };
        seen.lock().unwrap().push(req.opcode().name().to_string());
        let reply = match &req {
            Request::SetOptions(_) => Response::Unit,
            Request::IsValidPath(p) => {
                send(&mut w, &mut wr, StderrMessage::Next(b"checking\n".to_vec())).await;
                Response::Bool(p.name() != "missing")
            }
            Request::EnsurePath(p) => {
                send(
                    &mut w,
                    &mut wr,
                    StderrMessage::Error(NixError::new(format!(
                        "path '{p}' does not exist and cannot be created"
                    ))),
                )
                .await;
                continue;
            }
            Request::AddToStore(a) => {
                assert_eq!(req.payload(n.version), PayloadKind::Framed);
                let mut framed = FramedReader::new(&mut r);
                if a.name() == "fail-early" {
                    // Fail after reading a little: drain, then report.
                    let mut some = [0u8; 3];
                    framed.read_exact(&mut some).await?;
                    framed.drain().await?;
                    send(
                        &mut w,
                        &mut wr,
                        StderrMessage::Error(NixError::new("bad data")),
                    )
                    .await;
                    continue;
                }
                send(
                    &mut w,
                    &mut wr,
                    StderrMessage::StartActivity(StartActivity {
                        id: 1,
                        level: Verbosity::Info,
                        activity_type: ActivityType::Unknown,
                        text: b"adding".to_vec(),
                        fields: vec![],
                        parent: 0,
                    }),
                )
                .await;
                let mut data = Vec::new();
                framed.read_to_end(&mut data).await?;
                send(&mut w, &mut wr, StderrMessage::StopActivity { id: 1 }).await;
                let mut info = ValidPathInfo::new(path(a.name()), Hash::sha256(&data));
                info.nar_size = data.len() as u64;
                Response::PathInfo(Box::new(info))
            }
            Request::AddToStoreNar { info, .. } => {
                let mut data = Vec::new();
                match req.payload(n.version) {
                    PayloadKind::Framed => {
                        FramedReader::new(&mut r).read_to_end(&mut data).await?;
                    }
                    PayloadKind::StderrRead => {
                        // Pull exactly the NAR, as nix-daemon does by parsing it.
                        let mut src = StderrReadSource::new(&mut r, &mut wr, 16);
                        nixnest_protocol::nar::copy_nar(&mut src, &mut data).await?;
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(data.len() as u64, info.nar_size);
                Response::Unit
            }
            Request::NarFromPath(_) => {
                send(&mut w, &mut wr, StderrMessage::Last).await;
                w.write_raw(&nar_of(b"nar contents"));
                w.flush_into(&mut wr).await?;
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        StderrMessage::Last.encode(&mut w);
        reply.encode(&mut w);
        w.flush_into(&mut wr).await?;
    }
}

async fn session(version: ProtocolVersion) -> Vec<String> {
    let (client_end, server_end) = tokio::io::duplex(1024);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (srd, swr) = tokio::io::split(server_end);
    let server = tokio::spawn(serve(srd, swr, seen.clone()));
    let (crd, cwr) = tokio::io::split(client_end);
    let mut c = DaemonClient::handshake(crd, cwr, StoreDir::default(), version, &FeatureSet::new())
        .await
        .unwrap();
    assert_eq!(c.version(), version);
    // The daemon's version string is only sent from 1.33 on.
    let expected_nix = version.at_least(33).then_some("nixnest-test");
    assert_eq!(
        c.negotiated().info.daemon_nix_version.as_deref(),
        expected_nix
    );
    let logs = Arc::new(Mutex::new(Vec::new()));
    let l2 = logs.clone();
    c.set_logger(move |m| l2.lock().unwrap().push(m.name()));
    c.set_options(&ClientSettings::default()).await.unwrap();
    assert!(c.is_valid_path(&path("there")).await.unwrap());
    match c.ensure_path(&path("missing")).await {
        Err(Error::Remote(e)) => assert!(e.msg.contains("does not exist")),
        other => panic!("{other:?}"),
    }
    assert!(!c.is_valid_path(&path("missing")).await.unwrap());

    if version.at_least(25) {
        // 200 KiB: several frames while the server sends activities.
        let big: Vec<u8> = (0..200 * 1024u32).map(|i| i as u8).collect();
        let info = c
            .add_to_store(
                "big",
                ContentAddressMethod::Flat,
                HashAlgo::Sha256,
                &BTreeSet::new(),
                false,
                &mut &big[..],
            )
            .await
            .unwrap();
        assert_eq!(info.nar_size, big.len() as u64);
        assert_eq!(info.nar_hash, Hash::sha256(&big));
        let r = c
            .add_to_store(
                "fail-early",
                ContentAddressMethod::Flat,
                HashAlgo::Sha256,
                &BTreeSet::new(),
                false,
                &mut &big[..],
            )
            .await;
        assert!(matches!(r, Err(Error::Remote(e)) if e.msg == "bad data"));
        assert!(c.is_valid_path(&path("after")).await.unwrap());
    }

    let nar = nar_of(b"uploaded contents, long enough to need several pulls");
    let mut info = ValidPathInfo::new(path("nar"), Hash::sha256(&nar));
    info.nar_size = nar.len() as u64;
    c.add_to_store_nar(&info, false, true, &mut &nar[..])
        .await
        .unwrap();

    let mut got = Vec::new();
    let n = c.nar_from_path(&path("x"), &mut got).await.unwrap();
    assert_eq!(got, nar_of(b"nar contents"));
    assert_eq!(n as usize, got.len());
    assert!(c.is_valid_path(&path("last")).await.unwrap());

    drop(c);
    server.await.unwrap().unwrap();
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains(&"STDERR_NEXT"));
    if version.at_least(25) {
        assert!(logs.contains(&"STDERR_START_ACTIVITY"));
    }
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn client_and_server_at_1_38() {
    let ops = session(ProtocolVersion::LATEST).await;
    assert_eq!(
        ops,
        [
            "SetOptions",
            "IsValidPath",
            "EnsurePath",
            "IsValidPath",
            "AddToStore",
            "AddToStore",
            "IsValidPath",
            "AddToStoreNar",
            "NarFromPath",
            "IsValidPath"
        ]
    );
}

/// At 1.22 AddToStoreNar's NAR is pulled with STDERR_READ.
#[tokio::test]
async fn client_and_server_at_1_22() {
    let ops = session(ProtocolVersion::new(1, 22)).await;
    assert_eq!(
        ops,
        [
            "SetOptions",
            "IsValidPath",
            "EnsurePath",
            "IsValidPath",
            "AddToStoreNar",
            "NarFromPath",
            "IsValidPath"
        ]
    );
}
