//! Fuzz the NAR parser: arbitrary bytes must never panic, hang or allocate without bound,
//! and whatever the parser accepts must re-encode to exactly the bytes it consumed (a
//! valid NAR has one encoding), whether file contents are read or skipped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nixnest_core::nar::{NarReader, copy_nar};

fuzz_target!(|data: &[u8]| {
    let mut copied = Vec::new();
    let copy = copy_nar(data, &mut copied);
    let skip = NarReader::new(data).skip_to_end();
    match (copy, skip) {
        (Ok(copied_size), Ok(skipped_size)) => {
            assert_eq!(copied_size, skipped_size);
            let consumed = data.get(..copied_size as usize).expect("consumed within input");
            assert_eq!(copied.as_slice(), consumed, "accepted NAR re-encodes to itself");
        }
        (Err(_), Err(_)) => {}
        (copy, skip) => panic!("verdicts differ: copy {copy:?}, skip {skip:?}"),
    }
});
