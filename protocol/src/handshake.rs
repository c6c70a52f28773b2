//! Connection setup, both sides.
//!
//! ```text
//! client                                         daemon
//!   u64 WORKER_MAGIC_1 0x6e697863        -->
//!                                        <--  u64 WORKER_MAGIC_2 0x6478696f, u64 daemon version
//!   u64 client version                   -->
//!   [≥1.38] list<string> client features -->
//!                                        <--  [≥1.38] list<string> daemon features
//!   [≥1.14] u64 cpu affinity (0, or 1 + u64 cpu) -->
//!   [≥1.11] u64 reserveSpace             -->
//!                                        <--  [≥1.33] string daemon Nix version
//!                                        <--  [≥1.35] u64 trust (0 unknown, 1 trusted, 2 not trusted)
//!                                        <--  stderr messages, STDERR_LAST
//! ```
//!
//! The negotiated version is the minimum of both numbers. nixnest serves 1.21–1.38; a
//! client below 1.21 gets [`Error::VersionTooOld`] right after it sent its version and
//! the caller closes the connection (the client sees EOF, as with upstream daemons).
//! Nix ≥ 2.24 sends magic and version in one write, so the daemon writes and flushes
//! its magic and version before it reads the client's version.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};
use crate::stderr::StderrMessage;
use crate::version::{FeatureSet, ProtocolVersion};
use crate::wire::{WireReader, WireType, WireWriter, limits};

pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// Most feature strings a peer may offer.
const MAX_FEATURES: u64 = 1024;

/// The trust flag the daemon reports (≥ 1.35): whether it treats the client as trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustLevel {
    Unknown,
    Trusted,
    NotTrusted,
}

impl WireType for TrustLevel {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        match r.read_u64().await? {
            0 => Ok(TrustLevel::Unknown),
            1 => Ok(TrustLevel::Trusted),
            2 => Ok(TrustLevel::NotTrusted),
            value => Err(Error::BadEnum {
                field: "trust flag",
                kind: "trust flag (0 unknown, 1 trusted, 2 not trusted)",
                value,
            }),
        }
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(match self {
            TrustLevel::Unknown => 0,
            TrustLevel::Trusted => 1,
            TrustLevel::NotTrusted => 2,
        });
    }
}

/// What the daemon tells the client after the version exchange (upstream's
/// `ClientHandshakeInfo`): its Nix version (≥ 1.33) and the trust flag (≥ 1.35).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeInfo {
    pub daemon_nix_version: Option<String>,
    pub trust: TrustLevel,
}

impl WireType for HandshakeInfo {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let daemon_nix_version = if r.version().at_least(33) {
            Some(r.read_string(limits::SHORT, "daemon version").await?)
        } else {
            None
        };
        let trust = if r.version().at_least(35) {
            TrustLevel::decode(r).await?
        } else {
            TrustLevel::Unknown
        };
        Ok(HandshakeInfo {
            daemon_nix_version,
            trust,
        })
    }
    fn encode(&self, w: &mut WireWriter) {
        if w.version().at_least(33) {
            w.write_str(self.daemon_nix_version.as_deref().unwrap_or(""));
        }
        if w.version().at_least(35) {
            self.trust.encode(w);
        }
    }
}

/// The outcome of a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `min(client, daemon)`: what both sides speak from now on.
    pub version: ProtocolVersion,
    /// The version the peer announced.
    pub peer_version: ProtocolVersion,
    /// Features both sides offered (≥ 1.38).
    pub features: FeatureSet,
    pub info: HandshakeInfo,
}

/// What the daemon side offers.
#[derive(Clone, Debug)]
pub struct ServerOffer {
    pub version: ProtocolVersion,
    pub features: FeatureSet,
    /// Sent to clients ≥ 1.33, e.g. `"2.8.0"`.
    pub nix_version: String,
    /// Sent to clients ≥ 1.35.
    pub trust: TrustLevel,
}

fn agree(peer_wire: u64, ours: ProtocolVersion) -> Result<(ProtocolVersion, ProtocolVersion)> {
    let peer = ProtocolVersion::from_wire(peer_wire);
    if peer.major != 1 {
        return Err(Error::UnsupportedMajor(peer_wire >> 8));
    }
    let version = peer.min(ours);
    if version < ProtocolVersion::MIN_SUPPORTED {
        return Err(Error::VersionTooOld {
            got: version,
            min: ProtocolVersion::MIN_SUPPORTED,
        });
    }
    Ok((peer, version))
}

