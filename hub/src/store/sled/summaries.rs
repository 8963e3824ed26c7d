use super::*;

/// One summary version of a batch, with its keys and leaf worked out before the store is read.
pub(super) struct PreparedPut<'a> {
    verified: &'a VerifiedSummary,
    accepted_at: UnixMillis,
    rkey: Vec<u8>,
    vkey: Vec<u8>,
    index_key: Vec<u8>,
    cert_hash: Hash,
    leaf: Vec<u8>,
}

impl<'a> PreparedPut<'a> {
    pub(super) fn new(v: &'a VerifiedSummary, accepted_at: UnixMillis) -> Self {
        let s = &v.summary;
        let rkey = result_key(s.publisher.as_str(), s.id.as_str());
        let vkey = version_key(s.publisher.as_str(), s.id.as_str(), s.version);
        let cert_hash = sha256(&v.envelope.signer_certificate);
        let leaf = Entry::Summary {
            accepted_at,
            signer_certificate_sha256: cert_hash,
            signature: v.envelope.signature,
            body: v.envelope.body.clone(),
        }
        .encode();
        let index_key = patient_index_key(s);
        Self {
            verified: v,
            accepted_at,
            rkey,
            vkey,
            index_key,
            cert_hash,
            leaf,
        }
    }

    pub(super) fn receipt(&self, accepted_at_ms: i64) -> Receipt {
        let s = &self.verified.summary;
        Receipt {
            publisher: s.publisher.clone(),
            summary_id: s.id.clone(),
            version: s.version,
            body_sha256: self.verified.body_sha256,
            accepted_at: UnixMillis(accepted_at_ms),
        }
    }
}

/// What a read found in the patient index ([`SledStore::resolve`]).
#[derive(Default)]
pub(super) struct Hits {
    /// Results whose key named the leaf of their latest version: (result key, leaf index).
    leaves: Vec<(Vec<u8>, u64)>,
    /// Results to look up in `latest`: keys written before layout 3, or of a version a later
    /// one moved.
    unresolved: Vec<Vec<u8>>,
}

impl Hits {
    /// A patient index entry of the result `rkey`, holding `value`.
    pub(super) fn push(&mut self, rkey: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match read_index_value(value)? {
            Some(index) => self.leaves.push((rkey.to_vec(), index)),
            None => self.unresolved.push(rkey.to_vec()),
        }
        Ok(())
    }
}

/// The fields of a summary version's log leaf ([`Entry::Summary`]).
pub(super) struct SummaryLeaf {
    pub(super) accepted_at: UnixMillis,
    pub(super) signer_certificate_sha256: Hash,
    pub(super) signature: [u8; 64],
    pub(super) body: Vec<u8>,
}

/// A patient index key a batch writes ([`References`]).
struct IndexWrite {
    key: Vec<u8>,
    /// The leaf it names once written, if any.
    value: Option<u64>,
    /// What it held before the batch (`None`: it was not there), for the undo list.
    before: Option<Vec<u8>>,
}

enum Reference {
    Latest {
        rkey: Vec<u8>,
        value: [u8; 12],
        before: Option<Vec<u8>>,
    },
    Index(IndexWrite),
}

/// What a batch writes that points at its leaves, latest-version entries and patient index
/// entries, in the order it first writes each: a summary's `latest` entry, then its index
/// keys. Added to the write set after the leaves. (All `latest` entries first and the index
/// keys after them, or the index keys in key order, took 4-9% more disk after seeding a
/// million summaries with the same keys and values; what sled does differently was not
/// looked into.)
#[derive(Default)]
pub(super) struct References {
    writes: Vec<Reference>,
    /// Where each patient index key is in `writes`.
    index_at: HashMap<Vec<u8>, usize>,
}

impl References {
    /// Sets the latest-version entry of `rkey`, which held `before`.
    fn latest(&mut self, rkey: &[u8], value: [u8; 12], before: Option<&[u8]>) {
        self.writes.push(Reference::Latest {
            rkey: rkey.to_vec(),
            value,
            before: before.map(<[u8]>::to_vec),
        });
    }

