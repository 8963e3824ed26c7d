//! What the hub does, in domain terms: publish, find prior results, list a patient's history.
//! No gRPC types here; `grpc` converts to and from them.

use std::time::{SystemTime, UNIX_EPOCH};

use huren_core::identity::InstitutionId;
use huren_core::signing::SignedEnvelope;
use huren_core::summary::UnixMillis;
use huren_core::trust::AllianceCa;

use crate::error::HubError;
use crate::store::{Found, PriorQuery, PutOutcome, Store};

/// The hub's domain service.
pub struct Hub {
    store: Store,
    ca: AllianceCa,
    max_results: usize,
}

/// The current time in Unix milliseconds.
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Hub {
    pub fn new(store: Store, ca: AllianceCa, max_results: usize) -> Self {
        Self {
            store,
            ca,
            max_results,
        }
    }

    pub fn max_results(&self) -> usize {
        self.max_results
    }

    /// Verifies and stores a summary published by `caller`.
    ///
    /// Checks, in order: the signing certificate is the alliance's and valid now; the signature
    /// covers the exact body bytes; the body is well formed; the body's publisher is the
    /// certificate's institution; the caller is that publisher. Only then is anything written.
    pub async fn publish(
        &self,
        caller: &InstitutionId,
        envelope: SignedEnvelope,
    ) -> Result<PutOutcome, HubError> {
        let at = now();
        let verified = envelope.verify(&self.ca, at)?;
        if verified.summary.publisher != *caller {
            return Err(HubError::NotPublisher {
                caller: caller.clone(),
                publisher: verified.summary.publisher,
            });
        }
        Ok(self.store.put_summary(&verified, at).await?)
    }

    /// The latest versions of one patient's results for some items, newest first.
    pub fn find_prior(&self, query: &PriorQuery) -> Result<Found, HubError> {
        Ok(self.store.find_prior(query)?)
    }

    /// The latest versions of all of one patient's results, newest first.
    pub fn history(&self, query: &PriorQuery) -> Result<Found, HubError> {
        Ok(self.store.history(query)?)
    }
}
