use super::*;

/// First byte of every stored record: the record layout version.
pub(super) const RECORD_V1: u8 = 1;

/// A stored summary version as kept on disk (store-private layout, version [`RECORD_V1`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RecordV1 {
    /// The body bytes exactly as signed. Empty in records written since the log holds them:
    /// the leaf at `log_index` has body, signature, acceptance time and signer, and reads take
    /// all of them from there (see [`SledStore::summary_at_leaf`]).
    #[prost(bytes = "vec", tag = "1")]
    pub(super) body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) signature: Vec<u8>,
    /// SHA-256 of the signing certificate's DER; the DER is in the `certs` tree. Empty, like
    /// `body`, in records whose leaf holds it.
    #[prost(bytes = "vec", tag = "3")]
    pub(super) signer_certificate_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub(super) body_sha256: Vec<u8>,
    #[prost(int64, tag = "5")]
    pub(super) accepted_at_ms: i64,
    /// Index of the version's leaf in the log.
    #[prost(uint64, tag = "6")]
    pub(super) log_index: u64,
}

/// A patient's sharing consent (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ConsentV1 {
    #[prost(bool, tag = "1")]
    pub(super) opted_out: bool,
    /// The member that recorded it.
    #[prost(string, tag = "2")]
    pub(super) member: String,
    #[prost(int64, tag = "3")]
    pub(super) at_ms: i64,
    #[prost(uint64, tag = "4")]
    pub(super) log_index: u64,
}

/// What a member was shown of a result (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ConsultationV1 {
    #[prost(uint32, tag = "1")]
    pub(super) version: u32,
    #[prost(bool, tag = "2")]
    pub(super) recognised: bool,
    #[prost(string, tag = "3")]
    pub(super) item_system: String,
    #[prost(string, tag = "4")]
    pub(super) item_code: String,
    #[prost(int64, tag = "5")]
    pub(super) at_ms: i64,
}

/// What a member was shown for one patient (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ShownV1 {
    #[prost(message, repeated, tag = "1")]
    pub(super) results: Vec<ShownResultV1>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ShownResultV1 {
    #[prost(string, tag = "1")]
    pub(super) publisher: String,
    #[prost(string, tag = "2")]
    pub(super) summary_id: String,
    #[prost(message, optional, tag = "3")]
    pub(super) consultation: Option<ConsultationV1>,
}

/// Statistics events that happened in the same millisecond (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct EventGroupV1 {
    #[prost(message, repeated, tag = "1")]
    pub(super) events: Vec<EventV1>,
}

/// First byte of an [`EventGroupV1`] value in `events` (a single [`EventV1`] has
/// [`RECORD_V1`]).
pub(super) const EVENT_GROUP_V1: u8 = 2;

/// A recorded decision (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DecisionV1 {
    #[prost(string, tag = "1")]
    pub(super) publisher: String,
    #[prost(string, tag = "2")]
    pub(super) summary_id: String,
    #[prost(uint32, tag = "3")]
    pub(super) version: u32,
    #[prost(bool, tag = "4")]
    pub(super) adopted: bool,
    /// Re-test reason code, empty for none.
    #[prost(string, tag = "5")]
    pub(super) reason: String,
    #[prost(string, tag = "6")]
    pub(super) note: String,
    #[prost(int64, tag = "7")]
    pub(super) at_ms: i64,
    #[prost(bool, tag = "8")]
    pub(super) recognised: bool,
}

/// A statistics event (store-private layout).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct EventV1 {
    #[prost(int64, tag = "1")]
    pub(super) at_ms: i64,
    #[prost(string, tag = "2")]
    pub(super) member: String,
    #[prost(string, tag = "3")]
    pub(super) item_system: String,
    #[prost(string, tag = "4")]
    pub(super) item_code: String,
    #[prost(uint64, tag = "5")]
    pub(super) price_fen: u64,
    /// 1 = query, 2 = decision.
    #[prost(uint32, tag = "6")]
    pub(super) kind: u32,
    #[prost(bool, tag = "7")]
    pub(super) found: bool,
    #[prost(bool, tag = "8")]
    pub(super) cross_member: bool,
    #[prost(bool, tag = "9")]
    pub(super) adopted: bool,
    #[prost(string, tag = "10")]
    pub(super) reason: String,
    /// The consultation a decision is about (empty in decisions stored before they named one).
    #[prost(string, tag = "11")]
    pub(super) consulted_publisher: String,
    #[prost(string, tag = "12")]
    pub(super) consulted_summary_id: String,
    #[prost(int64, tag = "13")]
    pub(super) consulted_at_ms: i64,
}

