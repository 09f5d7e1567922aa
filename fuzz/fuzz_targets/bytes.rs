//! Any bytes as a BYTES tensor payload: framing checks, iteration and re-encoding agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_core::codec;

fuzz_target!(|data: &[u8]| {
    let counted = codec::count_bytes_elements(data).ok();
    let elements: Result<Vec<&[u8]>, _> = codec::bytes_elements(data).collect();
    assert_eq!(counted, elements.as_ref().ok().map(Vec::len));
    if let Ok(elements) = elements {
        assert_eq!(codec::encode_bytes_elements(&elements).as_ref(), data);
    }
});
