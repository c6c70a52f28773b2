//! Byte-exact tests over the spec's recorded exchanges (§2.2, §4.6, §5.2), and the
//! robustness checks on them: every truncation is a clean error, no flipped byte panics.

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::AsyncReadExt;

use nixnest_core::{
    ContentAddress, ContentAddressMethod, DerivedPath, Hash, HashAlgo, OutputsSpec, StoreDir,
    StorePath, ValidPathInfo,
};

use crate::error::{Error, Result};
use crate::framed::FramedReader;
use crate::request::{AddToStoreRequest, PayloadKind, Request};
use crate::response::Response;
use crate::stderr::{StderrMessage, Verbosity};
use crate::testutil::hex;
use crate::types::{
    BuildMode, BuildResult, BuildStatus, ClientSettings, DrvOutput, KeyedBuildResult, Realisation,
    UnkeyedValidPathInfo,
};
use crate::version::ProtocolVersion;
use crate::wire::testing::block_on;
use crate::wire::{WireReader, WireType, WireWriter};

/// A u64 word, independent of the codec under test.
fn u(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A padded string, independent of the codec under test.
fn s(b: &[u8]) -> Vec<u8> {
    let mut out = u(b.len() as u64);
    out.extend_from_slice(b);
    out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    out
}

fn path(p: &str) -> StorePath {
    StoreDir::default().parse_path(p).unwrap()
}

const V34: ProtocolVersion = ProtocolVersion::new(1, 34);

const SIMPLE: &str = "/nix/store/lki28hnf82223bamyh91pwka33l5bscf-simple";
const SIMPLE_DRV: &str = "/nix/store/ia7km6yky0f49hq2qn3xdisw8mq4s5sg-simple.drv";
const DEP: &str = "/nix/store/6iy8f8lf4ny7dqsn2d6rkrvxf4wxqbsp-dep";
const SIMPLE_NAR_HASH: &str = "6af7914a359948903c64b4d071e48a438c7b6c43cd0852e1137939bcc0e95e6b";

/// The spec elides the middle of the 99-byte signature; any 99-byte string stands in.
fn sig99() -> String {
    let sig = format!("test-key-1:v2fuQYED5F6U{}AA==", "x".repeat(99 - 27));
    assert_eq!(sig.len(), 99);
    sig
}

/// §2.2: SetOptions then QueryPathInfo, client → daemon, after the handshake.
fn c2d_2_2() -> Vec<u8> {
    [
        hex(
            "13 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00  04 00 00 00 00 00 00 00  04 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00
             01 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00
             0f 00 00 00 00 00 00 00  63 6f 6e 6e 65 63 74 2d  74 69 6d 65 6f 75 74 00
             01 00 00 00 00 00 00 00  35 00 00 00 00 00 00 00
             07 00 00 00 00 00 00 00  74 69 6d 65 6f 75 74 00
             01 00 00 00 00 00 00 00  37 00 00 00 00 00 00 00",
        ),
        hex("1a 00 00 00 00 00 00 00  32 00 00 00 00 00 00 00"),
        SIMPLE.as_bytes().to_vec(),
        vec![0; 6],
    ]
    .concat()
}

/// §2.2: the daemon's answers (STDERR_LAST; STDERR_LAST + path info).
fn d2c_2_2() -> Vec<u8> {
    [
        hex("73 74 6c 61 00 00 00 00"),
        hex("73 74 6c 61 00 00 00 00  01 00 00 00 00 00 00 00"),
        s(SIMPLE_DRV.as_bytes()),
        s(SIMPLE_NAR_HASH.as_bytes()),
        u(1),
        s(DEP.as_bytes()),
        hex(
            "c0 f6 06 6b 00 00 00 00  b0 03 00 00 00 00 00 00  00 00 00 00 00 00 00 00
             01 00 00 00 00 00 00 00",
        ),
        s(sig99().as_bytes()),
        u(0),
    ]
    .concat()
}

fn settings_2_2() -> ClientSettings {
    ClientSettings {
        keep_failed: true,
        keep_going: true,
        try_fallback: false,
        verbosity: Verbosity::Talkative,
        max_build_jobs: 4,
        max_silent_time: 0,
        use_build_hook: 1,
        verbose_build: Verbosity::Error,
        log_type: 0,
        print_build_trace: 0,
        build_cores: 2,
        use_substitutes: true,
        overrides: vec![
            ("connect-timeout".into(), "5".into()),
            ("timeout".into(), "7".into()),
        ],
    }
}

fn simple_info() -> UnkeyedValidPathInfo {
    UnkeyedValidPathInfo {
        deriver: Some(path(SIMPLE_DRV)),
        nar_hash: Hash::parse_any(SIMPLE_NAR_HASH, Some(HashAlgo::Sha256)).unwrap(),
        references: [path(DEP)].into(),
        registration_time: 0x6b06_f6c0,
        nar_size: 944,
        ultimate: false,
        sigs: [sig99()].into(),
        ca: None,
    }
}

/// Reads requests (and their payloads) until the bytes run out.
async fn read_requests(bytes: &[u8], v: ProtocolVersion) -> Result<Vec<Request>> {
    let mut r = WireReader::new(bytes, v, StoreDir::default());
    let mut out = Vec::new();
    while !r.get_ref().is_empty() {
        let req = Request::decode(&mut r).await?;
        match req.payload(v) {
            PayloadKind::None => {}
            PayloadKind::Framed => {
                FramedReader::new(&mut r).drain().await?;
            }
            // A flipped opcode can name an op with another payload; stop there.
            other => return Err(Error::invalid("test", format!("payload {other:?}"))),
        }
        out.push(req);
    }
    Ok(out)
}

/// Reads, for each request, stderr messages up to LAST and then the reply.
async fn read_replies(bytes: &[u8], v: ProtocolVersion, reqs: &[Request]) -> Result<Vec<Response>> {
    let mut r = WireReader::new(bytes, v, StoreDir::default());
    let mut out = Vec::new();
    for req in reqs {
        loop {
            match StderrMessage::decode(&mut r).await? {
                StderrMessage::Last => break,
                StderrMessage::Error(e) => return Err(Error::Remote(e)),
                _ => {}
            }
        }
        out.push(Response::decode(req, &mut r).await?);
    }
    if !r.get_ref().is_empty() {
        return Err(Error::invalid("test", "trailing bytes"));
    }
    Ok(out)
}

#[test]
fn set_options_and_query_path_info_capture() {
    let reqs = block_on(read_requests(&c2d_2_2(), V34)).unwrap();
    assert_eq!(
        reqs,
        [
            Request::SetOptions(settings_2_2()),
            Request::QueryPathInfo(path(SIMPLE))
        ]
    );
    let mut w = WireWriter::new(V34, StoreDir::default());
    for r in &reqs {
        r.encode(&mut w);
    }
    assert_eq!(w.take().to_vec(), c2d_2_2());

    let replies = block_on(read_replies(&d2c_2_2(), V34, &reqs)).unwrap();
    let expected = [
        Response::Unit,
        Response::QueryPathInfo(Some(Box::new(simple_info()))),
    ];
    assert_eq!(replies, expected);
    let mut w = WireWriter::new(V34, StoreDir::default());
    for reply in &expected {
        StderrMessage::Last.encode(&mut w);
        reply.encode(&mut w);
    }
    assert_eq!(w.take().to_vec(), d2c_2_2());
}

/// §4.6: `nix-store --add hello.txt`, Form B.
fn c2d_4_6() -> Vec<u8> {
    hex("07 00 00 00 00 00 00 00  09 00 00 00 00 00 00 00
         68 65 6c 6c 6f 2e 74 78  74 00 00 00 00 00 00 00
         0e 00 00 00 00 00 00 00  66 69 78 65 64 3a 72 3a  73 68 61 32 35 36 00 00
         00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
         80 00 00 00 00 00 00 00
         0d 00 00 00 00 00 00 00  6e 69 78 2d 61 72 63 68  69 76 65 2d 31 00 00 00
         01 00 00 00 00 00 00 00  28 00 00 00 00 00 00 00
         04 00 00 00 00 00 00 00  74 79 70 65 00 00 00 00
         07 00 00 00 00 00 00 00  72 65 67 75 6c 61 72 00
         08 00 00 00 00 00 00 00  63 6f 6e 74 65 6e 74 73
         0c 00 00 00 00 00 00 00  68 65 6c 6c 6f 20 77 6f  72 6c 64 0a 00 00 00 00
         01 00 00 00 00 00 00 00  29 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00")
}

const HELLO: &str = "/nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello.txt";
const HELLO_NAR_HASH: &str = "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603";
const HELLO_CA: &str = "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil";

fn d2c_4_6() -> Vec<u8> {
    [
        hex("73 74 6c 61 00 00 00 00"),
        s(HELLO.as_bytes()),
        u(0),
        s(HELLO_NAR_HASH.as_bytes()),
        u(0),
        hex("53 f6 06 6b 00 00 00 00  80 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"),
        s(HELLO_CA.as_bytes()),
    ]
    .concat()
}

#[test]
fn add_to_store_capture() {
    let v = V34;
    let bytes = c2d_4_6();
    let req = block_on(async {
        let mut r = WireReader::new(&bytes[..], v, StoreDir::default());
        let req = Request::decode(&mut r).await.unwrap();
        assert_eq!(req.payload(v), PayloadKind::Framed);
        let mut nar = Vec::new();
        FramedReader::new(&mut r)
            .read_to_end(&mut nar)
            .await
            .unwrap();
        assert_eq!(nar.len(), 128);
        assert_eq!(Hash::sha256(&nar).to_base16(), HELLO_NAR_HASH);
        assert!(r.get_ref().is_empty());
        req
    });
    assert_eq!(
        req,
        Request::AddToStore(AddToStoreRequest::ContentAddressed {
            name: "hello.txt".into(),
            method: ContentAddressMethod::NixArchive,
            algo: HashAlgo::Sha256,
            references: BTreeSet::new(),
            repair: false,
        })
    );
    let mut w = WireWriter::new(v, StoreDir::default());
    req.encode(&mut w);
    assert_eq!(&w.take()[..], &bytes[..9 * 8]);

    let info = ValidPathInfo {
        registration_time: 0x6b06_f653,
        nar_size: 128,
        ca: Some(ContentAddress::parse(HELLO_CA).unwrap()),
        ..ValidPathInfo::new(
            path(HELLO),
            Hash::parse_any(HELLO_NAR_HASH, Some(HashAlgo::Sha256)).unwrap(),
        )
    };
    let replies = block_on(read_replies(&d2c_4_6(), v, &[req])).unwrap();
    assert_eq!(replies, [Response::PathInfo(Box::new(info.clone()))]);
    let mut w = WireWriter::new(v, StoreDir::default());
    StderrMessage::Last.encode(&mut w);
    Response::PathInfo(Box::new(info)).encode(&mut w);
    assert_eq!(w.take().to_vec(), d2c_4_6());
}

/// §5.2: a 1.38 BuildPathsWithResults reply from Nix 2.34.
#[test]
fn keyed_build_result_capture() {
    let v = ProtocolVersion::LATEST;
    let drv = "/nix/store/6i28kfn6gd6nqplfnn48gq6bkkaybx0l-bd-test.drv";
    let id = "sha256:74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783!out";
    let json = format!(
        "{{\"dependentRealisations\":{{}},\"id\":\"{id}\",\"outPath\":\"pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test\",\"signatures\":[]}}"
    );
    assert_eq!(json.len(), 0xb4);
    let bytes = [
        hex("73 74 6c 61 00 00 00 00  01 00 00 00 00 00 00 00"),
        s(format!("{drv}!out").as_bytes()),
        [0u64; 8].iter().flat_map(|w| w.to_le_bytes()).collect(),
        u(1),
        s(id.as_bytes()),
        s(json.as_bytes()),
    ]
    .concat();
    let req = Request::BuildPathsWithResults {
        paths: vec![DerivedPath::Built {
            drv_path: path(drv),
            outputs: OutputsSpec::names(["out"]).unwrap(),
        }],
        mode: BuildMode::Normal,
    };
    let replies = block_on(read_replies(&bytes, v, std::slice::from_ref(&req))).unwrap();
    let real = Realisation {
        id: DrvOutput::parse(id).unwrap(),
        out_path: StorePath::from_base_name("pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test").unwrap(),
        signatures: BTreeSet::new(),
        dependent_realisations: BTreeMap::new(),
    };
    let expected = Response::KeyedBuildResults(vec![KeyedBuildResult {
        path: req_paths(&req)[0].clone(),
        result: BuildResult {
            built_outputs: [("out".to_string(), real)].into(),
            ..BuildResult::new(BuildStatus::Built)
        },
    }]);
    assert_eq!(replies, std::slice::from_ref(&expected));
    let mut w = WireWriter::new(v, StoreDir::default());
    StderrMessage::Last.encode(&mut w);
    expected.encode(&mut w);
    assert_eq!(w.take().to_vec(), bytes);
}

fn req_paths(req: &Request) -> Vec<DerivedPath> {
    match req {
        Request::BuildPathsWithResults { paths, .. } => paths.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn unknown_opcode_is_typed() {
    let bytes = u(999);
    let r = block_on(read_requests(&bytes, V34));
    assert!(matches!(r, Err(Error::UnknownOpcode(999))));
    assert_eq!(
        Error::UnknownOpcode(999).to_string(),
        "invalid operation 999"
    );
}

#[test]
fn path_outside_store_is_rejected() {
    let bytes = [u(1), s(b"/tmp/x")].concat();
    let r = block_on(read_requests(&bytes, V34));
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("'/tmp/x' is not in the Nix store"),
        "{e}"
    );
}

#[test]
fn truncated_exchanges_are_clean_errors() {
    let c2d = [c2d_2_2(), c2d_4_6()].concat();
    let full = block_on(read_requests(&c2d, V34)).unwrap();
    assert_eq!(full.len(), 3);
    for cut in 1..c2d.len() {
        // A cut on a request boundary is a valid shorter stream.
        match block_on(read_requests(&c2d[..cut], V34)) {
            Ok(reqs) => assert!(
                full.starts_with(&reqs) && reqs.len() < full.len(),
                "cut at {cut} decoded something else"
            ),
            Err(e) => assert!(matches!(e, Error::Eof), "cut at {cut}: {e}"),
        }
    }
    let d2c = [d2c_2_2(), d2c_4_6()].concat();
    block_on(read_replies(&d2c, V34, &full)).unwrap();
    for cut in 0..d2c.len() {
        let r = block_on(read_replies(&d2c[..cut], V34, &full));
        assert!(matches!(r, Err(Error::Eof)), "cut at {cut}: {r:?}");
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let c2d = [c2d_2_2(), c2d_4_6()].concat();
    let d2c = [d2c_2_2(), d2c_4_6()].concat();
    let full = block_on(read_requests(&c2d, V34)).unwrap();
    for i in 0..c2d.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = c2d.clone();
            b[i] ^= flip;
            let _ = block_on(read_requests(&b, V34));
        }
    }
    for i in 0..d2c.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = d2c.clone();
            b[i] ^= flip;
            let _ = block_on(read_replies(&b, V34, &full));
        }
    }
}
