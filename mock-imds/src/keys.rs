//! Signing material of the mock: the RSA key that signs managed-identity access tokens (RS256 JWTs), the JWKS
//! and OpenID discovery document that publish it, and the certificate chain (root CA → intermediate →
//! leaf `*.metadata.azure.com`) whose leaf signs the attested document (PKCS#7, built by the crate-private `pkcs7` module).
//!
//! This module owns key generation and every cryptographic output of the mock; it knows nothing about HTTP,
//! routes, identities or claims (callers pass the claims they want signed) and must not grow such knowledge.
//!
//! All keys are RSA-2048 like Azure's. With a seed every key is derived from a ChaCha20 stream of that seed,
//! so the same seed gives the same keys, the same `kid` and the same JWKS; without one the OS RNG is used.
//! Certificates carry fixed validity windows so that a seeded chain is byte-for-byte reproducible too.
//!
//! RSA key generation is the slow part of starting a mock (≈0.3–0.7 s per RSA-2048 key with dependencies at
//! opt-level 2 on an idle core, several times that on a loaded machine), so: the keys of a set are generated
//! on parallel threads; seeded sets are cached for the life of the process (they are deterministic, so
//! caching changes nothing observable but start-up time); and unseeded sets share one process-wide attested
//! chain — as every Azure VM shares the `metadata.azure.com` chain — while each gets a fresh token key, so
//! two unseeded mocks still reject each other's tokens.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header};
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Size of every RSA key the mock generates (Azure's token and attestation keys are RSA-2048).
const RSA_BITS: usize = 2048;

/// Errors while generating keys or producing signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// RSA key generation or an RSA operation failed.
    #[error("RSA key operation failed ({what}): {source}")]
    Rsa {
        /// Which key or step.
        what: &'static str,
        /// The underlying error.
        source: rsa::Error,
    },
    /// Serialising a key to PKCS#1/PKCS#8 failed.
    #[error("could not encode the {what} key: {message}")]
    KeyEncoding {
        /// Which key.
        what: &'static str,
        /// Text of the underlying error.
        message: String,
    },
    /// rcgen refused a key or a certificate.
    #[error("certificate generation failed ({what}): {source}")]
    Certificate {
        /// Which certificate or key import.
        what: &'static str,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// jsonwebtoken could not serialise or sign the token.
    #[error("could not sign the JWT: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// The claims (or the JWT header) could not be serialised.
    #[error("could not serialise the JWT claims: {0}")]
    Claims(#[from] serde_json::Error),
    /// aws-lc refused the token signing key.
    #[error("the token signing key was rejected: {0}")]
    KeyRejected(#[from] aws_lc_rs::error::KeyRejected),
    /// The RSA signature itself failed.
    #[error("RSA signing failed: {0}")]
    Sign(#[from] aws_lc_rs::error::Unspecified),
    /// Building the PKCS#7 SignedData of the attested document failed.
    #[error("could not build the PKCS#7 attested signature: {0}")]
    Pkcs7(#[from] crate::pkcs7::Pkcs7Error),
    /// A key-generation thread panicked (never expected; reported rather than propagated).
    #[error("key generation thread panicked")]
    ThreadPanicked,
}

/// The mock's signing keys. Cheap to clone (the material sits behind an `Arc`); `Debug` prints only public
/// identifiers, never key material.
#[derive(Clone)]
pub struct SigningKeys {
    inner: Arc<Inner>,
}

struct Inner {
    /// RFC 7638 JWK thumbprint of the token key.
    kid: String,
    /// base64url SHA-1 of the token key's self-signed certificate (Entra publishes `x5t` for every key).
    x5t: String,
    /// DER of that self-signed certificate (published as `x5c`).
    token_cert_der: Vec<u8>,
    token_public: RsaPublicKey,
    /// The token key, parsed once for aws-lc (native RSA: several times the pure-Rust `rsa` crate's rate,
    /// and parsing per signature, as jsonwebtoken's aws-lc backend does, would cost more than the signature).
    token_key: RsaKeyPair,
    /// base64url of the JWT header (`typ`, `alg`, `kid`, `x5t`): the same for every token of this key.
    jwt_header_b64: String,
    attested: Arc<AttestedChain>,
}

/// The attested-document chain: the leaf signs, root and intermediate are published for verification.
pub(crate) struct AttestedChain {
    pub(crate) leaf_key: RsaPrivateKey,
    pub(crate) leaf_der: Vec<u8>,
    pub(crate) intermediate_der: Vec<u8>,
    pub(crate) root_der: Vec<u8>,
    chain_pem: String,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("kid", &self.inner.kid)
            .field("x5t", &self.inner.x5t)
            .field(
                "attested_leaf",
                &"CN=metadata.azure.com, SAN *.metadata.azure.com",
            )
            .finish_non_exhaustive()
    }
}

/// Which RNG a key is drawn from. Each key of a seeded set gets its own ChaCha20 stream so adding a key
/// later never changes the others.
#[derive(Clone, Copy)]
enum KeySource {
    Os,
    Seeded { seed: u64, stream: u64 },
}

fn generate_rsa(source: KeySource, what: &'static str) -> Result<RsaPrivateKey, KeyError> {
    let result = match source {
        KeySource::Os => RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS),
        KeySource::Seeded { seed, stream } => {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            rng.set_stream(stream);
            RsaPrivateKey::new(&mut rng, RSA_BITS)
        }
    };
    result.map_err(|source| KeyError::Rsa { what, source })
}

/// Generates RSA keys on parallel threads: RSA prime search dominates start-up time and the machine
/// usually has more than one core.
fn generate_keys<const N: usize>(
    specs: [(KeySource, &'static str); N],
) -> Result<[RsaPrivateKey; N], KeyError> {
    let results: Vec<Result<RsaPrivateKey, KeyError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|&(source, name)| scope.spawn(move || generate_rsa(source, name)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(KeyError::ThreadPanicked)))
            .collect()
    });
    let keys = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    keys.try_into().map_err(|_| KeyError::ThreadPanicked)
}

/// ChaCha20 stream of each key of a seeded set. Stream 0 is left unused so streams read as "key #n"; the
/// numbers are part of the seed's meaning and must never change.
const TOKEN_STREAM: u64 = 1;
const ROOT_STREAM: u64 = 2;
const INTERMEDIATE_STREAM: u64 = 3;
const LEAF_STREAM: u64 = 4;

/// The attested chain shared by every unseeded key set of this process, generated on first use.
/// Sharing it is faithful (every Azure VM's attested document is signed by the same `metadata.azure.com`
/// chain) and saves three RSA key generations per unseeded mock. The token key is never shared, so two
/// unseeded mocks still reject each other's tokens.
fn os_random_chain() -> Result<(Arc<AttestedChain>, Option<RsaPrivateKey>), KeyError> {
    static CHAIN: Mutex<Option<Arc<AttestedChain>>> = Mutex::new(None);
    // Held across generation so concurrent first callers wait instead of each generating a chain.
    let mut guard = CHAIN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(chain) = guard.as_ref() {
        return Ok((chain.clone(), None));
    }
    // First unseeded set of the process: draw its token key in parallel with the chain's keys.
    let [root, intermediate, leaf, token] = generate_keys([
        (KeySource::Os, "attested root CA"),
        (KeySource::Os, "attested intermediate CA"),
        (KeySource::Os, "attested leaf"),
        (KeySource::Os, "token signing"),
    ])?;
    let chain = Arc::new(build_chain(&root, &intermediate, leaf)?);
    *guard = Some(chain.clone());
    Ok((chain, Some(token)))
}

/// Imports an RSA key into rcgen (ring) so it can sign certificates.
fn rcgen_key(key: &RsaPrivateKey, what: &'static str) -> Result<KeyPair, KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::KeyEncoding {
            what,
            message: e.to_string(),
        })?;
    KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256)
        .map_err(|source| KeyError::Certificate { what, source })
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(
        DnType::OrganizationName,
        "imds-conformance mock (not Microsoft)",
    );
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, path_len: Option<u8>, years: (i32, i32)) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(cn);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    // Fixed dates keep a seeded chain reproducible; the window comfortably covers any test run.
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    params
}

