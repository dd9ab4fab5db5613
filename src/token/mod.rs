//! Connection tokens (JWT, RFC 7519): the keys of `auth.keys`, loaded and checked from their
//! files, the check a client's token must pass before its upgrade, and the minting of tokens
//! for backends without a JWT library.
//!
//! Parsing, signatures and claim checks are jsonwebtoken's; what is ours is which key may verify
//! which token (a `kid` names one key, and its algorithm must fit that key), and the one-line
//! reasons a refused client is told. No I/O once loaded: the check runs inside the handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::config::{Auth, AuthMode};

mod ring;

/// Longest token looked at; a longer one is refused before anything is decoded.
pub const MAX_TOKEN: usize = 4096;
/// Shortest HMAC secret accepted: RFC 7518 3.2 asks for a key as long as the hash (256 bits).
const MIN_SECRET: usize = 32;
/// Shortest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Longest lifetime `POST /v1/tokens` hands out.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A key file that cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
#[error("auth.keys = {path:?} is not valid: {problem}")]
pub struct KeyError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub problem: String,
}

fn key_error(path: &Path, problem: impl Into<String>) -> KeyError {
    KeyError { path: path.into(), problem: problem.into() }
}

/// Why a token was refused: each one has a one-line reason for the client's 401 and a label
/// for `wscast_tokens_rejected_total`. None of them holds any part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `token=` and no `Authorization: Bearer`.
    Missing,
    /// Over [`MAX_TOKEN`] bytes.
    TooLarge,
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// `alg` is `none` or one this daemon does not verify.
    Algorithm,
    /// `kid` names no configured key.
    UnknownKeyId,
    /// `alg` does not fit the key `kid` names, or no key has that algorithm.
    WrongAlgorithm,
    /// No key verifies the signature.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// No `exp` claim.
    NoExpiry,
    /// No `sub` claim.
    NoSubject,
    /// `sub` is not the `specialKey` asked for.
    OtherKey,
    /// `aud` is missing or does not name `auth.audience`.
    Audience,
    /// `iss` is missing or is not `auth.issuer`.
    Issuer,
}

impl Refusal {
    /// The one-line reason sent with the 401.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing token: add token=... to the URL, or an Authorization: Bearer header",
            Refusal::TooLarge => "token too large (over 4096 bytes)",
            Refusal::Malformed => "malformed token",
            Refusal::Algorithm => "token algorithm not accepted",
            Refusal::UnknownKeyId => "unknown key id",
            Refusal::WrongAlgorithm => "token algorithm does not fit the key",
            Refusal::BadSignature => "bad signature",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::NoExpiry => "token has no exp",
            Refusal::NoSubject => "token has no sub",
            Refusal::OtherKey => "token is for another key",
            Refusal::Audience => "token is for another audience",
            Refusal::Issuer => "token is from another issuer",
        }
    }

    /// The `reason` label of `wscast_tokens_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKeyId => "unknown_kid",
            Refusal::WrongAlgorithm => "wrong_algorithm",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::NoExpiry => "no_exp",
            Refusal::NoSubject => "no_sub",
            Refusal::OtherKey => "other_key",
            Refusal::Audience => "audience",
            Refusal::Issuer => "issuer",
        }
    }
}

/// One verification key.
struct Key {
    /// The file name without its extension, or the JWK's own `kid`.
    kid: Option<String>,
    /// The one algorithm this key verifies.
    alg: Algorithm,
    decoding: DecodingKey,
    /// For an HMAC secret file: the same secret, to mint tokens with.
    signing: Option<EncodingKey>,
}

/// The loaded `[auth]` section: whether tokens are required, the keys, and the claim rules.
pub struct Tokens {
    required: bool,
    keys: Vec<Key>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
    expire_connections: bool,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids and algorithms only: never key material.
        let keys: Vec<_> = self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        f.debug_struct("Tokens").field("required", &self.required).field("keys", &keys).finish_non_exhaustive()
    }
}

/// What a valid token says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires: u64,
}

/// A token made by [`Tokens::mint`].
#[derive(Debug)]
pub struct Minted {
    /// The JWT.
    pub token: String,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires: u64,
    /// The key id it names, the secret file's name.
    pub kid: Option<String>,
}

/// Why a token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No HMAC secret file is configured.
    #[error("no HMAC secret is configured: list a secret file in auth.keys to mint tokens")]
    NoSecret,
    /// jsonwebtoken could not sign.
    #[error("signing failed: {0}")]
    Signing(String),
}

#[derive(Deserialize)]
struct Claims {
    // Checked by jsonwebtoken (required, a whole number) before it is read here.
    #[serde(default)]
    exp: serde_json::Value,
}

