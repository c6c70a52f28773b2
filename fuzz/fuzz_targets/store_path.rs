//! Store paths, derived paths, content addresses and hashes parsed from arbitrary strings.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixnest_core::fuzzing::store_path(data));
