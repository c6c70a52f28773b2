//! Fuzz target: decoding a worker-protocol request (and its payload) from arbitrary
//! bytes must end in a value or a typed error — never a panic, a hang, or an
//! allocation larger than the input justifies — and whatever decodes must re-encode to
//! something that decodes to the same value.
//!
//! Input: byte 0 picks the negotiated version (1.21 + n % 18) and, from bit 7, the 1.38
//! feature set; the rest is the client's byte stream after the handshake.
//!
//! Built by cargo-fuzz (`--cfg fuzzing`); the same file is compiled as an ordinary
//! module by `protocol/tests/fuzz_request_decode.rs`, which runs the corpus.

#![cfg_attr(fuzzing, no_main)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use nixnest_core::StoreDir;
use nixnest_protocol::framed::FramedReader;
use nixnest_protocol::request::{PayloadKind, Request};
use nixnest_protocol::version::{FeatureSet, ProtocolVersion, feature};
use nixnest_protocol::wire::{WireReader, WireWriter};

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(data);
});

/// Readers over a byte slice never return `Pending`, so polling to completion needs no
/// runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn context(selector: u8) -> (ProtocolVersion, FeatureSet) {
    let version = ProtocolVersion::new(1, 21 + (selector & 0x7f) % 18);
    let mut features = FeatureSet::new();
    if selector & 0x80 != 0 {
        for f in [
            feature::REALISATION_WITH_PATH_NOT_HASH,
            feature::DELETE_DEAD_SPECIFIC_REFERRERS,
            feature::ADD_TO_STORE_SCANNING,
            feature::SUBMIT_OUTPUT,
        ] {
            features.insert(f);
        }
    }
    (version, features)
}

fn decode_all(bytes: &[u8], version: ProtocolVersion, features: &FeatureSet) -> Vec<Request> {
    block_on(async {
        let mut r = WireReader::new(bytes, version, StoreDir::default());
        r.set_features(features.clone());
        let mut out = Vec::new();
        while let Ok(req) = Request::decode(&mut r).await {
            let payload_ok = match req.payload(version) {
                PayloadKind::None | PayloadKind::StderrRead => true,
                PayloadKind::Framed => FramedReader::new(&mut r).drain().await.is_ok(),
                PayloadKind::InlineNar => {
                    nixnest_protocol::nar::copy_nar(&mut r, &mut tokio::io::sink())
                        .await
                        .is_ok()
                }
            };
            out.push(req);
            if !payload_ok {
                break;
            }
        }
        out
    })
}

/// Returns how many requests decoded.
pub fn run(data: &[u8]) -> usize {
    let Some((&selector, stream)) = data.split_first() else {
        return 0;
    };
    let (version, features) = context(selector);
    let reqs = decode_all(stream, version, &features);
    for req in &reqs {
        let mut w = WireWriter::new(version, StoreDir::default());
        w.set_features(features.clone());
        req.encode(&mut w);
        let again = block_on(async {
            let bytes = w.take();
            let mut r = WireReader::new(&bytes[..], version, StoreDir::default());
            r.set_features(features.clone());
            Request::decode(&mut r).await.ok()
        });
        assert_eq!(
            again.as_ref(),
            Some(req),
            "re-encoded request decodes differently"
        );
    }
    reqs.len()
}