#[derive(Serialize)]
struct NewClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

impl Default for Tokens {
    /// No keys, nothing required: `auth.mode = "none"` without key files.
    fn default() -> Self {
        Self { required: false, keys: Vec::new(), audience: None, issuer: None, leeway: 30, expire_connections: false }
    }
}

impl Tokens {
    /// Reads and checks every key file of `auth`. Keys are loaded even with `mode = "none"`,
    /// so tokens can be minted (and clients moved to them) before they are required.
    pub fn load(auth: &Auth) -> Result<Self, KeyError> {
        ring::install();
        let mut keys = Vec::new();
        for path in &auth.keys {
            for key in load_file(path)? {
                if let Some(kid) = &key.kid {
                    if keys.iter().any(|k: &Key| k.kid.as_ref() == Some(kid)) {
                        return Err(key_error(path, format!("key id {kid:?} is given by another key too")));
                    }
                }
                keys.push(key);
            }
        }
        let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Self {
            required: auth.mode == AuthMode::Jwt,
            keys,
            audience: set(&auth.audience),
            issuer: set(&auth.issuer),
            leeway: auth.leeway.as_secs(),
            expire_connections: auth.expire_connections,
        })
    }

    /// True when every connection needs a valid token.
    pub fn required(&self) -> bool {
        self.required
    }

    /// True when open connections are closed (4003) at their token's `exp`.
    pub fn expire_connections(&self) -> bool {
        self.required && self.expire_connections
    }

    /// Keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token` for a client asking for `key`.
    pub fn verify(&self, token: &str, key: &str) -> Result<Verified, Refusal> {
        if token.len() > MAX_TOKEN {
            return Err(Refusal::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let named = self.keys.iter().find(|k| k.kid.as_ref() == Some(kid)).ok_or(Refusal::UnknownKeyId)?;
                vec![named]
            }
            // Without a kid every key of the token's algorithm may verify it (rotation: the old
            // and the new key are both listed for a while).
            None => self.keys.iter().filter(|k| k.alg == header.alg).collect(),
        };
        if candidates.iter().all(|k| k.alg != header.alg) {
            return Err(Refusal::WrongAlgorithm);
        }
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(token, &candidate.decoding, &self.validation(candidate.alg, key)) {
                Ok(data) => return Ok(Verified { expires: data.claims.exp.as_u64().unwrap_or(0) }),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(refusal(e.kind())),
            }
        }
        Err(Refusal::BadSignature)
    }

    /// The claim rules for one key and the `specialKey` asked for.
    fn validation(&self, alg: Algorithm, key: &str) -> Validation {
        let mut v = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.sub = Some(key.to_string());
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// A token for `key` that expires in `ttl`, signed with the first HMAC secret file of
    /// `auth.keys` (its `kid` is the file's name), carrying `aud` and `iss` when configured.
    pub fn mint(&self, key: &str, ttl: Duration) -> Result<Minted, MintError> {
        let signer = self.keys.iter().find(|k| k.signing.is_some()).ok_or(MintError::NoSecret)?;
        let now = unix_now();
        let expires = now + ttl.as_secs();
        let claims =
            NewClaims { sub: key, exp: expires, iat: now, aud: self.audience.as_deref(), iss: self.issuer.as_deref() };
        let mut header = Header::new(signer.alg);
        header.kid = signer.kid.clone();
        let encoding = signer.signing.as_ref().ok_or(MintError::NoSecret)?;
        let token = jsonwebtoken::encode(&header, &claims, encoding).map_err(|e| MintError::Signing(e.to_string()))?;
        Ok(Minted { token, expires, kid: signer.kid.clone() })
    }
}

/// Seconds since the Unix epoch, the clock tokens are written in.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// jsonwebtoken's error as the reason a client is told.
fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidSubject => Refusal::OtherKey,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refusal::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => Refusal::NoExpiry,
            "sub" => Refusal::NoSubject,
            "aud" => Refusal::Audience,
            "iss" => Refusal::Issuer,
            _ => Refusal::Malformed,
        },
        // serde names an `alg` outside jsonwebtoken's list (`none` among them) an unknown variant.
        ErrorKind::Json(e) if e.to_string().starts_with("unknown variant") => Refusal::Algorithm,
        ErrorKind::UnsupportedAlgorithm | ErrorKind::InvalidAlgorithmName => Refusal::Algorithm,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_) => Refusal::Malformed,
        // A signature of the wrong length or shape for the key.
        _ => Refusal::BadSignature,
    }
}