async fn read_features<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<FeatureSet> {
    let n = r.read_count(MAX_FEATURES, "features").await?;
    let mut set = FeatureSet::new();
    for _ in 0..n {
        set.insert(r.read_string(limits::SHORT, "feature").await?);
    }
    Ok(set)
}

fn write_features(w: &mut WireWriter, features: &FeatureSet) {
    w.write_u64(features.len() as u64);
    for f in features.iter() {
        w.write_str(f);
    }
}

/// Daemon side. On success the reader and writer carry the negotiated version and
/// features, `STDERR_LAST` has been written and flushed, and the first request may be
/// read. On error the caller closes the connection.
pub async fn server_handshake<R, W>(
    r: &mut WireReader<R>,
    w: &mut WireWriter,
    sink: &mut W,
    offer: &ServerOffer,
) -> Result<Negotiated>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let magic = r.read_u64().await?;
    if magic != WORKER_MAGIC_1 {
        return Err(Error::BadMagic {
            expected: WORKER_MAGIC_1,
            got: magic,
        });
    }
    w.write_u64(WORKER_MAGIC_2);
    w.write_u64(offer.version.to_wire());
    w.flush_into(sink).await?;

    let (peer_version, version) = agree(r.read_u64().await?, offer.version)?;
    r.set_version(version);
    w.set_version(version);

    let mut features = FeatureSet::new();
    if version.at_least(38) {
        let theirs = read_features(r).await?;
        write_features(w, &offer.features);
        w.flush_into(sink).await?;
        features = theirs.intersection(&offer.features);
    }
    r.set_features(features.clone());
    w.set_features(features.clone());

    if version.at_least(14) && r.read_u64().await? != 0 {
        // Obsolete CPU affinity: the client says which CPU it wants; ignored.
        r.read_u64().await?;
    }
    if version.at_least(11) {
        // Obsolete reserveSpace flag; ignored.
        r.read_u64().await?;
    }

    let info = HandshakeInfo {
        daemon_nix_version: Some(offer.nix_version.clone()),
        trust: offer.trust,
    };
    info.encode(w);
    StderrMessage::Last.encode(w);
    w.flush_into(sink).await?;
    Ok(Negotiated {
        version,
        peer_version,
        features,
        info,
    })
}

