use super::*;
use huren_core::logentry::{AccessFacts, ShownFact};

impl Hub {
    /// What the patient's consent lets this purpose see.
    pub(super) async fn gate(
        &self,
        patient: &Pseudonym,
        purpose: Purpose,
    ) -> Result<Gate, HubError> {
        Ok(Self::gate_of(self.store.opted_out(patient).await?, purpose))
    }

    /// What a patient's consent lets a query of this purpose see.
    fn gate_of(opted_out: bool, purpose: Purpose) -> Gate {
        if !opted_out {
            return Gate::default();
        }
        let emergency = purpose == Purpose::Emergency;
        if emergency {
            tracing::warn!("emergency access to the results of a patient who opted out");
        }
        Gate {
            withheld: !emergency,
            emergency_override: emergency,
        }
    }

    /// Writes what an answered query leaves behind (what the caller was shown, statistics
    /// events, the access leaf) through the journal, and waits until it is written: no answer
    /// goes out without its audit record. (Each argument is one part of the record.)
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn journal(
        &self,
        policy: &Policy,
        caller: &InstitutionId,
        shown: &[&Judged],
        asked: &[(String, String)],
        purpose: Purpose,
        requester: &str,
        method: Method,
        patient: &Pseudonym,
        gate: Gate,
        at: UnixMillis,
    ) -> Result<(), HubError> {
        let events: Vec<Event> = asked
            .iter()
            .map(|(system, code)| {
                let best = shown.iter().find(|j| {
                    j.verdict.recognised()
                        && j.stored.summary.item.system == *system
                        && j.stored.summary.item.code == *code
                });
                Event {
                    at,
                    member: caller.clone(),
                    item_system: system.clone(),
                    item_code: code.clone(),
                    price_fen: policy.item(system, code).map_or(0, |i| i.price_fen),
                    kind: EventKind::Query {
                        found: best.is_some(),
                        cross_member: best.is_some_and(|j| j.stored.summary.publisher != *caller),
                    },
                }
            })
            .collect();
        let record = QueryRecord {
            events,
            access: Access {
                at,
                caller: caller.clone(),
                purpose,
                method,
                emergency_override: gate.emergency_override,
                withheld_by_consent: gate.withheld,
                patient: *patient,
                results: shown
                    .iter()
                    .map(|j| ResultRef {
                        publisher: j.stored.receipt.publisher.to_string(),
                        summary_id: j.stored.receipt.summary_id.to_string(),
                        version: j.stored.receipt.version,
                    })
                    .collect(),
                policy_version: policy.version.clone(),
                requester: requester.to_owned(),
                facts: AccessFacts {
                    asked: asked.to_vec(),
                    shown: shown
                        .iter()
                        .map(|j| ShownFact {
                            item_system: j.stored.summary.item.system.clone(),
                            item_code: j.stored.summary.item.code.clone(),
                            recognised: j.verdict.recognised(),
                        })
                        .collect(),
                },
            },
        };
        self.journal.write(record).await
    }

