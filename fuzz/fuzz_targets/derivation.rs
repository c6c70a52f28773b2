//! `.drv` ATerm parsing, printing and hashing on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixnest_core::fuzzing::derivation(data));
