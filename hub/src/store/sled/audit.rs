use super::*;

/// The log leaf of an access.
pub(crate) fn access_leaf(a: &Access) -> Vec<u8> {
    Entry::Access {
        at: a.at,
        caller: a.caller.to_string(),
        purpose: a.purpose,
        method: a.method,
        emergency_override: a.emergency_override,
        withheld_by_consent: a.withheld_by_consent,
        pseudonym: *a.patient.as_bytes(),
        results: a.results.clone(),
        policy_version: Some(a.policy_version.clone()),
        requester: Some(a.requester.clone()),
        facts: Some(a.facts.clone()),
    }
    .encode()
}

impl SledStore {
    /// Records a batch of answered queries in one go: what each member was shown (so it can
    /// record decisions on those results), the statistics events, and one access leaf each,
    /// appended to the log in a single atomic write. Called by the hub's journal thread, which
    /// gathers concurrent queries into one batch (group commit, like publishes).
    pub fn record_query_batch(&self, batch: &[QueryRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut shown: Vec<(Vec<u8>, &Access)> = Vec::new();
        let mut by_ms: Vec<(i64, Vec<EventV1>)> = Vec::new();
        for q in batch {
            if !q.access.results.is_empty() {
                shown.push((shown_key(&q.access.caller, &q.access.patient), &q.access));
            }
            for e in &q.events {
                match by_ms.iter_mut().find(|(at, _)| *at == e.at.0) {
                    Some((_, group)) => group.push(event_to_record(e)),
                    None => by_ms.push((e.at.0, vec![event_to_record(e)])),
                }
            }
        }
        let mut events = Vec::with_capacity(by_ms.len());
        for (at, group) in by_ms {
            let value = match <[EventV1; 1]>::try_from(group) {
                Ok([one]) => encode_v1(&one),
                Err(group) => encode_as(EVENT_GROUP_V1, &EventGroupV1 { events: group }),
            };
            events.push((self.event_key(UnixMillis(at))?, value));
        }
        let accesses: Vec<&Access> = batch.iter().map(|q| &q.access).collect();
        self.write_journal(&shown, &events, &accesses)
    }

    /// Writes consultations, events and access leaves (appended in order) as one write set
    /// under one hold of the log.
    pub(super) fn write_journal(
        &self,
        shown: &[(Vec<u8>, &Access)],
        events: &[([u8; 16], Vec<u8>)],
        accesses: &[&Access],
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let leaves: Vec<Vec<u8>> = accesses.iter().map(|a| access_leaf(a)).collect();
        let mut log = self.log_state()?;
        let mut growth = Growth::new(&log);
        let mut ws = WriteSet::new();
        // Each member and patient's record, updated by every query of the batch in order.
        let mut updated: HashMap<&[u8], (ShownV1, Option<sled::IVec>)> = HashMap::new();
        for (key, a) in shown {
            let (record, _) = match updated.entry(key.as_slice()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let raw = i.shown.get(key)?;
                    let stored = match &raw {
                        Some(raw) => decode_v1(raw)?,
                        None => ShownV1::default(),
                    };
                    e.insert((stored, raw))
                }
            };
            for r in a.shown() {
                let consultation = Some(ConsultationV1 {
                    version: r.version,
                    recognised: r.recognised,
                    item_system: r.item_system.to_owned(),
                    item_code: r.item_code.to_owned(),
                    at_ms: a.at.0,
                });
                match record
                    .results
                    .iter_mut()
                    .find(|x| x.publisher == r.publisher && x.summary_id == r.summary_id)
                {
                    Some(x) => x.consultation = consultation,
                    None => record.results.push(ShownResultV1 {
                        publisher: r.publisher.to_owned(),
                        summary_id: r.summary_id.to_owned(),
                        consultation,
                    }),
                }
            }
        }
        for (key, (record, before)) in updated {
            ws.replace(TreeId::Shown, key, encode_v1(&record), before.as_deref());
        }
        for (k, v) in events {
            ws.add(TreeId::Events, k.as_slice(), v.as_slice());
        }
        let mut access_keys = Vec::with_capacity(accesses.len());
        for (a, leaf) in accesses.iter().zip(leaves) {
            let index = growth.push(&mut ws, leaf);
            let mut key = a.patient.as_bytes().to_vec();
            key.extend_from_slice(&(a.at.0.max(0) as u64).to_be_bytes());
            key.extend_from_slice(&index.to_be_bytes());
            access_keys.push(key);
        }
        // The index after the leaves it points to (the last run is written by `finish`).
        let (next, completed) = growth.finish(&mut ws);
        for key in access_keys {
            ws.add(TreeId::Access, key, Vec::new());
        }
        ws.apply(&**i)?;
        *log = next;
        self.set_applied(log.head(), &completed);
        Ok(())
    }