    /// Attaches inclusion proofs (against one durable checkpoint) to results and their earlier
    /// versions.
    pub(super) async fn attach_proofs<'a>(
        &self,
        results: impl Iterator<Item = &'a mut Judged>,
    ) -> Result<(), HubError> {
        let results: Vec<&mut Judged> = results.collect();
        fn last_index(j: &Judged) -> u64 {
            j.earlier
                .iter()
                .map(last_index)
                .fold(j.stored.log_index, u64::max)
        }
        // Every result was durable before it was acknowledged, so a recent durable head
        // covers them without a flush per query.
        let min_size = results.iter().map(|j| last_index(j) + 1).max().unwrap_or(0);
        let head = self.store.recent_durable_head(min_size).await?;
        let (head, checkpoint) = self.checkpoint_note(head).await?;
        // Each result and its earlier versions (depth first): their indexes, then their
        // proofs from one store call, then each proof to its result in the same order.
        fn indexes_of(j: &Judged, out: &mut Vec<u64>) {
            out.push(j.stored.log_index);
            for e in &j.earlier {
                indexes_of(e, out);
            }
        }
        fn attach(
            j: &mut Judged,
            proofs: &mut std::vec::IntoIter<Vec<Hash>>,
            size: u64,
            checkpoint: &str,
        ) -> Result<(), HubError> {
            let proof = proofs.next().ok_or_else(|| {
                HubError::Store(crate::store::StoreError::Tree(
                    "the store returned fewer proofs than asked".into(),
                ))
            })?;
            j.log_proof = Some(LogProof {
                index: j.stored.log_index,
                tree_size: size,
                proof,
                checkpoint: checkpoint.to_owned(),
            });
            for e in &mut j.earlier {
                attach(e, proofs, size, checkpoint)?;
            }
            Ok(())
        }
        let mut indexes = Vec::new();
        for j in &results {
            indexes_of(j, &mut indexes);
        }
        let mut proofs = self
            .store
            .inclusion_proofs(&indexes, head.size)
            .await?
            .into_iter();
        for j in results {
            attach(j, &mut proofs, head.size, &checkpoint)?;
        }
        Ok(())
    }

    /// Whether a stored version is returned at all: not if its publisher's revocation covers
    /// it and the policy withholds such summaries.
    pub(super) fn shown_at_all(policy: &Policy, s: &StoredSummary) -> bool {
        !policy
            .revocation_covering(&s.summary.publisher, s.receipt.accepted_at)
            .is_some_and(|r| r.after == AfterRevocation::Withheld)
    }

    pub(super) fn judge(
        policy: &Policy,
        caller: &InstitutionId,
        s: StoredSummary,
        latest: bool,
        as_of: UnixMillis,
    ) -> Judged {
        let verdict = rules::judge(
            policy,
            caller,
            &s.summary,
            s.receipt.accepted_at,
            latest,
            as_of,
        );
        Judged {
            stored: s,
            verdict,
            earlier: Vec::new(),
            log_proof: None,
        }
    }

    /// The latest versions of one patient's results for some items, newest first, each with
    /// its verdict for the caller.
    pub async fn find_prior(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
        ask: &Ask,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let (opted_out, found) = self.store.find_prior_gated(query).await?;
        let gate = Self::gate_of(opted_out, ask.purpose);
        let found = if gate.withheld {
            Default::default()
        } else {
            found
        };
        let mut results: Vec<Judged> = found
            .results
            .into_iter()
            .filter(|s| Self::shown_at_all(&policy, s))
            .map(|s| Self::judge(&policy, caller, s, true, query.until))
            .collect();
        let at = now();
        let shown = results.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown,
            &query.items,
            ask.purpose,
            &ask.requester,
            Method::FindPrior,
            &query.patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(results.iter_mut()).await?;
        }
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
            withheld_by_consent: gate.withheld,
        })
    }

    /// All of one patient's results, newest first, with verdicts as of now; with
    /// `with_versions`, each result's earlier versions too.
    pub async fn history(
        &self,
        caller: &InstitutionId,
        query: &PriorQuery,
        with_versions: bool,
        ask: &Ask,
    ) -> Result<JudgedAnswer, HubError> {
        let policy = self.member_policy(caller)?;
        let at = now();
        let gate = self.gate(&query.patient, ask.purpose).await?;
        let found = if gate.withheld {
            Default::default()
        } else {
            self.store.history(query).await?
        };
        let mut results = Vec::with_capacity(found.results.len());
        for s in found
            .results
            .into_iter()
            .filter(|s| Self::shown_at_all(&policy, s))
        {
            let earlier = if with_versions && s.summary.version > 1 {
                let r = &s.receipt;
                self.store
                    .versions(r.publisher.as_str(), r.summary_id.as_str())
                    .await?
                    .into_iter()
                    .filter(|v| v.summary.version < s.summary.version)
                    .map(|v| Self::judge(&policy, caller, v, false, at))
                    .collect()
            } else {
                Vec::new()
            };
            let mut judged = Self::judge(&policy, caller, s, true, at);
            judged.earlier = earlier;
            results.push(judged);
        }
        let shown = results.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown,
            &[],
            ask.purpose,
            &ask.requester,
            Method::History,
            &query.patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(results.iter_mut()).await?;
        }
        Ok(JudgedAnswer {
            results,
            truncated: found.truncated,
            policy_version: policy.version.clone(),
            withheld_by_consent: gate.withheld,
        })
    }

    /// The order-time check: per ordered item, the newest recognised result, or why none.
    pub async fn check_order(
        &self,
        caller: &InstitutionId,
        patient: Pseudonym,
        order: Vec<OrderCode>,
        as_of: UnixMillis,
        ask: &Ask,
    ) -> Result<(Vec<OrderAnswer>, String, bool), HubError> {
        let policy = self.member_policy(caller)?;
        // Each ordered code's catalogue item (system, code, name), or why it has none.
        type Item = Result<(String, String, String), String>;
        let resolved: Vec<(OrderCode, Item)> = order
            .into_iter()
            .map(|code| {
                let item = match &code {
                    OrderCode::Catalogue { system, code } => policy
                        .item(system, code)
                        .map(|i| (i.system.clone(), i.code.clone(), i.name.clone()))
                        .ok_or_else(|| {
                            format!("{code} ({system}) is not in the alliance catalogue")
                        }),
                    OrderCode::Local(local) => policy
                        .map_local(caller, local)
                        .map(|i| (i.system.clone(), i.code.clone(), i.name.clone()))
                        .ok_or_else(|| {
                            format!(
                                "local code {local} is not mapped to a catalogue item for {caller}"
                            )
                        }),
                };
                (code, item)
            })
            .collect();
        let mut items: Vec<(String, String)> = Vec::new();
        for (system, code, _) in resolved.iter().filter_map(|(_, i)| i.as_ref().ok()) {
            if !items.iter().any(|(s, c)| s == system && c == code) {
                items.push((system.clone(), code.clone()));
            }
        }
        // One read for every item, with the patient's consent (one statement on PostgreSQL).
        // Unlimited: each item is cut to `max_results` below, as a query of its own would be.
        let (gate, found) = if items.is_empty() {
            (self.gate(&patient, ask.purpose).await?, Vec::new())
        } else {
            let (opted_out, found) = self
                .store
                .find_prior_gated(&PriorQuery {
                    patient,
                    items,
                    from: UnixMillis(0),
                    until: as_of,
                    limit: usize::MAX,
                })
                .await?;
            let gate = Self::gate_of(opted_out, ask.purpose);
            (
                gate,
                if gate.withheld {
                    Vec::new()
                } else {
                    found.results
                },
            )
        };
        let mut answers = Vec::with_capacity(resolved.len());
        let mut shown = Vec::new();
        let mut asked = Vec::new();
        for (code, item) in resolved {
            let (system, code_in_catalogue, name) = match item {
                Ok(i) => i,
                Err(explanation) => {
                    answers.push(OrderAnswer {
                        asked: code,
                        item: None,
                        best: None,
                        explanation,
                        candidates: 0,
                    });
                    continue;
                }
            };
            // This item's results, newest performed first (the store's order), at most
            // `max_results`.
            let judged: Vec<Judged> = found
                .iter()
                .filter(|s| {
                    s.summary.item.system == system && s.summary.item.code == code_in_catalogue
                })
                .take(self.max_results)
                .filter(|s| Self::shown_at_all(&policy, s))
                .map(|s| Self::judge(&policy, caller, s.clone(), true, as_of))
                .collect();
            let candidates = judged.len();
            let best = judged.iter().find(|j| j.verdict.recognised()).cloned();
            let explanation = match (&best, judged.first()) {
                (None, None) if gate.withheld => WITHHELD.to_owned(),
                (Some(b), _) => format!(
                    "recognised ({}) from {}",
                    b.verdict.hr_mark.as_deref().unwrap_or("no mark"),
                    b.stored.summary.publisher
                ),
                (None, None) => "no result on file for this patient".to_owned(),
                (None, Some(newest)) => format!(
                    "no recognised result; the newest is not recognised: {}",
                    newest
                        .verdict
                        .reasons
                        .iter()
                        .map(|(_, text)| text.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            if let Some(b) = &best {
                shown.push(b.clone());
            }
            asked.push((system.clone(), code_in_catalogue.clone()));
            answers.push(OrderAnswer {
                asked: code,
                item: Some((system, code_in_catalogue, name)),
                best,
                explanation,
                candidates,
            });
        }
        let at = now();
        let shown_refs = shown.iter().collect::<Vec<_>>();
        self.journal(
            &policy,
            caller,
            &shown_refs,
            &asked,
            ask.purpose,
            &ask.requester,
            Method::CheckOrder,
            &patient,
            gate,
            at,
        )
        .await?;
        if ask.with_proofs {
            self.attach_proofs(answers.iter_mut().filter_map(|a| a.best.as_mut()))
                .await?;
        }
        Ok((answers, policy.version.clone(), gate.withheld))
    }
}
