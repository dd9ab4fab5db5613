//! The request-head check: any bytes get 101 parameters or an HTTP error with a one-line reason.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wscast::upgrade::{check, Policy};

fuzz_target!(|head: &[u8]| {
    let policy = Policy { path: "/".into(), allowed_origins: vec!["https://a.example".into()], scheme: "ws" };
    if let Err(r) = check(head, &policy) {
        assert!(!r.reason.contains('\n'));
    }
});