pub(super) fn result_key(publisher: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(publisher.len() + id.len() + 1);
    k.extend_from_slice(publisher.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Whether `rkey` is [`result_key`]`(publisher, id)`, without building it.
pub(super) fn is_result_key(rkey: &[u8], publisher: &str, id: &str) -> bool {
    rkey.len() == publisher.len() + 1 + id.len()
        && rkey.starts_with(publisher.as_bytes())
        && rkey[publisher.len()] == 0
        && rkey.ends_with(id.as_bytes())
}

pub(super) fn version_key(publisher: &str, id: &str, version: u32) -> Vec<u8> {
    let mut k = result_key(publisher, id);
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The result key (`publisher 0x00 summary_id`) a patient index key ends with: past the
/// pseudonym, the 0x00-terminated system and code, and the 8-byte time.
pub(super) fn indexed_result(key: &[u8]) -> Result<&[u8], StoreError> {
    let malformed = || StoreError::Corrupt("malformed patient index key".into());
    let rest = key.get(32..).ok_or_else(malformed)?;
    let mut zeros = rest
        .iter()
        .enumerate()
        .filter(|&(_, b)| *b == 0)
        .map(|(i, _)| i);
    let (Some(_), Some(code_end)) = (zeros.next(), zeros.next()) else {
        return Err(malformed());
    };
    rest.get(code_end + 1 + 8..).ok_or_else(malformed)
}

pub(super) fn item_prefix(patient: &Pseudonym, system: &str, code: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + system.len() + code.len() + 2 + 8 + 64);
    k.extend_from_slice(patient.as_bytes());
    k.extend_from_slice(system.as_bytes());
    k.push(0);
    k.extend_from_slice(code.as_bytes());
    k.push(0);
    k
}

pub(super) fn inv_time(t: UnixMillis) -> [u8; 8] {
    (u64::MAX - t.0.max(0) as u64).to_be_bytes()
}

/// An 8-byte big-endian number, or `None` for any other length.
pub(super) fn be_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// A summary version's key in the patient index: its patient, item and time, then its result.
pub(super) fn patient_index_key(s: &Summary) -> Vec<u8> {
    let mut key = item_prefix(&s.patient, &s.item.system, &s.item.code);
    key.extend_from_slice(&inv_time(s.performed_at));
    key.extend_from_slice(s.publisher.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(s.id.as_str().as_bytes());
    key
}

/// A patient index value: the log index of the leaf of the result's latest version, while
/// that version is the one the key was written for (layout 3), big-endian without its leading
/// zero bytes (1 to 8 bytes: three up to 16.7 million entries, for the index is most of the
/// disk each byte costs); empty otherwise (the key of a version a later one moved, and every
/// key written before layout 3): read through `latest`.
pub(super) fn index_value(leaf: Option<u64>) -> Vec<u8> {
    match leaf {
        None => Vec::new(),
        Some(index) => {
            let bytes = index.to_be_bytes();
            let skip = (index.leading_zeros() / 8).min(7) as usize;
            bytes[skip..].to_vec()
        }
    }
}

/// Reads an [`index_value`]. A value with a leading zero byte (other than the index 0) is
/// refused: each index has one encoding.
pub(super) fn read_index_value(bytes: &[u8]) -> Result<Option<u64>, StoreError> {
    let corrupt = |why: &str| {
        StoreError::Corrupt(format!(
            "a patient index value of {} bytes {why}",
            bytes.len()
        ))
    };
    match bytes {
        [] => Ok(None),
        [0, _, ..] => Err(corrupt("has a leading zero byte")),
        _ if bytes.len() > 8 => Err(corrupt("is longer than 8")),
        _ => {
            let mut raw = [0; 8];
            raw[8 - bytes.len()..].copy_from_slice(bytes);
            Ok(Some(u64::from_be_bytes(raw)))
        }
    }
}

/// A `latest` value: the version and, in values written since bodies live in the log, the
/// index of that version's leaf, so a query reads the leaf without going through the record.
pub(super) fn read_latest(bytes: &[u8]) -> Result<(u32, Option<u64>), StoreError> {
    let corrupt = || StoreError::Corrupt("a latest-version entry is neither 4 nor 12 bytes".into());
    let (version, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let version = u32::from_be_bytes(*version);
    match rest.len() {
        0 => Ok((version, None)),
        8 => Ok((
            version,
            Some(u64::from_be_bytes(rest.try_into().map_err(|_| corrupt())?)),
        )),
        _ => Err(corrupt()),
    }
}

/// The record of a version that a newer one superseded: body, signature and signer stay in
/// its log leaf; the record keeps what a republished version is checked against (digest,
/// acceptance time) and where its leaf is.
pub(super) fn superseded_record(
    body_sha256: Hash,
    accepted_at_ms: i64,
    log_index: u64,
) -> RecordV1 {
    RecordV1 {
        body: Vec::new(),
        signature: Vec::new(),
        signer_certificate_sha256: Vec::new(),
        body_sha256: body_sha256.to_vec(),
        accepted_at_ms,
        log_index,
    }
}

pub(super) fn latest_value(version: u32, log_index: u64) -> [u8; 12] {
    let mut v = [0; 12];
    v[..4].copy_from_slice(&version.to_be_bytes());
    v[4..].copy_from_slice(&log_index.to_be_bytes());
    v
}

pub(super) fn encode_v1(m: &impl Message) -> Vec<u8> {
    encode_as(RECORD_V1, m)
}

/// A record with its layout byte first.
pub(super) fn encode_as(layout: u8, m: &impl Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.encoded_len());
    v.push(layout);
    // Encoding into a Vec grows it as needed and cannot fail.
    let _ = m.encode(&mut v);
    v
}

pub(super) fn decode_v1<M: Message + Default>(raw: &[u8]) -> Result<M, StoreError> {
    match raw.split_first() {
        Some((&RECORD_V1, rest)) => M::decode(rest).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

pub(super) fn event_to_record(e: &Event) -> EventV1 {
    let mut r = EventV1 {
        at_ms: e.at.0,
        member: e.member.to_string(),
        item_system: e.item_system.clone(),
        item_code: e.item_code.clone(),
        price_fen: e.price_fen,
        ..EventV1::default()
    };
    match &e.kind {
        EventKind::Query {
            found,
            cross_member,
        } => {
            r.kind = 1;
            r.found = *found;
            r.cross_member = *cross_member;
        }
        EventKind::Decision {
            adopted,
            reason,
            consultation,
        } => {
            r.kind = 2;
            r.adopted = *adopted;
            r.reason = reason.map(|x| x.code().to_owned()).unwrap_or_default();
            if let Some(c) = consultation {
                r.consulted_publisher = c.publisher.clone();
                r.consulted_summary_id = c.summary_id.clone();
                r.consulted_at_ms = c.consulted_at.0;
            }
        }
    }
    r
}

pub(super) fn event_from_record(r: EventV1) -> Result<Event, StoreError> {
    let kind = match r.kind {
        1 => EventKind::Query {
            found: r.found,
            cross_member: r.cross_member,
        },
        2 => EventKind::Decision {
            adopted: r.adopted,
            reason: RetestReason::from_code(&r.reason),
            consultation: (!r.consulted_publisher.is_empty()).then_some(ConsultationKey {
                publisher: r.consulted_publisher,
                summary_id: r.consulted_summary_id,
                consulted_at: UnixMillis(r.consulted_at_ms),
            }),
        },
        k => return Err(StoreError::Corrupt(format!("unknown event kind {k}"))),
    };
    Ok(Event {
        at: UnixMillis(r.at_ms),
        member: InstitutionId::parse(&r.member).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        item_system: r.item_system,
        item_code: r.item_code,
        price_fen: r.price_fen,
        kind,
    })
}

pub(super) fn shown_key(member: &InstitutionId, patient: &Pseudonym) -> Vec<u8> {
    let mut k = member.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(patient.as_bytes());
    k
}

pub(super) fn consulted_key(member: &InstitutionId, publisher: &str, id: &str) -> Vec<u8> {
    let mut k = member.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&result_key(publisher, id));
    k
}

pub(super) fn decode_record(raw: &[u8]) -> Result<RecordV1, StoreError> {
    decode_v1(raw)
}