/// The keys of one file: a JWKS (`.json`), a PEM public key, or else an HMAC secret.
fn load_file(path: &Path) -> Result<Vec<Key>, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| key_error(path, e.to_string()))?;
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        return load_jwks(path, &bytes);
    }
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return load_pem(path, &bytes, kid).map(|k| vec![k]);
    }
    load_secret(path, &bytes, kid).map(|k| vec![k])
}

/// An HMAC (HS256) secret: the file's bytes without trailing white space (`openssl rand -hex
/// 32 > file` ends in a newline).
fn load_secret(path: &Path, bytes: &[u8], kid: Option<String>) -> Result<Key, KeyError> {
    not_world_readable(path)?;
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_SECRET {
        return Err(key_error(
            path,
            format!(
                "an HMAC secret must be at least {MIN_SECRET} bytes, this one is {} (make one with: openssl rand -hex 32)",
                secret.len()
            ),
        ));
    }
    let decoding = DecodingKey::from_secret(secret).map_err(|e| key_error(path, e.to_string()))?;
    let signing = EncodingKey::from_secret(secret).map_err(|e| key_error(path, e.to_string()))?;
    Ok(Key { kid, alg: Algorithm::HS256, decoding, signing: Some(signing) })
}

/// A secret readable by every local user is no secret.
fn not_world_readable(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| key_error(path, e.to_string()))?.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(key_error(
            path,
            format!("holds a secret but is readable by everyone (mode {:04o}): chmod o-r it", mode & 0o7777),
        ));
    }
    Ok(())
}

/// A PEM public key: RSA (RS256, 2048 bits or more), EC P-256 (ES256) or Ed25519 (EdDSA).
fn load_pem(path: &Path, bytes: &[u8], kid: Option<String>) -> Result<Key, KeyError> {
    let der =
        match SubjectPublicKeyInfoDer::from_pem_slice(bytes) {
            Ok(der) => der,
            Err(_) if PrivateKeyDer::from_pem_slice(bytes).is_ok() => return Err(key_error(
                path,
                "holds a private key; give wscast the public key only (openssl pkey -in KEY -pubout -out PUBLIC.pem)",
            )),
            Err(_) => return Err(key_error(path, "expected a PEM public key (-----BEGIN PUBLIC KEY-----)")),
        };
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
        .map_err(|e| key_error(path, format!("the public key does not parse: {e}")))?;
    let oid = &spki.algorithm.algorithm;
    let (alg, decoding) = if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0);
        if bits < MIN_RSA_BITS {
            return Err(key_error(
                path,
                format!("an RSA key must have at least {MIN_RSA_BITS} bits, this one has {bits}"),
            ));
        }
        (Algorithm::RS256, DecodingKey::from_rsa_pem(bytes))
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(key_error(path, "an EC key must be on curve P-256 (ES256)"));
        }
        (Algorithm::ES256, DecodingKey::from_ec_pem(bytes))
    } else if *oid == OID_SIG_ED25519 {
        (Algorithm::EdDSA, DecodingKey::from_ed_pem(bytes))
    } else {
        return Err(key_error(
            path,
            format!("a public key of type {oid} is not supported (RSA, EC P-256, Ed25519 are)"),
        ));
    };
    let decoding = decoding.map_err(|e| key_error(path, format!("the public key does not load: {e}")))?;
    Ok(Key { kid, alg, decoding, signing: None })
}

/// A JWK Set, as identity providers publish it: each signing key with its own `kid`.
fn load_jwks(path: &Path, bytes: &[u8]) -> Result<Vec<Key>, KeyError> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| key_error(path, format!("not a JWK Set ({{\"keys\": [...]}}): {e}")))?;
    let signing = set.keys.iter().filter(|jwk| jwk.common.public_key_use != Some(PublicKeyUse::Encryption));
    let mut keys = Vec::new();
    for (i, jwk) in signing.enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        let alg = jwk_algorithm(jwk).map_err(|p| key_error(path, format!("key {name}: {p}")))?;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            not_world_readable(path)?;
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| key_error(path, format!("key {name}: {e}")))?;
        if decoding.family() != alg.family() {
            return Err(key_error(path, format!("key {name}: its alg {alg:?} does not fit its key type")));
        }
        keys.push(Key { kid: jwk.common.key_id.clone(), alg, decoding, signing: None });
    }
    if keys.is_empty() {
        return Err(key_error(path, "holds no signing key"));
    }
    Ok(keys)
}