    pub(super) fn event_key(&self, at: UnixMillis) -> Result<[u8; 16], StoreError> {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(at.0.max(0) as u64).to_be_bytes());
        k[8..].copy_from_slice(&self.inner.db.generate_id()?.to_be_bytes());
        Ok(k)
    }

    /// What `member` was last shown of a result of `patient`, if it consulted it.
    pub fn consultation(
        &self,
        member: &InstitutionId,
        patient: &Pseudonym,
        publisher: &str,
        id: &str,
    ) -> Result<Option<Consultation>, StoreError> {
        let i = &self.inner;
        let mut found = None;
        if let Some(raw) = i.shown.get(shown_key(member, patient))? {
            let record: ShownV1 = decode_v1(&raw)?;
            found = record
                .results
                .into_iter()
                .find(|r| r.publisher == publisher && r.summary_id == id)
                .and_then(|r| r.consultation);
        }
        if found.is_none()
            && let Some(raw) = i.consulted.get(consulted_key(member, publisher, id))?
        {
            found = Some(decode_v1(&raw)?);
        }
        let Some(c) = found else {
            return Ok(None);
        };
        Ok(Some(Consultation {
            version: c.version,
            recognised: c.recognised,
            item_system: c.item_system,
            item_code: c.item_code,
            at: UnixMillis(c.at_ms),
        }))
    }

    /// Records a decision durably, once per (member, decision id).
    pub async fn record_decision(&self, d: &DecisionRecord) -> Result<DecisionOutcome, StoreError> {
        Ok(self.record_decision_logged(d).await?.0)
    }

    /// [`SledStore::record_decision`], also saying where a newly recorded decision's leaf is in the
    /// log (`None` for an already recorded one).
    pub async fn record_decision_logged(
        &self,
        d: &DecisionRecord,
    ) -> Result<(DecisionOutcome, Option<Logged>), StoreError> {
        let mut key = d.member.as_str().as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(d.decision_id.as_bytes());
        let record = DecisionV1 {
            publisher: d.publisher.to_string(),
            summary_id: d.summary_id.clone(),
            version: d.version,
            adopted: d.adopted,
            reason: d.reason.map(|r| r.code().to_owned()).unwrap_or_default(),
            note: d.note.clone(),
            at_ms: d.at.0,
            recognised: d.recognised,
        };
        let leaf = d.leaf();
        let event_key = self.event_key(d.at)?;
        let event = encode_v1(&event_to_record(&d.event));
        let value = encode_v1(&record);
        let i = &self.inner;
        let (outcome, logged) = {
            let mut log = self.log_state()?;
            match i.decisions.get(&key)? {
                Some(raw) => {
                    let old: DecisionV1 = decode_v1(&raw)?;
                    if old.publisher != record.publisher
                        || old.summary_id != record.summary_id
                        || old.version != record.version
                        || old.adopted != record.adopted
                        || old.reason != record.reason
                    {
                        return Err(StoreError::DecisionIdReused {
                            decision_id: d.decision_id.clone(),
                        });
                    }
                    let outcome = DecisionOutcome::AlreadyRecorded {
                        at: UnixMillis(old.at_ms),
                        recognised: old.recognised,
                    };
                    (outcome, None)
                }
                None => {
                    let mut growth = Growth::new(&log);
                    let mut ws = WriteSet::new();
                    let index = growth.push(&mut ws, leaf);
                    let (next, completed) = growth.finish(&mut ws);
                    ws.add(TreeId::Events, event_key, event);
                    ws.add(TreeId::Decisions, key, value);
                    ws.apply(&**i)?;
                    *log = next;
                    self.set_applied(log.head(), &completed);
                    let logged = Logged {
                        index,
                        head: log.head(),
                    };
                    (DecisionOutcome::Recorded { at: d.at }, Some(logged))
                }
            }
        };
        self.commit().await?;
        Ok((outcome, logged))
    }

    /// Appends an access leaf and indexes it by patient, in one atomic write. Not flushed on its
    /// own (like the statistics); [`SledStore::durable_head`] flushes before a checkpoint covers it.
    pub fn log_access(&self, a: &Access) -> Result<(), StoreError> {
        self.log_accesses(&[a])
    }

    /// Appends access leaves, in order, in one atomic write under one hold of the log.
    pub fn log_accesses(&self, batch: &[&Access]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_journal(&[], &[], batch)
    }

    /// Records a patient's opt-out (or opt-back-in) as told to `member`, durably and logged.
    /// Returns whether the state changed; a leaf is logged either way.
    pub async fn set_consent(
        &self,
        patient: &Pseudonym,
        opted_out: bool,
        member: &InstitutionId,
        at: UnixMillis,
    ) -> Result<(bool, Logged), StoreError> {
        let leaf = Entry::Consent {
            at,
            member: member.to_string(),
            pseudonym: *patient.as_bytes(),
            opted_out,
        }
        .encode();
        let i = &self.inner;
        let (changed, index, head) = {
            let mut log = self.log_state()?;
            let mut growth = Growth::new(&log);
            let value = encode_v1(&ConsentV1 {
                opted_out,
                member: member.to_string(),
                at_ms: at.0,
                log_index: growth.next_index(),
            });
            let raw = i.consent.get(patient.as_bytes())?;
            let before = match &raw {
                Some(raw) => decode_v1::<ConsentV1>(raw)?.opted_out,
                None => false,
            };
            let mut ws = WriteSet::new();
            let index = growth.push(&mut ws, leaf);
            let (next, completed) = growth.finish(&mut ws);
            ws.replace(
                TreeId::Consent,
                patient.as_bytes().as_slice(),
                value,
                raw.as_deref(),
            );
            ws.apply(&**i)?;
            let changed = before != opted_out;
            *log = next;
            self.set_applied(log.head(), &completed);
            (changed, index, log.head())
        };
        self.commit().await?;
        Ok((changed, Logged { index, head }))
    }

    /// Appends a policy leaf, durably.
    pub async fn append_policy(&self, leaf: Vec<u8>) -> Result<Logged, StoreError> {
        let i = &self.inner;
        let (index, head) = {
            let mut log = self.log_state()?;
            let mut growth = Growth::new(&log);
            let mut ws = WriteSet::new();
            let index = growth.push(&mut ws, leaf);
            let (next, completed) = growth.finish(&mut ws);
            let before = i.log_meta.get(POLICY_KEY)?;
            ws.replace(
                TreeId::LogMeta,
                POLICY_KEY,
                index.to_be_bytes(),
                before.as_deref(),
            );
            ws.apply(&**i)?;
            *log = next;
            self.set_applied(log.head(), &completed);
            (index, log.head())
        };
        self.commit().await?;
        Ok(Logged { index, head })
    }

    /// The latest policy leaf appended, with its index.
    pub fn latest_policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(raw) = self.inner.log_meta.get(POLICY_KEY)? else {
            return Ok(None);
        };
        let index = <[u8; 8]>::try_from(raw.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("log_meta policy is not a u64".into()))?;
        Ok(Some((index, self.leaf(index)?)))
    }

    /// Whether the patient has opted out of sharing.
    pub fn opted_out(&self, patient: &Pseudonym) -> Result<bool, StoreError> {
        match self.inner.consent.get(patient.as_bytes())? {
            Some(raw) => Ok(decode_v1::<ConsentV1>(&raw)?.opted_out),
            None => Ok(false),
        }
    }

    /// Log indexes of the accesses to a patient's results in `[from, to)`, oldest first.
    pub fn accesses(
        &self,
        patient: &Pseudonym,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<u64>, StoreError> {
        let key = |t: UnixMillis| {
            let mut k = patient.as_bytes().to_vec();
            k.extend_from_slice(&(t.0.max(0) as u64).to_be_bytes());
            k
        };
        let mut out = Vec::new();
        for entry in self.inner.access.range(key(from)..key(to)) {
            let (k, _) = entry?;
            let index = k
                .get(40..48)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt("malformed access index key".into()))?;
            out.push(index);
        }
        Ok(out)
    }

    /// Events in `[from, to)`, oldest first.
    pub fn events(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<Event>, StoreError> {
        let start = (from.0.max(0) as u64).to_be_bytes();
        let end = (to.0.max(0) as u64).to_be_bytes();
        let mut out = Vec::new();
        for entry in self.inner.events.range(start..end) {
            let (_, raw) = entry?;
            if raw.first() == Some(&EVENT_GROUP_V1) {
                let group: EventGroupV1 = EventGroupV1::decode(&raw[1..])
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                for e in group.events {
                    out.push(event_from_record(e)?);
                }
            } else {
                out.push(event_from_record(decode_v1(&raw)?)?);
            }
        }
        Ok(out)
    }
}