fn build_chain(
    root_key: &RsaPrivateKey,
    intermediate_key: &RsaPrivateKey,
    leaf_key: RsaPrivateKey,
) -> Result<AttestedChain, KeyError> {
    let cert_err = |what| move |source| KeyError::Certificate { what, source };

    let root_params = ca_params("imds-conformance Mock Root CA", None, (2020, 2050));
    let root_kp = rcgen_key(root_key, "attested root CA")?;
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_kp)
        .map_err(cert_err("root CA certificate"))?;

    let intermediate_params = ca_params(
        "imds-conformance Mock Azure RSA TLS Issuing CA 01",
        Some(0),
        (2020, 2045),
    );
    let intermediate_kp = rcgen_key(intermediate_key, "attested intermediate CA")?;
    let intermediate =
        rcgen::CertifiedIssuer::signed_by(intermediate_params, intermediate_kp, &root)
            .map_err(cert_err("intermediate CA certificate"))?;

    // The real signer is a TLS certificate for metadata.azure.com with the wildcard SAN the docs tell users
    // to check (REFERENCE B.6); we mirror its usages.
    let mut leaf_params = CertificateParams::new(vec![
        "metadata.azure.com".to_owned(),
        "*.metadata.azure.com".to_owned(),
    ])
    .map_err(cert_err("leaf SAN"))?;
    leaf_params.distinguished_name = distinguished_name("metadata.azure.com");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    leaf_params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let leaf_kp = rcgen_key(&leaf_key, "attested leaf")?;
    let leaf = leaf_params
        .signed_by(&leaf_kp, &intermediate)
        .map_err(cert_err("leaf certificate"))?;

    let chain_pem = format!("{}{}{}", root.pem(), intermediate.pem(), leaf.pem());
    Ok(AttestedChain {
        leaf_key,
        leaf_der: leaf.der().to_vec(),
        intermediate_der: intermediate.der().to_vec(),
        root_der: root.der().to_vec(),
        chain_pem,
    })
}

