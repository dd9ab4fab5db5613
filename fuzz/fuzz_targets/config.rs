//! The config parser: any TOML text loads or fails with one line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|toml: &str| {
    if let Err(e) = wscast::config::parse(toml) {
        assert!(!e.to_string().contains('\n'));
    }
});
