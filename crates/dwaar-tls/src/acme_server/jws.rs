//! Flattened JWS (RFC 7515) as ACME clients send it: the protected header, the
//! payload, the signature, and the client's key (a JWK, RFC 7517) that verifies it.
//! Keys: P-256 and P-384 ECDSA (`ES256`, `ES384`), RSA (`RS256`) and Ed25519
//! (`EdDSA`). Thumbprints follow RFC 7638.

use base64::Engine;
use serde_json::Value;

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "invalid base64url".to_string())
}

/// A request body: `{"protected", "payload", "signature"}`.
pub struct Jws {
    pub header: Value,
    protected_b64: String,
    payload_b64: String,
    signature: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Jws {
    pub fn parse(body: &[u8]) -> Result<Jws, String> {
        let v: Value = serde_json::from_slice(body).map_err(|_| "the body is not a JWS")?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("the JWS has no '{k}'"))
        };
        let protected_b64 = field("protected")?;
        let payload_b64 = field("payload")?;
        let signature = unb64(&field("signature")?)?;
        let header: Value = serde_json::from_slice(&unb64(&protected_b64)?)
            .map_err(|_| "the protected header is not JSON")?;
        let payload = unb64(&payload_b64)?;
        Ok(Jws {
            header,
            protected_b64,
            payload_b64,
            signature,
            payload,
        })
    }

    pub fn header_str(&self, k: &str) -> Option<&str> {
        self.header[k].as_str()
    }

    /// Whether `key` signed this JWS with the header's algorithm.
    pub fn verify(&self, key: &Value) -> Result<(), String> {
        use ring::signature as sig;
        let alg = self.header_str("alg").ok_or("the JWS has no algorithm")?;
        let msg = format!("{}.{}", self.protected_b64, self.payload_b64);
        let k = |name: &str| -> Result<Vec<u8>, String> {
            unb64(
                key[name]
                    .as_str()
                    .ok_or_else(|| format!("the key has no '{name}'"))?,
            )
        };
        let ok = match (alg, key["kty"].as_str(), key["crv"].as_str()) {
            ("ES256", Some("EC"), Some("P-256")) | ("ES384", Some("EC"), Some("P-384")) => {
                let mut point = vec![4u8];
                point.extend(k("x")?);
                point.extend(k("y")?);
                let algo: &dyn sig::VerificationAlgorithm = if alg == "ES256" {
                    &sig::ECDSA_P256_SHA256_FIXED
                } else {
                    &sig::ECDSA_P384_SHA384_FIXED
                };
                sig::UnparsedPublicKey::new(algo, point)
                    .verify(msg.as_bytes(), &self.signature)
                    .is_ok()
            }
            ("RS256", Some("RSA"), _) => sig::RsaPublicKeyComponents {
                n: k("n")?,
                e: k("e")?,
            }
            .verify(
                &sig::RSA_PKCS1_2048_8192_SHA256,
                msg.as_bytes(),
                &self.signature,
            )
            .is_ok(),
            ("EdDSA", Some("OKP"), Some("Ed25519")) => {
                sig::UnparsedPublicKey::new(&sig::ED25519, k("x")?)
                    .verify(msg.as_bytes(), &self.signature)
                    .is_ok()
            }
            _ => {
                return Err(format!(
                    "unsupported signature algorithm '{alg}' for this key"
                ))
            }
        };
        if ok {
            Ok(())
        } else {
            Err("the JWS signature does not verify".into())
        }
    }
}

/// The RFC 7638 thumbprint of a JWK: SHA-256 of its required members in order.
pub fn thumbprint(key: &Value) -> Result<String, String> {
    let s = |k: &str| -> Result<&str, String> {
        key[k]
            .as_str()
            .ok_or_else(|| format!("the key has no '{k}'"))
    };
    let canonical = match s("kty")? {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        other => return Err(format!("unsupported key type '{other}'")),
    };
    Ok(b64(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    )
    .as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint() {
        // The example key of RFC 7638 §3.1 and its thumbprint.
        let key: Value = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&key).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn es256_round_trip_and_tampering() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pub_key = kp.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": b64(&pub_key[1..33]), "y": b64(&pub_key[33..65])});
        let protected = b64(br#"{"alg":"ES256","nonce":"n","url":"u"}"#);
        let payload = b64(b"{}");
        let sig = kp
            .sign(&rng, format!("{protected}.{payload}").as_bytes())
            .unwrap();
        let body = serde_json::json!({"protected": protected, "payload": payload, "signature": b64(sig.as_ref())});
        let jws = Jws::parse(body.to_string().as_bytes()).unwrap();
        assert!(jws.verify(&jwk).is_ok());
        let forged = serde_json::json!({"protected": protected, "payload": b64(b"{\"x\":1}"), "signature": b64(sig.as_ref())});
        assert!(Jws::parse(forged.to_string().as_bytes())
            .unwrap()
            .verify(&jwk)
            .is_err());
        assert!(Jws::parse(b"not json").is_err());
        assert!(Jws::parse(br#"{"protected":"!!","payload":"","signature":""}"#).is_err());
    }
}
