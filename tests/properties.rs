//! Property tests: any input to the query parser, the request-head check, the gzip inbound path
//! and the config loader gets a defined answer, never a panic, and within its bounds.

use std::path::Path;

use proptest::prelude::*;
use wscast::upgrade::{check, parse_query, Policy, MAX_KEY_LEN};

fn policy() -> Policy {
    Policy { path: "/".into(), allowed_origins: vec!["https://a.example".into()], scheme: "ws" }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn query_parser_answers_any_query(query in "[a-zA-Z_=&%+0-9\\x00-\\x7f\u{80}-\u{10ffff}]{0,400}") {
        match parse_query(&query) {
            Ok(p) => {
                prop_assert!(!p.key.is_empty() && p.key.len() <= MAX_KEY_LEN);
                prop_assert!(!p.key.chars().any(char::is_control));
            }
            Err(reason) => prop_assert!(!reason.is_empty() && !reason.contains('\n')),
        }
    }

    #[test]
    fn query_parser_round_trips_encoded_keys(
        key in "\\PC{1,64}".prop_filter("no control characters", |k| !k.chars().any(char::is_control)),
        gzip in any::<bool>(),
    ) {
        let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
        let q = format!("t=1&specialKey={encoded}&support_gzip={}", u8::from(gzip));
        let p = parse_query(&q).unwrap();
        prop_assert_eq!(&*p.key, key.as_str());
        prop_assert_eq!(p.gzip, gzip);
    }

    #[test]
    fn head_check_answers_any_bytes(head in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(r) = check(&head, &policy()) {
            prop_assert!(r.status.is_client_error() || r.status.is_server_error());
            prop_assert!(!r.reason.contains('\n'));
        }
    }

    #[test]
    fn inflate_is_bounded_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096), cap in 1usize..4096) {
        if let Ok(text) = wscast::gzip::inflate(&data, cap) {
            prop_assert!(text.len() <= cap);
        }
    }

    #[test]
    fn inflate_undoes_compress(text in "\\PC{0,2000}", level in 0u32..=9) {
        let gz = wscast::gzip::compress(text.as_bytes(), level);
        prop_assert_eq!(wscast::gzip::inflate(&gz, text.len().max(1)).unwrap(), text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any value for any key: the config loads, or the error is one line naming the key.
    #[test]
    fn config_errors_are_one_line_naming_the_key(
        key in prop::sample::select(vec![
            ("server", "listen"), ("server", "path"), ("server", "max_connections"),
            ("server", "handshake_timeout"), ("websocket", "max_message_size"),
            ("websocket", "send_queue"), ("websocket", "ping_interval"), ("websocket", "gzip_level"),
            ("log", "rotation"), ("log", "level"), ("shutdown", "drain_timeout"),
        ]),
        value in prop_oneof![
            "[ -~]{0,20}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("true".to_string()),
            Just("[]".to_string()),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wscast.toml");
        std::fs::write(&file, format!("[{}]\n{} = {value}\n", key.0, key.1)).unwrap();
        if let Err(e) = wscast::config::load(Some(Path::new(&file))) {
            let line = e.to_string();
            prop_assert!(!line.contains('\n'), "{}", line);
            prop_assert!(line.contains(&format!("{}.{}", key.0, key.1)) || line.contains("config file"), "{}", line);
        }
    }
}
