//! Connection tokens for the connect benchmark, signed before the clock starts so the client's
//! signing never limits the rate measured.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Signs one token for each key `t0`..`t{n-1}`, valid for an hour.
pub fn sign(file: &Path, alg: &str, n: usize) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (alg, key) = match alg {
        "HS256" => (Algorithm::HS256, EncodingKey::from_secret(bytes.trim_ascii_end())),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&bytes)),
        other => return Err(format!("--alg {other}: HS256 or ES256")),
    };
    let key = key.map_err(|e| format!("{}: {e}", file.display()))?;
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() + 3600;
    (0..n)
        .map(|i| {
            let claims = serde_json::json!({ "sub": format!("t{i}"), "exp": exp });
            jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(|e| e.to_string())
        })
        .collect()
}