/// One result a member was shown for a patient, as [`SledStore::shown_records`] lists them.
#[derive(Clone, Debug)]
pub struct ShownRecord {
    pub member: InstitutionId,
    pub patient: Pseudonym,
    pub publisher: String,
    pub summary_id: String,
    pub consultation: Consultation,
}

impl SledStore {
    /// Every result each member was last shown of each patient (what decisions are checked
    /// against), for copying the store. The older per-result layout (`consulted`, which does
    /// not name the patient) is left out; returns its number of entries too.
    pub fn shown_records(&self) -> Result<(Vec<ShownRecord>, usize), StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.shown.iter() {
            let (key, raw) = entry?;
            let malformed = || StoreError::Corrupt("malformed shown key".into());
            let split = key.len().checked_sub(33).ok_or_else(malformed)?;
            if key.get(split) != Some(&0) {
                return Err(malformed());
            }
            let member = std::str::from_utf8(&key[..split])
                .ok()
                .and_then(|m| InstitutionId::parse(m).ok())
                .ok_or_else(malformed)?;
            let patient = Pseudonym::from_slice(&key[split + 1..]).ok_or_else(malformed)?;
            let record: ShownV1 = decode_v1(&raw)?;
            for r in record.results {
                let Some(c) = r.consultation else { continue };
                out.push(ShownRecord {
                    member: member.clone(),
                    patient,
                    publisher: r.publisher,
                    summary_id: r.summary_id,
                    consultation: Consultation {
                        version: c.version,
                        recognised: c.recognised,
                        item_system: c.item_system,
                        item_code: c.item_code,
                        at: UnixMillis(c.at_ms),
                    },
                });
            }
        }
        Ok((out, self.inner.consulted.len()))
    }

    /// A signing certificate's DER by the SHA-256 of it, for copying the store.
    pub fn certificate_der(&self, hash: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.certificate(hash)?.to_vec())
    }
}
