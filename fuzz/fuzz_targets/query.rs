//! The query parser: any string gets a defined answer within the key bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    if let Ok(p) = wscast::upgrade::parse_query(query) {
        assert!(!p.key.is_empty() && p.key.len() <= wscast::upgrade::MAX_KEY_LEN);
    }
});
