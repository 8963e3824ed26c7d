//! A cache of certified signing certificates, so the certificate chain is validated once per
//! certificate rather than once per publish. Keyed by the SHA-256 of the certificate's DER; an
//! entry is used only while the certificate is valid at the moment asked about, so expiry is
//! still enforced. Revocation is checked by the caller on every publish, cache or not.

use std::collections::HashMap;
use std::sync::RwLock;

use huren_core::signing::sha256;
use huren_core::summary::UnixMillis;
use huren_core::trust::{AllianceCa, CertifiedSigner, TrustError};

/// Most certificates kept; an alliance has a few per member. Past this the cache starts over.
const CAPACITY: usize = 4096;

pub struct SignerCache {
    ca: AllianceCa,
    certified: RwLock<HashMap<[u8; 32], CertifiedSigner>>,
}

impl SignerCache {
    pub fn new(ca: AllianceCa) -> Self {
        Self {
            ca,
            certified: RwLock::new(HashMap::new()),
        }
    }

    /// The certified signer of `cert_der` at `at`, validating the chain only on a miss.
    pub fn certify(&self, cert_der: &[u8], at: UnixMillis) -> Result<CertifiedSigner, TrustError> {
        let key = sha256(cert_der);
        if let Ok(map) = self.certified.read()
            && let Some(signer) = map.get(&key)
            && signer.valid_at(at)
        {
            return Ok(signer.clone());
        }
        let signer = self.ca.certify_signer(cert_der, at)?;
        if let Ok(mut map) = self.certified.write() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(key, signer.clone());
        }
        Ok(signer)
    }
}