    /// Sets the patient index key `key` to name `value`'s leaf (or none). What the key held
    /// before is read from `tree` the first time the batch writes it, and only when it
    /// `may_exist`. A key to be emptied (`value` `None`) that is neither stored nor written
    /// earlier in the batch is left out.
    fn index(
        &mut self,
        tree: &sled::Tree,
        key: Vec<u8>,
        value: Option<u64>,
        may_exist: bool,
    ) -> Result<(), StoreError> {
        if let Some(&n) = self.index_at.get(&key)
            && let Some(Reference::Index(w)) = self.writes.get_mut(n)
        {
            w.value = value;
            return Ok(());
        }
        let before = match may_exist {
            true => tree.get(&key)?.map(|v| v.to_vec()),
            false => None,
        };
        if before.is_some() || value.is_some() {
            self.index_at.insert(key.clone(), self.writes.len());
            self.writes
                .push(Reference::Index(IndexWrite { key, value, before }));
        }
        Ok(())
    }

    /// Adds the writes to `ws`, leaving out index keys that already hold their new value.
    fn write_into(self, ws: &mut WriteSet) {
        for w in self.writes {
            match w {
                Reference::Latest {
                    rkey,
                    value,
                    before,
                } => {
                    ws.replace(TreeId::Latest, rkey, value, before.as_deref());
                }
                Reference::Index(w) => {
                    let value = index_value(w.value);
                    match w.before {
                        Some(before) if before == value => {}
                        before => ws.replace(TreeId::ByPatient, w.key, value, before.as_deref()),
                    }
                }
            }
        }
    }
}

