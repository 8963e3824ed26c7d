//! `huren-hub --check`: the store checked against itself, offline, without changing it.
//!
//! The log first: every leaf is there, in order (kept on its own below `runs_from`, in runs
//! within one group of four from there on), and decodes; the tree rebuilt from the leaves
//! has the stored size and root, and every stored tile and node equals the rebuilt one. Then
//! what points into the log: each latest-version entry and superseded-version record names a
//! summary leaf of that very result and version, each access index entry an access leaf of
//! that patient, each consent record a consent leaf of that patient, and each summary leaf's
//! signing certificate is stored. A patient index entry that names a leaf (layout 3) names
//! its result's latest version, written under that very key; entries that name none may be
//! stale by design (a query re-checks them), so of those only an entry whose result is
//! unknown altogether is reported.

use super::*;

use huren_core::merkle::{MemoryTree, NodeReader};

/// Most problems listed one by one; past them only the count goes on.
const MAX_LISTED: usize = 200;

/// What `--check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Log entries read.
    pub leaves: u64,
    /// Of those, summary versions.
    pub summaries: u64,
    /// Everything wrong, each a sentence naming where (the first [`MAX_LISTED`]).
    pub problems: Vec<String>,
    /// How many problems there were in all.
    pub problem_count: usize,
}

impl CheckReport {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(what);
        }
    }
}

