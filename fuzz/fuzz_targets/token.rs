//! The connection token check: any text as a token, and any bytes as the claims of a token
//! correctly signed with the configured secret, get a verdict and never a panic. Only a token
//! signed with the key and naming the key asked for is let in.
#![no_main]
use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use wscast::config::{Auth, AuthMode};
use wscast::token::Tokens;

const SECRET: &str = "0123456789abcdef0123456789abcdef-fuzz";

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wscast-fuzz-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fuzz.secret");
        std::fs::write(&path, SECRET).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Tokens::load(&Auth { mode: AuthMode::Jwt, keys: vec![path], ..Auth::default() }).unwrap()
    })
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        // Hostile text: it cannot carry a valid signature.
        if let Ok(token) = std::str::from_utf8(rest) {
            assert!(tokens().verify(token, "fuzz").is_err());
        }
        return;
    }
    // Signed claims: the claim checks see whatever the bytes hold.
    let message = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(rest));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    let token = format!("{message}.{signature}");
    if tokens().verify(&token, "fuzz").is_ok() {
        let claims: serde_json::Value = serde_json::from_slice(rest).expect("accepted claims are JSON");
        assert_eq!(claims["sub"], "fuzz", "accepted for another key: {claims}");
        assert!(claims["exp"].as_u64().is_some(), "accepted without a whole-number exp: {claims}");
    }
});