/// The algorithm a JWK verifies: its `alg`, or the usual one for its key type.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::try_from(alg).map_err(|_| format!("alg {alg:?} is not a signature algorithm"));
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Ok(Algorithm::ES256),
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Ok(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Ok(Algorithm::HS256),
        _ => Err("a key type wscast does not verify (RSA, EC P-256, Ed25519 and oct are)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn auth(keys: Vec<PathBuf>) -> Auth {
        Auth { mode: AuthMode::Jwt, keys, ..Auth::default() }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_tokens_verify_for_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let tokens =
            Tokens::load(&auth(vec![write(dir.path(), "current.secret", &format!("{SECRET}\n"), 0o600)])).unwrap();
        let minted = tokens.mint("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(minted.kid.as_deref(), Some("current"), "the file name is the kid");
        assert_eq!(tokens.verify(&minted.token, "alice"), Ok(Verified { expires: minted.expires }));
        assert_eq!(tokens.verify(&minted.token, "bob"), Err(Refusal::OtherKey));
        assert_eq!(tokens.verify(&"x".repeat(MAX_TOKEN + 1), "alice"), Err(Refusal::TooLarge));
        assert_eq!(tokens.verify("a.b", "alice"), Err(Refusal::Malformed));
        // The secret is the file without its newline: a file without one gives the same key.
        let bare = Tokens::load(&auth(vec![write(dir.path(), "current2.secret", SECRET, 0o600)])).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("current2".into());
        let claims = NewClaims { sub: "alice", exp: unix_now() + 60, iat: 0, aud: None, iss: None };
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(bare.verify(&token, "alice").is_ok());
        assert_eq!(tokens.verify(&token, "alice"), Err(Refusal::UnknownKeyId));
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "s", SECRET, 0o600);
        let open = Tokens::load(&auth(vec![file.clone()])).unwrap();
        let strict =
            Tokens::load(&Auth { audience: "chat".into(), issuer: "backend".into(), ..auth(vec![file]) }).unwrap();
        let minted = strict.mint("alice", Duration::from_secs(60)).unwrap();
        assert!(strict.verify(&minted.token, "alice").is_ok(), "minted tokens carry aud and iss");
        assert!(open.verify(&minted.token, "alice").is_ok(), "aud and iss not configured: not checked");
        let plain = open.mint("alice", Duration::from_secs(60)).unwrap();
        let file = dir.path().join("s");
        let audience = Tokens::load(&Auth { audience: "chat".into(), ..auth(vec![file.clone()]) }).unwrap();
        let issuer = Tokens::load(&Auth { issuer: "backend".into(), ..auth(vec![file]) }).unwrap();
        assert_eq!(audience.verify(&plain.token, "alice"), Err(Refusal::Audience));
        assert_eq!(issuer.verify(&plain.token, "alice"), Err(Refusal::Issuer));
    }

    #[test]
    fn key_files_that_cannot_be_used_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let oct = r#"{"keys": [{"kty": "oct", "kid": "o", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
        let cases = [
            (write(d, "open.secret", SECRET, 0o644), "readable by everyone (mode 0644)"),
            (write(d, "short.secret", "abc\n", 0o600), "at least 32 bytes, this one is 3"),
            (write(d, "open-oct.json", oct, 0o644), "readable by everyone"),
            (write(d, "garbage.json", "{", 0o644), "not a JWK Set"),
            (write(d, "empty.json", r#"{"keys": []}"#, 0o644), "holds no signing key"),
            (
                write(d, "bad.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 0o644),
                "does not parse",
            ),
            (
                write(d, "cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 0o644),
                "BEGIN PUBLIC KEY",
            ),
        ];
        for (path, problem) in cases {
            let e = Tokens::load(&auth(vec![path.clone()])).unwrap_err().to_string();
            assert!(e.starts_with(&format!("auth.keys = {path:?} is not valid: ")), "{e}");
            assert!(e.contains(problem), "{e} lacks {problem:?}");
        }
        let oct_ok = write(d, "oct.json", oct, 0o600);
        let tokens = Tokens::load(&auth(vec![oct_ok.clone()])).unwrap();
        assert_eq!(tokens.key_count(), 1);
        let e = Tokens::load(&auth(vec![oct_ok, write(d, "o.secret", SECRET, 0o600)])).unwrap_err().to_string();
        assert!(e.contains("key id \"o\" is given by another key too"), "{e}");
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::load(&auth(vec![write(dir.path(), "s", SECRET, 0o600)])).unwrap();
        let b64 = |s: &str| data_encoding::BASE64URL_NOPAD.encode(s.as_bytes());
        let payload = b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, unix_now() + 60));
        for alg in ["none", "None", "HS1024"] {
            let token = format!("{}.{payload}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)));
            assert_eq!(tokens.verify(&token, "alice"), Err(Refusal::Algorithm), "{alg}");
        }
        // A known algorithm that no configured key has.
        let token = format!("{}.{payload}.c2ln", b64(r#"{"alg":"RS256"}"#));
        assert_eq!(tokens.verify(&token, "alice"), Err(Refusal::WrongAlgorithm));
    }
}