/// Self-signed certificate for the token key, published in the JWKS as `x5c`/`x5t` the way Entra publishes
/// its signing certificates (`CN=accounts.accesscontrol.windows.net`, self-signed, RSA-2048).
fn token_certificate(token_key: &RsaPrivateKey) -> Result<Vec<u8>, KeyError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "imds-conformance mock accounts.accesscontrol.windows.net",
    );
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let kp = rcgen_key(token_key, "token signing")?;
    let cert = params
        .self_signed(&kp)
        .map_err(|source| KeyError::Certificate {
            what: "token signing certificate",
            source,
        })?;
    Ok(cert.der().to_vec())
}

/// RFC 7638 thumbprint of an RSA public key: base64url(SHA-256 of the canonical JWK `{"e","kty","n"}`).
fn jwk_thumbprint(n_b64: &str, e_b64: &str) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2). base64url never needs JSON escaping.
    let canonical = format!(r#"{{"e":"{e_b64}","kty":"RSA","n":"{n_b64}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn seeded_cache() -> &'static Mutex<HashMap<u64, SigningKeys>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, SigningKeys>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl SigningKeys {
    /// Generates the token signing key and the attested-document chain.
    ///
    /// `Some(seed)` is deterministic: the same seed yields the same keys, `kid`, JWKS and certificates (and is
    /// served from a process-wide cache after the first call). `None` draws a fresh token key from the OS RNG
    /// and uses the process-wide attested chain (itself drawn from the OS RNG on first use).
    pub fn generate(seed: Option<u64>) -> Result<Self, KeyError> {
        if let Some(seed) = seed {
            // A poisoned lock only means another thread panicked mid-insert; the map itself is still valid.
            if let Some(keys) = seeded_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&seed)
            {
                return Ok(keys.clone());
            }
        }
        let keys = Self::generate_uncached(seed)?;
        if let Some(seed) = seed {
            seeded_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(seed)
                .or_insert_with(|| keys.clone());
        }
        Ok(keys)
    }

    fn generate_uncached(seed: Option<u64>) -> Result<Self, KeyError> {
        let (token_key, attested) = match seed {
            Some(seed) => {
                let seeded = |stream| KeySource::Seeded { seed, stream };
                let [token, root, intermediate, leaf] = generate_keys([
                    (seeded(TOKEN_STREAM), "token signing"),
                    (seeded(ROOT_STREAM), "attested root CA"),
                    (seeded(INTERMEDIATE_STREAM), "attested intermediate CA"),
                    (seeded(LEAF_STREAM), "attested leaf"),
                ])?;
                (token, Arc::new(build_chain(&root, &intermediate, leaf)?))
            }
            None => match os_random_chain()? {
                (chain, Some(token)) => (token, chain),
                (chain, None) => (generate_rsa(KeySource::Os, "token signing")?, chain),
            },
        };

        let token_public = token_key.to_public_key();
        let n_b64 = URL_SAFE_NO_PAD.encode(token_public.n().to_bytes_be());
        let e_b64 = URL_SAFE_NO_PAD.encode(token_public.e().to_bytes_be());
        let kid = jwk_thumbprint(&n_b64, &e_b64);

        let token_cert_der = token_certificate(&token_key)?;
        let x5t = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&token_cert_der));

        let pkcs1 = token_key
            .to_pkcs1_der()
            .map_err(|e| KeyError::KeyEncoding {
                what: "token signing",
                message: e.to_string(),
            })?;
        let signing_key = RsaKeyPair::from_der(pkcs1.as_bytes())?;
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(kid.clone());
        header.x5t = Some(x5t.clone());
        let jwt_header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);

        Ok(Self {
            inner: Arc::new(Inner {
                kid,
                x5t,
                token_cert_der,
                token_public,
                token_key: signing_key,
                jwt_header_b64,
                attested,
            }),
        })
    }

    /// Key id of the token signing key: its RFC 7638 JWK thumbprint (base64url SHA-256).
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    /// Signs `claims` as an RS256 JWT whose header carries `typ: JWT`, `kid` and `x5t` like Entra's tokens.
    /// RSASSA-PKCS1-v1_5 is deterministic: the token is byte for byte what `jsonwebtoken::encode` gives for
    /// the same header, claims and key (a test pins that), only signed natively.
    pub fn sign_jwt<C: serde::Serialize>(&self, claims: &C) -> Result<String, KeyError> {
        let inner = &*self.inner;
        let claims = serde_json::to_vec(claims)?;
        let sig_len = inner.token_key.public_modulus_len();
        let b64_len = |n: usize| n.div_ceil(3) * 4;
        let mut token = String::with_capacity(
            inner.jwt_header_b64.len() + b64_len(claims.len()) + b64_len(sig_len) + 2,
        );
        token.push_str(&inner.jwt_header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let mut signature = vec![0u8; sig_len];
        // PKCS#1 v1.5 draws no randomness; the generator is only part of the signature of `sign`.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        inner
            .token_key
            .sign(&RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut signature)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }

    /// The JWKS publishing the token key: `{"keys":[{kty,use,kid,x5t,n,e,x5c,alg}]}` (Entra's member order).
    pub fn jwks(&self) -> Value {
        let public = &self.inner.token_public;
        json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "kid": self.inner.kid,
                "x5t": self.inner.x5t,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
                "x5c": [STANDARD.encode(&self.inner.token_cert_der)],
                "alg": "RS256",
            }]
        })
    }

    /// An OpenID Provider configuration shaped like Entra ID's v1 document
    /// (`https://login.microsoftonline.com/{tenant}/.well-known/openid-configuration`).
    ///
    /// `issuer` and `jwks_uri` are used verbatim; the other endpoints are derived from `jwks_uri` (its
    /// `/discovery/keys` suffix replaced) only so the document has Entra's shape — the mock does not serve
    /// them, and token verification needs nothing but `issuer` and `jwks_uri`.
    pub fn openid_configuration(&self, issuer: &str, jwks_uri: &str) -> Value {
        let base = jwks_uri
            .strip_suffix("/discovery/keys")
            .or_else(|| jwks_uri.rsplit_once('/').map(|(b, _)| b))
            .unwrap_or(jwks_uri);
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": jwks_uri,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": issuer,
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email",
                "given_name", "family_name", "nickname"
            ],
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })
    }

    /// Signs `content` as a PKCS#7 / CMS SignedData (DER): content embedded, SHA-256 with RSA PKCS#1 v1.5,
    /// the leaf (`*.metadata.azure.com`) and intermediate certificates included.
    pub fn sign_attested(&self, content: &[u8]) -> Result<Vec<u8>, KeyError> {
        let chain = &self.inner.attested;
        let signer = crate::pkcs7::Signer {
            leaf_key: &chain.leaf_key,
            leaf_der: &chain.leaf_der,
            intermediate_der: &chain.intermediate_der,
        };
        Ok(crate::pkcs7::sign_attested(&signer, content)?)
    }

    /// The attested-document chain as PEM, root first, then intermediate, then the signing leaf.
    pub fn attested_chain_pem(&self) -> String {
        self.inner.attested.chain_pem.clone()
    }

    /// DER of the root CA of the attested-document chain (the trust anchor for verifying signatures).
    pub fn attested_root_der(&self) -> &[u8] {
        &self.inner.attested.root_der
    }

    /// DER of the leaf certificate that signs attested documents.
    pub fn attested_leaf_der(&self) -> &[u8] {
        &self.inner.attested.leaf_der
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Claims {
        aud: String,
        iss: String,
        exp: u64,
    }

    fn seeded() -> SigningKeys {
        SigningKeys::generate(Some(7)).expect("seeded keys")
    }

    #[test]
    fn seeded_generation_is_deterministic_and_uncached_too() {
        let a = seeded();
        let b = SigningKeys::generate_uncached(Some(7)).expect("uncached keys");
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks(), b.jwks());
        assert_eq!(a.attested_chain_pem(), b.attested_chain_pem());
        let other = SigningKeys::generate(Some(8)).expect("other seed");
        assert_ne!(a.kid(), other.kid());
        assert_ne!(a.attested_chain_pem(), other.attested_chain_pem());
    }

    #[test]
    fn os_random_token_keys_differ_and_share_the_chain() {
        let a = SigningKeys::generate(None).expect("keys");
        let b = SigningKeys::generate(None).expect("keys");
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.attested_chain_pem(), b.attested_chain_pem());
        // The shared chain is not a seeded one.
        assert_ne!(a.attested_chain_pem(), seeded().attested_chain_pem());
    }

    #[test]
    fn kid_is_rfc7638_thumbprint() {
        // RFC 7638 §3.1 worked example.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            jwk_thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        let keys = seeded();
        let jwk = &keys.jwks()["keys"][0];
        let expected = jwk_thumbprint(jwk["n"].as_str().expect("n"), jwk["e"].as_str().expect("e"));
        assert_eq!(keys.kid(), expected);
    }

    #[test]
    fn jwt_verifies_with_published_jwks_only() {
        let keys = seeded();
        let claims = Claims {
            aud: "https://management.azure.com/".into(),
            iss: "https://sts.windows.net/t/".into(),
            exp: 4_000_000_000,
        };
        let token = keys.sign_jwt(&claims).expect("sign");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));
        assert!(header.x5t.is_some());

        let set: JwkSet = serde_json::from_value(keys.jwks()).expect("jwks parses");
        let jwk = set.find(keys.kid()).expect("kid in jwks");
        let key = DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://management.azure.com/"]);
        validation.set_issuer(&["https://sts.windows.net/t/"]);
        let decoded = jsonwebtoken::decode::<Claims>(&token, &key, &validation).expect("verifies");
        assert_eq!(decoded.claims, claims);

        // A key from another seed must not verify it.
        let other = SigningKeys::generate(Some(8)).expect("other");
        let other_set: JwkSet = serde_json::from_value(other.jwks()).expect("jwks");
        let other_key = DecodingKey::from_jwk(&other_set.keys[0]).expect("key");
        assert!(jsonwebtoken::decode::<Claims>(&token, &other_key, &validation).is_err());
    }

    /// The native signer gives exactly jsonwebtoken's token for the same header, claims and key.
    #[test]
    fn jwt_is_byte_for_byte_jsonwebtokens() {
        let keys = seeded();
        let token_key = generate_rsa(
            KeySource::Seeded {
                seed: 7,
                stream: TOKEN_STREAM,
            },
            "token",
        )
        .expect("key");
        let der = token_key.to_pkcs1_der().expect("der");
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(keys.kid().to_owned());
        header.x5t = Some(keys.inner.x5t.clone());
        let claims = Claims {
            aud: "https://vault.azure.net".into(),
            iss: "https://sts.windows.net/t/".into(),
            exp: 4_000_000_001,
        };
        let expected = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
        )
        .expect("jsonwebtoken signs");
        assert_eq!(keys.sign_jwt(&claims).expect("sign"), expected);
    }

    #[test]
    fn x5t_matches_x5c() {
        let keys = seeded();
        let jwk = &keys.jwks()["keys"][0];
        let der = STANDARD
            .decode(jwk["x5c"][0].as_str().expect("x5c"))
            .expect("base64");
        assert_eq!(
            jwk["x5t"].as_str(),
            Some(URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)).as_str())
        );
    }

    #[test]
    fn openid_configuration_names_issuer_and_jwks_uri() {
        let keys = seeded();
        let doc = keys.openid_configuration(
            "https://sts.windows.net/tid/",
            "http://127.0.0.1:1/_mock/discovery/keys",
        );
        assert_eq!(doc["issuer"], "https://sts.windows.net/tid/");
        assert_eq!(doc["jwks_uri"], "http://127.0.0.1:1/_mock/discovery/keys");
        assert_eq!(
            doc["token_endpoint"],
            "http://127.0.0.1:1/_mock/oauth2/token"
        );
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
    }

    #[test]
    fn chain_pem_has_three_certificates_and_debug_hides_secrets() {
        let keys = seeded();
        let pem = keys.attested_chain_pem();
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 3);
        let debug = format!("{keys:?}");
        assert!(debug.contains(keys.kid()));
        assert!(!debug.contains("PRIVATE"));
        assert!(debug.len() < 300, "Debug output too large: {debug}");
    }
}