impl SledStore {
    /// Stores summary versions in one atomic write, in order, each with its own outcome: a
    /// refused version (a conflict, a version out of order) refuses only itself. Versions of one
    /// result may follow each other in the same batch. Returns each stored version's inclusion
    /// proof against the tree head right after the batch, computed from the nodes the batch
    /// wrote and the frontier before it (no store reads, except for duplicates).
    ///
    /// Not durable on return: call [`SledStore::commit`] before acknowledging anything.
    pub fn put_summaries(
        &self,
        items: &[(&VerifiedSummary, UnixMillis)],
        follows: Succession,
    ) -> Result<PutBatch, StoreError> {
        let prepared: Vec<PreparedPut> = items
            .iter()
            .map(|(v, at)| PreparedPut::new(v, *at))
            .collect();
        let i = &self.inner;
        let mut log = self.log_state()?;
        let before_size = log.size;
        let mut growth = Growth::new(&log);
        // What this batch stores, for the versions after it in the same batch.
        let mut staged_versions: HashMap<&[u8], (Hash, i64, u64)> = HashMap::new();
        let mut staged_latest: HashMap<&[u8], [u8; 12]> = HashMap::new();
        let mut staged_certs: HashSet<Hash> = HashSet::new();
        let mut new_certs: Vec<(&Hash, &[u8])> = Vec::new();
        // The latest version of each result this batch stores, for a later version's check.
        let mut staged_summaries: HashMap<&[u8], &Summary> = HashMap::new();
        let mut ws = WriteSet::new();
        // Written after the rest, so a reader never finds an index entry or a latest version
        // before the leaf (or record) it points to.
        let mut references = References::default();
        let mut results = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let s = &p.verified.summary;
            // The latest version as stored (its raw value is what undoing the write restores).
            let stored_raw = match staged_latest.get(p.rkey.as_slice()) {
                Some(v) => Some(v.to_vec()),
                None => i.latest.get(&p.rkey)?.map(|v| v.to_vec()),
            };
            let stored_latest = stored_raw.as_deref().map(read_latest).transpose()?;
            let stored = stored_latest.map(|(version, _)| version);
            let existing = match staged_versions.get(p.vkey.as_slice()) {
                Some(&(digest, at, index)) => Some((digest, at, index)),
                None => match stored_latest {
                    // The latest version has no record: its leaf is all there is.
                    Some((version, Some(index))) if version == s.version => {
                        let (digest, at) = self.leaf_digest(index)?;
                        Some((digest, at.0, index))
                    }
                    Some((version, _)) if version >= s.version => {
                        match i.summaries.get(&p.vkey)? {
                            Some(raw) => {
                                let old = decode_record(&raw)?;
                                let digest =
                                    old.body_sha256.as_slice().try_into().map_err(|_| {
                                        StoreError::Corrupt("body digest is not 32 bytes".into())
                                    })?;
                                Some((digest, old.accepted_at_ms, old.log_index))
                            }
                            None => {
                                return Err(StoreError::Corrupt(format!(
                                    "version {} of a result is missing",
                                    s.version
                                )));
                            }
                        }
                    }
                    _ => None,
                },
            };
            if let Some((digest, at, index)) = existing {
                let same = digest == p.verified.body_sha256;
                results.push(if same {
                    Ok((Some(at), index))
                } else {
                    Err(StoreError::Conflict {
                        key: s.result_key(),
                        version: s.version,
                    })
                });
                continue;
            }
            let expected = stored.map_or(1, |v| v + 1);
            if s.version != expected {
                let reason = match stored {
                    None => "the first version of a result must be 1".to_owned(),
                    Some(v) => format!("the stored version is {v}, so the next must be {expected}"),
                };
                results.push(Err(StoreError::OutOfOrder {
                    key: s.result_key(),
                    version: s.version,
                    reason,
                }));
                continue;
            }
            // A new version never moves a result to another patient nor revives a void.
            let mut previous_key = None;
            if let Some((previous_version, previous_index)) = stored_latest {
                let read;
                let previous = match staged_summaries.get(p.rkey.as_slice()) {
                    Some(&previous) => previous,
                    None => {
                        read = self.stored_version(s, previous_version, previous_index)?;
                        &read
                    }
                };
                if let Err(reason) = follows(s, previous) {
                    results.push(Err(StoreError::Succession {
                        key: s.result_key(),
                        version: s.version,
                        reason,
                    }));
                    continue;
                }
                previous_key = Some(patient_index_key(previous));
            }
            if !staged_certs.contains(&p.cert_hash)
                && !self.certificate_cached(&p.cert_hash)
                && !i.certs.contains_key(p.cert_hash)?
            {
                ws.add(
                    TreeId::Certs,
                    p.cert_hash.as_slice(),
                    p.verified.envelope.signer_certificate.as_slice(),
                );
                new_certs.push((
                    &p.cert_hash,
                    p.verified.envelope.signer_certificate.as_slice(),
                ));
            }
            staged_certs.insert(p.cert_hash);
            let index = growth.push(&mut ws, p.leaf.clone());
            // The latest version has no record (its latest-version entry names its leaf); the
            // version it supersedes gets one now, unless it has one (older stores wrote a
            // record for every version).
            if let Some((previous, Some(previous_index))) = stored_latest {
                let pkey = version_key(s.publisher.as_str(), s.id.as_str(), previous);
                let record = match staged_versions.get(pkey.as_slice()) {
                    Some(&(digest, at, _)) => Some((digest, at)),
                    None if i.summaries.contains_key(&pkey)? => None,
                    None => {
                        let (digest, at) = self.leaf_digest(previous_index)?;
                        Some((digest, at.0))
                    }
                };
                if let Some((digest, at)) = record {
                    ws.add(
                        TreeId::Summaries,
                        pkey,
                        encode_v1(&superseded_record(digest, at, previous_index)),
                    );
                }
            }
            let latest = latest_value(s.version, index);
            references.latest(&p.rkey, latest, stored_raw.as_deref());
            // The new version's key names its leaf; the key of the version it supersedes, if
            // the new one moved the result, names none from now on. A first version's key is
            // new (the key holds the result's name); an amendment's may be there already.
            if let Some(key) = previous_key.filter(|k| *k != p.index_key) {
                references.index(&i.by_patient, key, None, true)?;
            }
            references.index(
                &i.by_patient,
                p.index_key.clone(),
                Some(index),
                stored.is_some(),
            )?;
            staged_versions.insert(&p.vkey, (p.verified.body_sha256, p.accepted_at.0, index));
            staged_latest.insert(&p.rkey, latest);
            staged_summaries.insert(&p.rkey, s);
            results.push(Ok((None, index)));
        }
        let (next, completed) = growth.finish(&mut ws);
        references.write_into(&mut ws);
        ws.apply(&**i)?;
        for (hash, der) in new_certs {
            self.cache_certificate(hash, der.into());
        }
        // The nodes a proof for this batch needs are the ones it wrote and, to their left, the
        // frontier before it.
        let mut known: HashMap<(u8, u64), Hash> = merkle::frontier_nodes(before_size)
            .zip(log.frontier.iter().copied())
            .collect();
        known.extend(completed.iter().map(|&(l, i, h)| ((l, i), h)));
        *log = next;
        let head = log.head();
        self.set_applied(head, &completed);
        drop(log);
        let reader = Layered {
            known: &known,
            store: Nodes::of(i),
        };
        // The batch's proofs together: the right edge most of them share is folded once.
        let indexes: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(_, index)| *index))
            .collect();
        let mut proofs = merkle::inclusion_proofs(&indexes, head.size, &reader)
            .map_err(tree_error)?
            .into_iter();
        let results = results
            .into_iter()
            .zip(&prepared)
            .map(|(r, p)| {
                let (earlier, index) = r?;
                let proof = proofs.next().ok_or_else(|| {
                    StoreError::Tree("fewer proofs were made than summaries stored".into())
                })?;
                let receipt = p.receipt(earlier.unwrap_or(p.accepted_at.0));
                let outcome = match earlier {
                    Some(_) => PutOutcome::AlreadyStored(receipt),
                    None => PutOutcome::Stored(receipt),
                };
                Ok(Put {
                    outcome,
                    index,
                    proof,
                })
            })
            .collect();
        Ok(PutBatch { results, head })
    }

    /// Loads the latest version of a result.
    pub(super) fn load_latest(&self, rkey: &[u8]) -> Result<Option<StoredSummary>, StoreError> {
        let Some(v) = self.inner.latest.get(rkey)? else {
            return Ok(None);
        };
        let (version, log_index) = read_latest(&v)?;
        if let Some(index) = log_index {
            let stored = self.summary_at_leaf(index)?;
            let s = &stored.summary;
            if s.version != version || !is_result_key(rkey, s.publisher.as_str(), s.id.as_str()) {
                return Err(StoreError::Corrupt(format!(
                    "log leaf {index} is not version {version} of the result its latest-version entry names"
                )));
            }
            return Ok(Some(stored));
        }
        let mut vkey = rkey.to_vec();
        vkey.push(0);
        vkey.extend_from_slice(&version.to_be_bytes());
        let Some(raw) = self.inner.summaries.get(&vkey)? else {
            return Err(StoreError::Corrupt(format!(
                "latest version {version} of a result is missing"
            )));
        };
        let rec = decode_record(&raw)?;
        self.to_stored(rec).map(Some)
    }

    /// The summary leaf at `index`, decoded.
    pub(super) fn summary_leaf(&self, index: u64) -> Result<SummaryLeaf, StoreError> {
        let leaf = Leaves::of(&self.inner).get(index)?;
        match Entry::decode(&leaf) {
            Ok(Entry::Summary {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            }) => Ok(SummaryLeaf {
                accepted_at,
                signer_certificate_sha256,
                signature,
                body,
            }),
            Ok(_) => Err(StoreError::Corrupt(format!(
                "log leaf {index} is not a summary"
            ))),
            Err(e) => Err(StoreError::Corrupt(format!(
                "log leaf {index} does not decode: {e}"
            ))),
        }
    }

    /// Version `version` of the result `s` belongs to, decoded from its leaf (`index`) or, in
    /// stores written before the log held bodies, from its record: what a new version is
    /// checked against. Only amendments and voids read it.
    pub(super) fn stored_version(
        &self,
        s: &Summary,
        version: u32,
        index: Option<u64>,
    ) -> Result<Summary, StoreError> {
        let body = match index {
            Some(index) => self.summary_leaf(index)?.body,
            None => {
                let key = version_key(s.publisher.as_str(), s.id.as_str(), version);
                let raw = self.inner.summaries.get(&key)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "version {version} of {} is missing",
                        s.result_key()
                    ))
                })?;
                decode_record(&raw)?.body
            }
        };
        Summary::from_stored_body_bytes(&body).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored version {version} of {} does not decode: {e}",
                s.result_key()
            ))
        })
    }

    /// The body digest and acceptance time of the summary version whose leaf is at `index`
    /// (what a republished version is checked against; no certificate or body decoding).
    pub(super) fn leaf_digest(&self, index: u64) -> Result<(Hash, UnixMillis), StoreError> {
        let leaf = self.summary_leaf(index)?;
        Ok((sha256(&leaf.body), leaf.accepted_at))
    }

    /// The summary version whose leaf is at `index`, everything taken from the leaf: body,
    /// signature, acceptance time and signer. What the hub returns is what its log holds, and
    /// the hub does not vouch for it: agents check every body against its receipt, signature
    /// and inclusion proof.
    pub(super) fn summary_at_leaf(&self, index: u64) -> Result<StoredSummary, StoreError> {
        let leaf = self.summary_leaf(index)?;
        self.stored_summary(
            leaf.body,
            leaf.signature,
            &leaf.signer_certificate_sha256,
            leaf.accepted_at,
            index,
        )
    }

    /// A signing certificate by the SHA-256 of its DER. An alliance has a few per member, so
    /// they are kept in memory once read.
    pub(super) fn certificate(&self, hash: &[u8]) -> Result<Arc<[u8]>, StoreError> {
        if let Ok(cache) = self.inner.cert_cache.read()
            && let Some(c) = cache.get(hash)
        {
            return Ok(c.clone());
        }
        let der: Arc<[u8]> = self
            .inner
            .certs
            .get(hash)?
            .ok_or_else(|| StoreError::Corrupt("signing certificate missing".into()))?
            .as_ref()
            .into();
        self.cache_certificate(hash, der.clone());
        Ok(der)
    }

    /// Whether a certificate is known to be in the `certs` tree without reading it: the cache
    /// holds only certificates read from the tree or written to it.
    pub(super) fn certificate_cached(&self, hash: &[u8]) -> bool {
        self.inner
            .cert_cache
            .read()
            .is_ok_and(|cache| cache.contains_key(hash))
    }

    /// Call only for a certificate that is in the `certs` tree.
    pub(super) fn cache_certificate(&self, hash: &[u8], der: Arc<[u8]>) {
        if let Ok(mut cache) = self.inner.cert_cache.write() {
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(hash.to_vec(), der);
        }
    }

    pub(super) fn to_stored(&self, rec: RecordV1) -> Result<StoredSummary, StoreError> {
        if rec.body.is_empty() {
            return self.summary_at_leaf(rec.log_index);
        }
        // A record written before the log existed holds its body and signature itself.
        let signature = rec
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("signature is not 64 bytes".into()))?;
        self.stored_summary(
            rec.body,
            signature,
            &rec.signer_certificate_sha256,
            UnixMillis(rec.accepted_at_ms),
            rec.log_index,
        )
    }

    pub(super) fn stored_summary(
        &self,
        body: Vec<u8>,
        signature: [u8; 64],
        signer_certificate_sha256: &[u8],
        accepted_at: UnixMillis,
        log_index: u64,
    ) -> Result<StoredSummary, StoreError> {
        let cert = self.certificate(signer_certificate_sha256)?;
        // Stored bodies were checked (canonical form included) when accepted; a body that no
        // longer decodes is corruption.
        let summary = Summary::from_stored_body_bytes(&body)
            .map_err(|e| StoreError::Corrupt(format!("stored body no longer decodes: {e}")))?;
        Ok(StoredSummary {
            receipt: Receipt {
                publisher: summary.publisher.clone(),
                summary_id: summary.id.clone(),
                version: summary.version,
                body_sha256: sha256(&body),
                accepted_at,
            },
            log_index,
            envelope: SignedEnvelope {
                signature,
                body,
                signer_certificate: cert.as_ref().to_vec(),
            },
            summary,
        })
    }

    /// Latest versions of a patient's results for some items, performed within the window,
    /// newest first.
    pub fn find_prior(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let mut hits = Hits::default();
        for (system, code) in &q.items {
            let prefix = item_prefix(&q.patient, system, code);
            let mut start = prefix.clone();
            start.extend_from_slice(&inv_time(q.until));
            let mut end = prefix.clone();
            end.extend_from_slice(&inv_time(q.from));
            end.push(0xff);
            for entry in self.inner.by_patient.range(start..end) {
                let (key, value) = entry?;
                hits.push(&key[prefix.len() + 8..], &value)?;
            }
        }
        self.resolve(hits, q, |s| {
            q.items
                .iter()
                .any(|(sys, code)| s.item.system == *sys && s.item.code == *code)
        })
    }

    /// Latest versions of all of a patient's results performed at or after `from`, newest first.
    pub fn history(&self, q: &PriorQuery) -> Result<Found, StoreError> {
        let mut hits = Hits::default();
        for entry in self.inner.by_patient.scan_prefix(q.patient.as_bytes()) {
            let (key, value) = entry?;
            hits.push(indexed_result(&key)?, &value)?;
        }
        self.resolve(hits, q, |_| true)
    }

    /// Whether `publisher` has published a result for `patient` (one whose patient index entry
    /// names it): the members who hold a patient's results may record the patient's consent.
    pub fn has_published_for(
        &self,
        patient: &Pseudonym,
        publisher: &InstitutionId,
    ) -> Result<bool, StoreError> {
        let mut prefix = publisher.as_str().as_bytes().to_vec();
        prefix.push(0);
        for entry in self.inner.by_patient.scan_prefix(patient.as_bytes()) {
            let (key, _) = entry?;
            if indexed_result(&key)?.starts_with(&prefix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Turns index hits into the latest versions that still match, deduplicated and sorted.
    /// A hit that names its leaf is read from it; the others go through `latest`.
    pub(super) fn resolve(
        &self,
        hits: Hits,
        q: &PriorQuery,
        matches: impl Fn(&Summary) -> bool,
    ) -> Result<Found, StoreError> {
        let Hits {
            mut leaves,
            mut unresolved,
        } = hits;
        // One leaf per result, the newest: two keys of a result name different leaves only
        // while a new version is being written beside the read.
        leaves.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        leaves.dedup_by(|later, kept| later.0 == kept.0);
        unresolved.sort_unstable();
        unresolved.dedup();
        unresolved.retain(|rkey| {
            leaves
                .binary_search_by(|(named, _)| named.as_slice().cmp(rkey))
                .is_err()
        });
        let named = leaves.into_iter().map(|(rkey, index)| {
            let stored = self.summary_at_leaf(index)?;
            let s = &stored.summary;
            if !is_result_key(&rkey, s.publisher.as_str(), s.id.as_str()) {
                return Err(StoreError::Corrupt(format!(
                    "log leaf {index} is not of the result its patient index entry names"
                )));
            }
            Ok(Some(stored))
        });
        let looked_up = unresolved.iter().map(|rkey| self.load_latest(rkey));
        let mut results = Vec::new();
        for stored in named.chain(looked_up) {
            let Some(stored) = stored? else {
                continue;
            };
            let summary = &stored.summary;
            if summary.patient == q.patient
                && summary.performed_at >= q.from
                && summary.performed_at <= q.until
                && matches(summary)
            {
                results.push(stored);
            }
        }
        results.sort_by(|a, b| {
            b.summary
                .performed_at
                .cmp(&a.summary.performed_at)
                .then_with(|| a.receipt.publisher.cmp(&b.receipt.publisher))
                .then_with(|| a.receipt.summary_id.cmp(&b.receipt.summary_id))
        });
        let truncated = results.len() > q.limit;
        results.truncate(q.limit);
        Ok(Found { results, truncated })
    }

    /// Every version of one result, newest first.
    pub fn versions(&self, publisher: &str, id: &str) -> Result<Vec<StoredSummary>, StoreError> {
        let rkey = result_key(publisher, id);
        let mut prefix = rkey.clone();
        prefix.push(0);
        let mut out = Vec::new();
        // Superseded versions have records (in older stores, every version has one).
        for entry in self.inner.summaries.scan_prefix(&prefix) {
            let (_, raw) = entry?;
            out.push(self.to_stored(decode_record(&raw)?)?);
        }
        // The latest version, when it has no record.
        if let Some(latest) = self.load_latest(&rkey)?
            && out
                .last()
                .is_none_or(|s| s.summary.version < latest.summary.version)
        {
            out.push(latest);
        }
        out.reverse();
        Ok(out)
    }

    /// The latest version of one result.
    pub fn latest(&self, publisher: &str, id: &str) -> Result<Option<StoredSummary>, StoreError> {
        self.load_latest(&result_key(publisher, id))
    }
}
