//! The gzip inbound path: any bytes inflate to at most the cap, or are refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = wscast::gzip::inflate(data, 64 * 1024) {
        assert!(text.len() <= 64 * 1024);
    }
});