/// Client side: magic and version go out in one write (as Nix ≥ 2.24 does), then the
/// rest of the exchange; stderr messages the daemon sends during setup are handed to
/// `on_message`. Returns after `STDERR_LAST`.
pub async fn client_handshake<R, W>(
    r: &mut WireReader<R>,
    w: &mut WireWriter,
    sink: &mut W,
    our_version: ProtocolVersion,
    our_features: &FeatureSet,
    mut on_message: impl FnMut(StderrMessage) + Send,
) -> Result<Negotiated>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    w.write_u64(WORKER_MAGIC_1);
    w.write_u64(our_version.to_wire());
    w.flush_into(sink).await?;

    let magic = r.read_u64().await?;
    if magic != WORKER_MAGIC_2 {
        return Err(Error::BadMagic {
            expected: WORKER_MAGIC_2,
            got: magic,
        });
    }
    let (peer_version, version) = agree(r.read_u64().await?, our_version)?;
    r.set_version(version);
    w.set_version(version);

    let mut features = FeatureSet::new();
    if version.at_least(38) {
        write_features(w, our_features);
        w.flush_into(sink).await?;
        features = read_features(r).await?.intersection(our_features);
    }
    r.set_features(features.clone());
    w.set_features(features.clone());

    if version.at_least(14) {
        w.write_u64(0);
    }
    if version.at_least(11) {
        w.write_u64(0);
    }
    w.flush_into(sink).await?;

    let info = HandshakeInfo::decode(r).await?;
    loop {
        match StderrMessage::decode(r).await? {
            StderrMessage::Last => break,
            StderrMessage::Error(e) => return Err(Error::Remote(e)),
            m @ (StderrMessage::Read(_) | StderrMessage::Write(_)) => {
                return Err(Error::Unexpected(format!(
                    "{} during the handshake",
                    m.name()
                )));
            }
            m => on_message(m),
        }
    }
    Ok(Negotiated {
        version,
        peer_version,
        features,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;
    use crate::wire::StoreDir;
    use crate::wire::testing::{block_on, decode_all, encode};

    fn offer(version: ProtocolVersion, nix: &str, trust: TrustLevel) -> ServerOffer {
        ServerOffer {
            version,
            features: FeatureSet::new(),
            nix_version: nix.into(),
            trust,
        }
    }

    /// Runs the server side over recorded client bytes; returns the result and what
    /// the server wrote.
    fn run_server(client: &[u8], offer: &ServerOffer) -> (Result<Negotiated>, Vec<u8>) {
        block_on(async {
            let mut r = WireReader::new(client, ProtocolVersion::LATEST, StoreDir::default());
            let mut w = WireWriter::new(ProtocolVersion::LATEST, StoreDir::default());
            let mut out = Vec::new();
            let res = server_handshake(&mut r, &mut w, &mut out, offer).await;
            (res, out)
        })
    }

    fn run_client(
        daemon: &[u8],
        version: ProtocolVersion,
        features: &FeatureSet,
    ) -> (Result<Negotiated>, Vec<u8>) {
        block_on(async {
            let mut r = WireReader::new(daemon, version, StoreDir::default());
            let mut w = WireWriter::new(version, StoreDir::default());
            let mut out = Vec::new();
            let res = client_handshake(&mut r, &mut w, &mut out, version, features, |_| {}).await;
            (res, out)
        })
    }

    // Spec §2.2: Nix 2.8 client and daemon.
    const C2D_2_8: &str = "63 78 69 6e 00 00 00 00  22 01 00 00 00 00 00 00
                           00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
    const D2C_2_8: &str = "6f 69 78 64 00 00 00 00  22 01 00 00 00 00 00 00
                           05 00 00 00 00 00 00 00  32 2e 38 2e 30 00 00 00
                           73 74 6c 61 00 00 00 00";

    // Spec §2.3: raw 1.38 client offering two features, Nix 2.34.8 daemon.
    const C2D_2_34: &str = "63 78 69 6e 00 00 00 00  26 01 00 00 00 00 00 00
                            02 00 00 00 00 00 00 00  0b 00 00 00 00 00 00 00
                            66 6f 6f 2d 66 65 61 74  75 72 65 00 00 00 00 00
                            03 00 00 00 00 00 00 00  62 61 72 00 00 00 00 00
                            00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
    const D2C_2_34: &str = "6f 69 78 64 00 00 00 00  26 01 00 00 00 00 00 00
                            00 00 00 00 00 00 00 00
                            06 00 00 00 00 00 00 00  32 2e 33 34 2e 38 00 00
                            01 00 00 00 00 00 00 00
                            73 74 6c 61 00 00 00 00";

    #[test]
    fn server_matches_2_8_capture() {
        let (res, out) = run_server(
            &hex(C2D_2_8),
            &offer(ProtocolVersion::new(1, 34), "2.8.0", TrustLevel::Trusted),
        );
        let n = res.unwrap();
        assert_eq!(n.version, ProtocolVersion::new(1, 34));
        assert_eq!(out, hex(D2C_2_8));
    }

    #[test]
    fn server_matches_2_34_capture() {
        let (res, out) = run_server(
            &hex(C2D_2_34),
            &offer(ProtocolVersion::LATEST, "2.34.8", TrustLevel::Trusted),
        );
        let n = res.unwrap();
        assert_eq!(n.version, ProtocolVersion::new(1, 38));
        assert!(n.features.is_empty());
        assert_eq!(out, hex(D2C_2_34));
    }

    #[test]
    fn server_agrees_on_minimum_and_intersects_features() {
        let mut o = offer(ProtocolVersion::LATEST, "nixnest", TrustLevel::NotTrusted);
        o.features = ["bar", "baz"].into_iter().collect();
        let (res, out) = run_server(&hex(C2D_2_34), &o);
        let n = res.unwrap();
        assert_eq!(n.features.iter().collect::<Vec<_>>(), ["bar"]);
        // the daemon still lists all of its own features
        assert_eq!(&out[16..24], &2u64.to_le_bytes());

        // a 1.34 client against our 1.38 daemon: 1.34 wins, no features, no trust byte
        let (res, out) = run_server(&hex(C2D_2_8), &o);
        assert_eq!(res.unwrap().version, ProtocolVersion::new(1, 34));
        assert_eq!(&out[8..16], &0x126u64.to_le_bytes());
        assert_eq!(out.len(), 16 + 16 + 8);
    }

    #[test]
    fn server_rejects_old_client_after_version() {
        let client = hex("63 78 69 6e 00 00 00 00  14 01 00 00 00 00 00 00");
        let (res, out) = run_server(
            &client,
            &offer(ProtocolVersion::LATEST, "x", TrustLevel::Unknown),
        );
        assert!(
            matches!(res, Err(Error::VersionTooOld { got, .. }) if got == ProtocolVersion::new(1, 20))
        );
        // magic + version were written, nothing else
        assert_eq!(out.len(), 16);
    }

    #[test]
    fn server_rejects_bad_magic_and_major() {
        let (res, out) = run_server(
            &hex("00 00 00 00 00 00 00 00"),
            &offer(ProtocolVersion::LATEST, "x", TrustLevel::Unknown),
        );
        assert!(matches!(res, Err(Error::BadMagic { .. })));
        assert!(out.is_empty());
        let client = hex("63 78 69 6e 00 00 00 00  26 02 00 00 00 00 00 00");
        let (res, _) = run_server(
            &client,
            &offer(ProtocolVersion::LATEST, "x", TrustLevel::Unknown),
        );
        assert!(matches!(res, Err(Error::UnsupportedMajor(2))));
    }

    #[test]
    fn server_reads_cpu_affinity_value() {
        let client = hex("63 78 69 6e 00 00 00 00  22 01 00 00 00 00 00 00
             01 00 00 00 00 00 00 00  03 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00");
        let (res, out) = run_server(
            &client,
            &offer(ProtocolVersion::new(1, 34), "2.8.0", TrustLevel::Unknown),
        );
        res.unwrap();
        assert_eq!(out, hex(D2C_2_8));
    }

    #[test]
    fn client_matches_2_8_capture() {
        let (res, out) = run_client(
            &hex(D2C_2_8),
            ProtocolVersion::new(1, 34),
            &FeatureSet::new(),
        );
        let n = res.unwrap();
        assert_eq!(n.info.daemon_nix_version.as_deref(), Some("2.8.0"));
        assert_eq!(n.info.trust, TrustLevel::Unknown);
        assert_eq!(out, hex(C2D_2_8));
    }

    #[test]
    fn client_against_2_34_daemon() {
        let ours: FeatureSet = ["foo-feature", "bar"].into_iter().collect();
        let (res, out) = run_client(&hex(D2C_2_34), ProtocolVersion::LATEST, &ours);
        let n = res.unwrap();
        assert_eq!(n.info.trust, TrustLevel::Trusted);
        assert_eq!(n.info.daemon_nix_version.as_deref(), Some("2.34.8"));
        assert!(n.features.is_empty());
        // Same words as the capture, except that we list features sorted.
        let expected = hex("63 78 69 6e 00 00 00 00  26 01 00 00 00 00 00 00
             02 00 00 00 00 00 00 00  03 00 00 00 00 00 00 00
             62 61 72 00 00 00 00 00  0b 00 00 00 00 00 00 00
             66 6f 6f 2d 66 65 61 74  75 72 65 00 00 00 00 00
             00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
        assert_eq!(out, expected);
    }

    #[test]
    fn client_reports_daemon_error() {
        let mut daemon = hex("6f 69 78 64 00 00 00 00  22 01 00 00 00 00 00 00
                              05 00 00 00 00 00 00 00  32 2e 38 2e 30 00 00 00");
        daemon.extend(encode(
            &StderrMessage::Error(crate::stderr::NixError::new("nope")),
            ProtocolVersion::new(1, 34),
        ));
        let (res, _) = run_client(&daemon, ProtocolVersion::new(1, 34), &FeatureSet::new());
        assert!(matches!(res, Err(Error::Remote(e)) if e.msg == "nope"));
    }

    #[test]
    fn truncation_at_every_offset_is_a_clean_error() {
        for (client, daemon, v) in [
            (C2D_2_8, D2C_2_8, ProtocolVersion::new(1, 34)),
            (C2D_2_34, D2C_2_34, ProtocolVersion::LATEST),
        ] {
            let client = hex(client);
            let daemon = hex(daemon);
            let o = offer(v, "2.34.8", TrustLevel::Trusted);
            for cut in 0..client.len() {
                let (res, _) = run_server(&client[..cut], &o);
                assert!(
                    matches!(res, Err(Error::Eof)),
                    "server, cut at {cut}: {res:?}"
                );
            }
            for cut in 0..daemon.len() {
                let (res, _) = run_client(&daemon[..cut], v, &FeatureSet::new());
                assert!(
                    matches!(res, Err(Error::Eof)),
                    "client, cut at {cut}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        for (client, daemon, v) in [
            (C2D_2_8, D2C_2_8, ProtocolVersion::new(1, 34)),
            (C2D_2_34, D2C_2_34, ProtocolVersion::LATEST),
        ] {
            let o = offer(v, "2.34.8", TrustLevel::Trusted);
            for (bytes, server) in [(hex(client), true), (hex(daemon), false)] {
                for i in 0..bytes.len() {
                    for flip in [0x01u8, 0x80, 0xff] {
                        let mut b = bytes.clone();
                        b[i] ^= flip;
                        if server {
                            let _ = run_server(&b, &o);
                        } else {
                            let _ = run_client(&b, v, &FeatureSet::new());
                        }
                    }
                }
            }
        }
    }

    fn vectors_dir() -> Option<std::path::PathBuf> {
        crate::testutil::vectors_dir("worker-protocol")
    }

    /// Upstream `handshake-to-client.bin`: what a daemon speaking 1.10 writes first.
    #[test]
    fn vector_handshake_to_client() {
        let Some(dir) = vectors_dir() else { return };
        let expected = std::fs::read(dir.join("handshake-to-client.bin")).unwrap();
        let (res, out) = run_server(
            &hex("63 78 69 6e 00 00 00 00"),
            &offer(ProtocolVersion::new(1, 10), "x", TrustLevel::Unknown),
        );
        assert!(matches!(res, Err(Error::Eof)));
        assert_eq!(out, expected);
    }

    /// Upstream `client-handshake-info_1_{30,33,35}.bin` (no JSON upstream; the values
    /// are those of upstream's test: "foo"/"bar" with trust flags).
    #[test]
    fn vector_client_handshake_info() {
        let Some(dir) = vectors_dir() else { return };
        let cases = [
            ("client-handshake-info_1_30.bin", 30, vec![]),
            (
                "client-handshake-info_1_33.bin",
                33,
                vec![
                    HandshakeInfo {
                        daemon_nix_version: Some("foo".into()),
                        trust: TrustLevel::Unknown,
                    },
                    HandshakeInfo {
                        daemon_nix_version: Some("bar".into()),
                        trust: TrustLevel::Unknown,
                    },
                ],
            ),
            (
                "client-handshake-info_1_35.bin",
                35,
                vec![
                    HandshakeInfo {
                        daemon_nix_version: Some("foo".into()),
                        trust: TrustLevel::NotTrusted,
                    },
                    HandshakeInfo {
                        daemon_nix_version: Some("bar".into()),
                        trust: TrustLevel::Trusted,
                    },
                ],
            ),
        ];
        for (file, minor, values) in cases {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let v = ProtocolVersion::new(1, minor);
            let mut expected = Vec::new();
            for info in &values {
                expected.extend(encode(info, v));
            }
            assert_eq!(bytes, expected, "{file}");
            // decode them back one after another
            block_on(async {
                let mut r = WireReader::new(&bytes[..], v, StoreDir::default());
                for info in &values {
                    assert_eq!(&HandshakeInfo::decode(&mut r).await.unwrap(), info);
                }
                assert!(r.get_ref().is_empty());
            });
        }
    }

    #[test]
    fn vector_optional_trusted_flag() {
        let Some(dir) = vectors_dir() else { return };
        let bytes = std::fs::read(dir.join("optional-trusted-flag.bin")).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("optional-trusted-flag.json")).unwrap())
                .unwrap();
        let values: Vec<TrustLevel> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|j| match j.as_bool() {
                None => TrustLevel::Unknown,
                Some(true) => TrustLevel::Trusted,
                Some(false) => TrustLevel::NotTrusted,
            })
            .collect();
        let mut w = crate::wire::testing::writer(ProtocolVersion::LATEST);
        for t in &values {
            t.encode(&mut w);
        }
        assert_eq!(w.take().to_vec(), bytes);
        for (i, t) in values.iter().enumerate() {
            assert_eq!(
                &decode_all::<TrustLevel>(&bytes[i * 8..i * 8 + 8], ProtocolVersion::LATEST)
                    .unwrap(),
                t
            );
        }
        assert!(decode_all::<TrustLevel>(&3u64.to_le_bytes(), ProtocolVersion::LATEST).is_err());
    }
}