impl SledStore {
    /// Checks the store against itself (see the module doc) and reports what is wrong. Reads
    /// only: opening the store (which finishes or undoes a write a crash cut short) is the one
    /// change it makes, as any start of the hub does.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let i = &self.inner;
        let mut report = CheckReport::default();
        let head = self.tree_head()?;
        let mut tree = MemoryTree::new();
        let mut certs_seen: HashSet<Hash> = HashSet::new();
        // (publisher, summary id, version) -> leaf index, and the patient of each result.
        let mut summary_leaves: HashMap<(String, String, u32), u64> = HashMap::new();
        let mut patients: HashMap<Vec<u8>, Pseudonym> = HashMap::new();
        let mut entries: HashMap<u64, Entry> = HashMap::new();
        self.walk_leaves(&mut report, |report, index, leaf| {
            tree.push(leaf);
            report.leaves += 1;
            match Entry::decode(leaf) {
                Err(e) => report.problem(format!("log leaf {index} does not decode: {e}")),
                Ok(entry) => {
                    if let Entry::Summary {
                        signer_certificate_sha256,
                        body,
                        ..
                    } = &entry
                    {
                        report.summaries += 1;
                        if certs_seen.insert(*signer_certificate_sha256)
                            && !i.certs.contains_key(signer_certificate_sha256)?
                        {
                            report.problem(format!(
                                "log leaf {index}: its signing certificate is not stored"
                            ));
                        }
                        match Summary::from_stored_body_bytes(body) {
                            Ok(s) => {
                                let rkey = result_key(s.publisher.as_str(), s.id.as_str());
                                patients.insert(rkey, s.patient);
                                summary_leaves.insert(
                                    (s.publisher.to_string(), s.id.to_string(), s.version),
                                    index,
                                );
                            }
                            Err(e) => report
                                .problem(format!("log leaf {index}: the summary body is bad: {e}")),
                        }
                    }
                    if !matches!(entry, Entry::Summary { .. }) {
                        entries.insert(index, entry);
                    }
                }
            }
            Ok(())
        })?;
        if report.leaves != head.size {
            report.problem(format!(
                "the log's size is {} but {} leaves are stored in order",
                head.size, report.leaves
            ));
        } else if tree.root() != head.root {
            report.problem(
                "the root of the stored leaves is not the log's root: a leaf or the stored tree was changed"
                    .into(),
            );
        }
        self.check_tree(&tree, &mut report)?;
        self.check_references(&summary_leaves, &patients, &entries, &mut report)?;
        Ok(report)
    }

    /// Gives `visit` every stored leaf in index order: those kept singly in `log_leaves`
    /// (below `runs_from`), then each run's in `log_runs`. A key out of place, a run that is
    /// not one, or a run reaching past its group of [`RUN_LEAVES`] is a problem; the walk
    /// stops at the first leaf it cannot find.
    fn walk_leaves(
        &self,
        report: &mut CheckReport,
        mut visit: impl FnMut(&mut CheckReport, u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let mut next = 0u64;
        for kv in i.log_leaves.iter() {
            let (key, leaf) = kv?;
            let Some(index) = be_u64(&key) else {
                report.problem(format!("a log leaf key is {} bytes, not 8", key.len()));
                continue;
            };
            if index >= i.runs_from {
                report.problem(format!(
                    "log leaf {index} is kept on its own, but leaves from {} on are kept in runs",
                    i.runs_from
                ));
                break;
            }
            if index != next {
                report.problem(format!(
                    "log leaf {next} is missing (the next stored one is {index})"
                ));
                return Ok(());
            }
            visit(report, index, &leaf)?;
            next += 1;
        }
        if next != i.runs_from {
            report.problem(format!(
                "log leaf {next} is missing (the leaves kept on their own end there, runs begin at {})",
                i.runs_from
            ));
            return Ok(());
        }
        for kv in i.log_runs.iter() {
            let (key, raw) = kv?;
            let Some(last) = be_u64(&key) else {
                report.problem(format!("a log run key is {} bytes, not 8", key.len()));
                continue;
            };
            let ranges = match run_leaves(&raw) {
                Ok(ranges) => ranges,
                Err(why) => {
                    report.problem(format!(
                        "the log run ending at leaf {last} is not one: {why}"
                    ));
                    return Ok(());
                }
            };
            let first = last
                .checked_add(1)
                .and_then(|end| end.checked_sub(ranges.len() as u64));
            if first != Some(next) {
                report.problem(format!(
                    "log leaf {next} is missing (the next run holds {} leaves ending at {last})",
                    ranges.len()
                ));
                return Ok(());
            }
            if next / RUN_LEAVES != last / RUN_LEAVES {
                report.problem(format!(
                    "the log run of leaves {next} to {last} reaches past its group of {RUN_LEAVES}"
                ));
            }
            for (index, at) in (next..).zip(ranges) {
                visit(report, index, &raw[at])?;
            }
            next = last + 1;
        }
        Ok(())
    }

    /// Every stored tile and node equals the one rebuilt from the leaves.
    fn check_tree(&self, tree: &MemoryTree, report: &mut CheckReport) -> Result<(), StoreError> {
        let i = &self.inner;
        for kv in i.log_tiles.iter() {
            let (key, value) = kv?;
            let Some(tile) = be_u64(&key) else {
                report.problem(format!("a log tile key is {} bytes, not 8", key.len()));
                continue;
            };
            for (k, stored) in tile_hashes(&value).into_iter().enumerate() {
                let index = tile * TILE_LEAVES + k as u64;
                if tree.node(0, index).ok() != Some(stored) {
                    report.problem(format!(
                        "log tile {tile}: the hash of leaf {index} is not the leaf's hash"
                    ));
                }
            }
        }
        for kv in i.log_nodes.iter() {
            let (key, value) = kv?;
            let (Some(&level), Some(index)) = (key.first(), key.get(1..).and_then(be_u64)) else {
                report.problem(format!("a log node key is {} bytes, not 9", key.len()));
                continue;
            };
            if tree.node(level, index).ok().as_ref().map(|h| h.as_slice()) != Some(&value[..]) {
                report.problem(format!(
                    "log node ({level}, {index}) is not the hash of the leaves below it"
                ));
            }
        }
        Ok(())
    }

    /// What points into the log points at the right leaves.
    fn check_references(
        &self,
        summary_leaves: &HashMap<(String, String, u32), u64>,
        patients: &HashMap<Vec<u8>, Pseudonym>,
        entries: &HashMap<u64, Entry>,
        report: &mut CheckReport,
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let names = |key: &[u8]| -> Option<(String, String)> {
            let text = std::str::from_utf8(key).ok()?;
            let (p, id) = text.split_once('\0')?;
            Some((p.to_owned(), id.to_owned()))
        };
        for kv in i.latest.iter() {
            let (key, value) = kv?;
            let Some((publisher, id)) = names(&key) else {
                report.problem("a latest-version entry has a malformed key".into());
                continue;
            };
            match read_latest(&value) {
                Err(e) => report.problem(format!("latest version of {publisher}/{id}: {e}")),
                Ok((version, Some(index))) => {
                    if summary_leaves.get(&(publisher.clone(), id.clone(), version)) != Some(&index)
                    {
                        report.problem(format!(
                            "the latest version of {publisher}/{id} names log leaf {index}, which is not version {version} of it"
                        ));
                    }
                }
                // Written before bodies lived in the log: the record holds the body.
                Ok((_, None)) => {}
            }
        }
        for kv in i.summaries.iter() {
            let (key, value) = kv?;
            let record = match decode_record(&value) {
                Ok(r) => r,
                Err(e) => {
                    report.problem(format!("a version record does not decode: {e}"));
                    continue;
                }
            };
            let Some(split) = key.len().checked_sub(5) else {
                report.problem("a version record has a malformed key".into());
                continue;
            };
            let (Some((publisher, id)), Ok(version)) = (
                names(&key[..split]),
                <[u8; 4]>::try_from(&key[split + 1..]).map(u32::from_be_bytes),
            ) else {
                report.problem("a version record has a malformed key".into());
                continue;
            };
            if record.body.is_empty()
                && summary_leaves.get(&(publisher.clone(), id.clone(), version))
                    != Some(&record.log_index)
            {
                report.problem(format!(
                    "the record of {publisher}/{id} version {version} names log leaf {}, which is not that version",
                    record.log_index
                ));
            }
        }
        for kv in i.by_patient.iter() {
            let (key, value) = kv?;
            let rkey = indexed_result(&key)?;
            let name = || String::from_utf8_lossy(rkey).replace('\0', "/");
            let latest = i.latest.get(rkey)?;
            if !patients.contains_key(rkey) && latest.is_none() {
                report.problem(format!(
                    "a patient index entry names a result that is not stored ({})",
                    name()
                ));
            }
            let index = match read_index_value(&value) {
                Ok(Some(index)) => index,
                Ok(None) => continue,
                Err(StoreError::Corrupt(why)) => {
                    report.problem(format!("the patient index entry of {}: {why}", name()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let latest_leaf = latest
                .as_deref()
                .map(read_latest)
                .transpose()
                .ok()
                .flatten();
            if latest_leaf.and_then(|(_, leaf)| leaf) != Some(index) {
                report.problem(format!(
                    "a patient index entry of {} names log leaf {index}, which is not its latest version",
                    name()
                ));
                continue;
            }
            // The latest-version check above has found that leaf to be a summary.
            let indexed = self
                .summary_leaf(index)
                .ok()
                .and_then(|leaf| Summary::from_stored_body_bytes(&leaf.body).ok())
                .map(|s| patient_index_key(&s));
            if indexed.as_deref() != Some(&key[..]) {
                report.problem(format!(
                    "a patient index entry of {} names log leaf {index}, whose patient, item or time is not the entry's",
                    name()
                ));
            }
        }
        for kv in i.access.iter() {
            let (key, _) = kv?;
            let (Some(patient), Some(index)) = (key.get(..32), key.get(40..).and_then(be_u64))
            else {
                report.problem("an access index entry has a malformed key".into());
                continue;
            };
            match entries.get(&index) {
                Some(Entry::Access { pseudonym, .. }) if pseudonym.as_slice() == patient => {}
                _ => report.problem(format!(
                    "an access index entry names log leaf {index}, which is not an access to that patient"
                )),
            }
        }
        for kv in i.consent.iter() {
            let (key, value) = kv?;
            let record: ConsentV1 = decode_v1(&value)?;
            match entries.get(&record.log_index) {
                Some(Entry::Consent {
                    pseudonym,
                    opted_out,
                    ..
                }) if pseudonym.as_slice() == &key[..] && *opted_out == record.opted_out => {}
                _ => report.problem(format!(
                    "a consent record names log leaf {}, which is not that consent change",
                    record.log_index
                )),
            }
        }
        Ok(())
    }
}
