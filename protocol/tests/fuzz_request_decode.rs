//! Compiles the `request_decode` fuzz target as ordinary Rust (only stable Rust is
//! installed here, so cargo-fuzz cannot run) and feeds it its seed corpus plus
//! pseudo-random mutations of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// `cfg(fuzzing)` is set by cargo-fuzz only.
#![allow(unexpected_cfgs)]

#[path = "../../fuzz/fuzz_targets/request_decode.rs"]
mod request_decode;

fn corpus() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/request_decode");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty());
    seeds
}

#[test]
fn seed_corpus_decodes() {
    for seed in corpus() {
        assert!(
            request_decode::run(&seed) >= 1,
            "seed decodes to no request"
        );
    }
}

#[test]
fn mutated_corpus_never_panics() {
    // xorshift: deterministic, no dependency
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in corpus() {
        for _ in 0..300 {
            let mut input = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[i] ^= 1 << (next() % 8),
                    1 => input[i] = 0xff,
                    _ => input.truncate(i.max(1)),
                }
            }
            request_decode::run(&input);
        }
    }
}
