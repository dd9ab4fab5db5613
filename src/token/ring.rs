//! jsonwebtoken's signature checks done by ring, the crypto rustls already brings. Its ECDSA
//! P-256 and RSA verification are several times faster than the pure-Rust crates', and every
//! connect with a token pays one. Parsing, claims and signing stay jsonwebtoken's own (its
//! RustCrypto provider signs, for `POST /v1/tokens`).

use std::sync::OnceLock;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::{hmac, signature as ring_sig};

/// Makes this the process's provider; a second call changes nothing.
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER
        .get_or_init(|| CryptoProvider { verifier_factory: new_verifier, ..rust_crypto::DEFAULT_PROVIDER.clone() });
    let _ = provider.install_default();
}

/// One check of one token, with what ring needs of the key.
struct RingVerifier {
    alg: Algorithm,
    key: Key,
}

enum Key {
    Hmac(hmac::Key),
    /// An encoded public key: a P-256 point, PKCS#1 RSA, or Ed25519 bytes.
    Public(&'static dyn ring_sig::VerificationAlgorithm, Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    // The key must be of the token's family: no HMAC check with a public key's bytes.
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let public = |algorithm: &'static dyn ring_sig::VerificationAlgorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Key::Public(algorithm, bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { n, e } => Key::Rsa { n: n.clone(), e: e.clone() },
    };
    let key = match alg {
        Algorithm::HS256 => Key::Hmac(hmac::Key::new(hmac::HMAC_SHA256, key.try_get_as_bytes()?)),
        Algorithm::ES256 => public(&ring_sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::RS256 => public(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::EdDSA => public(&ring_sig::ED25519),
        // What the daemon does not load keys for, RustCrypto checks.
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    Ok(Box::new(RingVerifier { alg: *alg, key }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match &self.key {
            // Constant-time comparison of the recomputed tag.
            Key::Hmac(key) => hmac::verify(key, msg, signature).map_err(|_| ()),
            Key::Public(algorithm, bytes) => {
                ring_sig::UnparsedPublicKey::new(*algorithm, bytes).verify(msg, signature).map_err(|_| ())
            }
            Key::Rsa { n, e } => ring_sig::RsaPublicKeyComponents { n, e }
                .verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, msg, signature)
                .map_err(|_| ()),
        };
        checked.map_err(|()| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_keys_makes_ring_check_the_signatures() {
        crate::token::Tokens::load(&crate::config::Auth::default()).unwrap();
        let installed = CryptoProvider::try_get_default().expect("a provider");
        type Factory = fn(&Algorithm, &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error>;
        let ours: Factory = new_verifier;
        assert!(std::ptr::fn_addr_eq(installed.verifier_factory, ours), "ring verifies");
    }
}
