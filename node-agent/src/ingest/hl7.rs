//! A small HL7 v2 (ER7, "pipe and hat") reader: framing, character sets, delimiters, escape
//! sequences, repetitions, components and subcomponents. It knows nothing about message
//! structure; `oru.rs` reads ORU^R01 on top of it.
//!
//! Why our own: the Rust HL7 v2 crates we looked at (2026-11) were either self-described as
//! experimental, AGPL-licensed, or very new with a fast-moving API and a newer minimum Rust than
//! this workspace. The ER7 grammar we need is small and is pinned by the tests below.
//!
//! How bytes become a [`Message`]:
//!
//! 1. [`split_messages`]: a file holds one or more messages, either MLLP-framed
//!    (`0x0B message 0x1C 0x0D`, several frames allowed) or plain (each message starts with an
//!    `MSH` segment; batch envelopes `FHS`/`BHS`/`BTS`/`FTS` are dropped). Splitting works on
//!    bytes: segment separators (CR, LF) and the framing bytes never occur inside a UTF-8 or
//!    GB18030 multi-byte character, so no character is cut.
//! 2. [`decode`]: the message bytes become text. UTF-8, GB18030 (which covers GBK and GB2312)
//!    and ISO 8859-1 are understood; MSH-18 (character set) is honoured; see [`Charset`].
//! 3. [`Message::parse`]: MSH-1 is the field separator and MSH-2 the other encoding characters
//!    (component, repetition, escape, subcomponent, optionally truncation), so a sender's own
//!    delimiters work. Segments end at CR (LF and CR LF are accepted too).
//!
//! Values stay escaped in the parsed message and are split on demand ([`Value`]); only a leaf
//! is unescaped ([`Value::text`]), so an escaped delimiter (`\F\ \S\ \T\ \R\ \E\`) never splits
//! anything. `\Xhh..\` is decoded in the message's character set; `\.br\` becomes a line break;
//! the other formatting sequences (`\H\ \N\ \.sp\ \.in\ ...`) are dropped.

use std::borrow::Cow;

/// MLLP start block.
pub const MLLP_START: u8 = 0x0B;
/// MLLP end block (followed by a carriage return).
pub const MLLP_END: u8 = 0x1C;

/// Why bytes are not a readable HL7 v2 message. Messages never quote patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7Error {
    #[error("not an HL7 v2 message: it does not start with an MSH segment")]
    NoMsh,
    #[error("MLLP framing: {0}")]
    Framing(String),
    #[error("character set: {0}")]
    Charset(String),
    #[error("MSH-1/MSH-2 encoding characters are not valid: {0}")]
    EncodingCharacters(String),
    #[error("segment {index}: {reason}")]
    Segment { index: usize, reason: String },
}

/// Character sets this reader decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
    Latin1,
}

/// How to choose the character set of a message (`[inbox] hl7_charset` in the agent config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CharsetSetting {
    /// MSH-18 if it names a known set; otherwise UTF-8 when the bytes are valid UTF-8, else
    /// GB18030 (what Chinese LIS exports use when they do not say).
    #[default]
    Auto,
    /// Always UTF-8.
    Utf8,
    /// Always GB18030.
    Gb18030,
}

/// The delimiters of one message, from MSH-1 and MSH-2, and its character set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: Option<char>,
    pub truncation: Option<char>,
    pub charset: Charset,
}

/// A parsed message: its encoding and its segments in order.
#[derive(Clone, Debug)]
pub struct Message {
    pub encoding: Encoding,
    pub segments: Vec<Segment>,
}

/// One segment: its id and its fields, still escaped. `fields[n]` is field `n` in HL7
/// numbering (`fields[0]` is the segment id; for MSH, `fields[1]` is the field separator and
/// `fields[2]` the encoding characters).
#[derive(Clone, Debug)]
pub struct Segment {
    fields: Vec<String>,
}

/// One message of a file: its bytes (without framing) and the parsed message or why not.
pub type ReadMessage<'a> = (&'a [u8], Result<Message, Hl7Error>);

/// Splits a file's bytes into the bytes of each message (without MLLP framing).
pub fn split_messages(bytes: &[u8]) -> Result<Vec<&[u8]>, Hl7Error> {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(Hl7Error::NoMsh)?;
    if bytes[start] == MLLP_START {
        split_mllp(&bytes[start..])
    } else {
        split_plain(strip_bom(&bytes[start..]))
    }
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(b)
}

fn split_mllp(mut rest: &[u8]) -> Result<Vec<&[u8]>, Hl7Error> {
    let mut messages = Vec::new();
    loop {
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        rest = &rest[skip..];
        if rest.is_empty() {
            break;
        }
        let n = messages.len() + 1;
        if rest[0] != MLLP_START {
            return Err(Hl7Error::Framing(format!(
                "unexpected data after frame {}: every message must be framed 0x0B … 0x1C 0x0D",
                n - 1
            )));
        }
        let end = rest
            .iter()
            .position(|&b| b == MLLP_END)
            .ok_or_else(|| Hl7Error::Framing(format!("frame {n} has no end block (0x1C 0x0D)")))?;
        let body = &rest[1..end];
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(b"\r").unwrap_or(rest);
        let body = strip_bom(body);
        if !body.starts_with(b"MSH") {
            return Err(Hl7Error::NoMsh);
        }
        messages.push(body);
    }
    if messages.is_empty() {
        return Err(Hl7Error::NoMsh);
    }
    Ok(messages)
}

/// The start offsets of the segments in `bytes` (after CR or LF), skipping empty lines.
fn segment_starts(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    (0..bytes.len()).filter(move |&i| {
        (i == 0 || matches!(bytes[i - 1], b'\r' | b'\n')) && !matches!(bytes[i], b'\r' | b'\n')
    })
}

fn split_plain(bytes: &[u8]) -> Result<Vec<&[u8]>, Hl7Error> {
    const ENVELOPE: [&[u8]; 4] = [b"FHS", b"BHS", b"BTS", b"FTS"];
    let mut messages = Vec::new();
    let mut current: Option<usize> = None;
    for i in segment_starts(bytes) {
        let seg = &bytes[i..];
        let is_envelope = ENVELOPE.iter().any(|e| seg.starts_with(e));
        if seg.starts_with(b"MSH") || is_envelope {
            if let Some(s) = current.take() {
                messages.push(&bytes[s..i]);
            }
            if !is_envelope {
                current = Some(i);
            }
        } else if current.is_none() {
            // A segment before any MSH (and not a batch envelope).
            return Err(Hl7Error::NoMsh);
        }
    }
    if let Some(s) = current {
        messages.push(&bytes[s..]);
    }
    if messages.is_empty() {
        return Err(Hl7Error::NoMsh);
    }
    Ok(messages)
}

/// Why a file's bytes look like an HL7 v2 file that is not yet whole (still being written, or
/// cut short), or `None`. Such a file is held, never published in part:
///
/// - MLLP: the last frame has no end block (`0x1C 0x0D`);
/// - plain: the last segment has no segment terminator (CR or LF), i.e. the file ends inside a
///   segment;
/// - batches: a `BHS` without its `BTS`, or a `BTS-1` (batch message count) that differs from
///   the messages in the batch; an `FHS` without its `FTS`, or an `FTS-1` (file batch count)
///   that differs from the batches in the file.
pub fn incomplete(bytes: &[u8]) -> Option<String> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let bytes = &bytes[start..];
    if bytes[0] == MLLP_START {
        let last_start = bytes.iter().rposition(|&b| b == MLLP_START)?;
        let tail = &bytes[last_start..];
        return match tail.iter().position(|&b| b == MLLP_END) {
            None => Some(
                "the last MLLP frame has no end block (0x1C 0x0D): the file ends inside a message"
                    .into(),
            ),
            Some(end) if tail.get(end + 1).is_none() => Some(
                "the last MLLP frame ends with 0x1C without the 0x0D that closes the end block"
                    .into(),
            ),
            Some(_) => None,
        };
    }
    if !matches!(bytes.last(), Some(b'\r' | b'\n')) {
        return Some(
            "the last segment has no segment terminator (carriage return): the file ends inside a segment"
                .into(),
        );
    }
    // Batch envelopes: counts of messages (BTS-1) and batches (FTS-1).
    let mut messages_in_batch: Option<usize> = None;
    let mut batches = 0usize;
    let mut file_open = false;
    let mut file_closed = false;
    for i in segment_starts(bytes) {
        let seg = &bytes[i..];
        let seg = &seg[..seg
            .iter()
            .position(|&b| matches!(b, b'\r' | b'\n'))
            .unwrap_or(seg.len())];
        let id = seg.get(..3).unwrap_or(seg);
        let first_field = || -> Option<usize> {
            let sep = *seg.get(3)?;
            let f = seg[4..].split(|&b| b == sep).next()?;
            let f = std::str::from_utf8(f).ok()?.trim();
            if f.is_empty() { None } else { f.parse().ok() }
        };
        match id {
            b"FHS" => file_open = true,
            b"BHS" => {
                if messages_in_batch.is_some() {
                    return Some(format!(
                        "batch {batches} has no BTS (batch trailer) before the next BHS"
                    ));
                }
                batches += 1;
                messages_in_batch = Some(0);
            }
            b"MSH" => {
                if let Some(n) = messages_in_batch.as_mut() {
                    *n += 1;
                }
            }
            b"BTS" => {
                let Some(n) = messages_in_batch.take() else {
                    return Some("a BTS (batch trailer) without its BHS (batch header)".into());
                };
                if let Some(count) = first_field()
                    && count != n
                {
                    return Some(format!(
                        "BTS-1 (batch message count) of batch {batches} says {count} messages, the batch holds {n}"
                    ));
                }
            }
            b"FTS" => {
                file_closed = true;
                if let Some(count) = first_field()
                    && count != batches
                {
                    return Some(format!(
                        "FTS-1 (file batch count) says {count} batches, the file holds {batches}"
                    ));
                }
            }
            _ => {}
        }
    }
    if messages_in_batch.is_some() {
        return Some(format!(
            "batch {batches} has no BTS (batch trailer): the file ends inside a batch"
        ));
    }
    if file_open && !file_closed {
        return Some(
            "the FHS (file header) has no FTS (file trailer): the file ends inside it".into(),
        );
    }
    None
}

/// Normalised MSH-18 name: upper case, without spaces, hyphens and underscores.
fn charset_name(msh18: &str) -> String {
    msh18
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .collect::<String>()
        .to_ascii_uppercase()
}

fn declared_charset(name: &str) -> Option<Charset> {
    let n = charset_name(name);
    if n.is_empty() || n == "ASCII" {
        None
    } else if n.contains("GB18030") || n.starts_with("GBK") || n.starts_with("GB2312") {
        Some(Charset::Gb18030)
    } else if n.starts_with("UNICODE") || n == "UTF8" {
        Some(Charset::Utf8)
    } else if n == "8859/1" || n == "ISO8859/1" || n == "ISO88591" {
        Some(Charset::Latin1)
    } else {
        None
    }
}

fn decode_with(bytes: &[u8], charset: Charset) -> Option<String> {
    match charset {
        Charset::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Charset::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(Cow::into_owned),
        // Windows-1252 is the WHATWG decoder for ISO-8859-1; it never fails.
        Charset::Latin1 => Some(
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        ),
    }
}

fn charset_label(c: Charset) -> &'static str {
    match c {
        Charset::Utf8 => "UTF-8",
        Charset::Gb18030 => "GB18030",
        Charset::Latin1 => "ISO 8859-1",
    }
}

/// Decodes one message's bytes to text (see [`CharsetSetting`]); refuses bytes that are not
/// valid in the chosen character set rather than guessing characters.
pub fn decode(bytes: &[u8], setting: CharsetSetting) -> Result<(String, Charset), Hl7Error> {
    let bytes = strip_bom(bytes);
    let forced = match setting {
        CharsetSetting::Auto => None,
        CharsetSetting::Utf8 => Some(Charset::Utf8),
        CharsetSetting::Gb18030 => Some(Charset::Gb18030),
    };
    if let Some(c) = forced {
        return decode_with(bytes, c).map(|t| (t, c)).ok_or_else(|| {
            Hl7Error::Charset(format!(
                "the message is not valid {} (the agent is configured for it)",
                charset_label(c)
            ))
        });
    }
    // First reading: UTF-8 if valid, else GB18030. Then MSH-18 decides.
    let (text, first) = match std::str::from_utf8(bytes) {
        Ok(t) => (t.to_owned(), Charset::Utf8),
        Err(_) => match decode_with(bytes, Charset::Gb18030) {
            Some(t) => (t, Charset::Gb18030),
            None => {
                return Err(Hl7Error::Charset(
                    "the message is neither valid UTF-8 nor valid GB18030".into(),
                ));
            }
        },
    };
    let declared = msh18(&text).and_then(|m| declared_charset(&m));
    match declared {
        None => Ok((text, first)),
        Some(c) if c == first => Ok((text, first)),
        Some(c) => decode_with(bytes, c).map(|t| (t, c)).ok_or_else(|| {
            Hl7Error::Charset(format!(
                "MSH-18 declares {} but the message is not valid {}",
                charset_label(c),
                charset_label(c)
            ))
        }),
    }
}

/// MSH-18 (first repetition, first component), read leniently for charset detection.
fn msh18(text: &str) -> Option<String> {
    let msh = text.split(['\r', '\n']).next()?;
    let fs = msh.chars().nth(3)?;
    // MSH-n is the (n-1)th item after splitting on the field separator.
    let raw = msh.split(fs).nth(17)?;
    let enc: Vec<char> = msh.split(fs).nth(1)?.chars().collect();
    let mut v = raw;
    for sep in [enc.get(1), enc.first()].into_iter().flatten() {
        v = v.split(*sep).next().unwrap_or("");
    }
    Some(v.to_owned())
}

impl Message {
    /// Parses decoded message text.
    pub fn parse(text: &str, charset: Charset) -> Result<Message, Hl7Error> {
        let text = text.trim_start_matches('\u{FEFF}');
        if !text.starts_with("MSH") {
            return Err(Hl7Error::NoMsh);
        }
        let mut chars = text.chars().skip(3);
        let field = chars
            .next()
            .ok_or_else(|| Hl7Error::EncodingCharacters("MSH-1 is missing".into()))?;
        let enc: Vec<char> = chars.take_while(|&c| c != field).collect();
        let encoding = encoding_from(field, &enc, charset)?;
        let mut segments = Vec::new();
        for (i, line) in text
            .split(['\r', '\n'])
            .filter(|l| !l.trim().is_empty())
            .enumerate()
        {
            segments.push(Segment::parse(line, &encoding, i + 1)?);
        }
        Ok(Message { encoding, segments })
    }

    /// Splits, decodes and parses every message in a file's bytes. Each message comes with its
    /// own bytes (for the report digest) or the reason it could not be read.
    pub fn read_all(
        bytes: &[u8],
        setting: CharsetSetting,
    ) -> Result<Vec<ReadMessage<'_>>, Hl7Error> {
        Ok(split_messages(bytes)?
            .into_iter()
            .map(|raw| {
                let parsed = decode(raw, setting).and_then(|(t, c)| Message::parse(&t, c));
                (raw, parsed)
            })
            .collect())
    }

    /// The MSH segment.
    pub fn msh(&self) -> &Segment {
        // `parse` only succeeds when the first segment is MSH.
        &self.segments[0]
    }

    /// A value of this message's encoding (for tests and callers holding raw text).
    pub fn value<'a>(&'a self, raw: &'a str) -> Value<'a> {
        Value {
            raw,
            enc: &self.encoding,
        }
    }

    /// The segment's fields as [`Value`]s: `get(seg, 3)` is field 3 of `seg`.
    pub fn field<'a>(&'a self, seg: &'a Segment, n: usize) -> Value<'a> {
        Value {
            raw: seg.raw(n),
            enc: &self.encoding,
        }
    }

    /// The repetitions of field `n` of `seg` (MSH-1 and MSH-2 are never split).
    pub fn repetitions<'a>(&'a self, seg: &'a Segment, n: usize) -> Vec<Value<'a>> {
        let raw = seg.raw(n);
        if seg.id() == "MSH" && n <= 2 || raw.is_empty() {
            return vec![self.value(raw)];
        }
        raw.split(self.encoding.repetition)
            .map(|r| self.value(r))
            .collect()
    }

    /// The first repetition of field `n` of `seg`.
    pub fn first<'a>(&'a self, seg: &'a Segment, n: usize) -> Value<'a> {
        let raw = seg.raw(n);
        if seg.id() == "MSH" && n <= 2 {
            return self.value(raw);
        }
        self.value(raw.split(self.encoding.repetition).next().unwrap_or(""))
    }

    /// Shorthand: the unescaped text of `SEG-field.component.subcomponent` (first repetition,
    /// 1-based; 0 for "the whole").
    pub fn text(&self, seg: &Segment, field: usize, component: usize, sub: usize) -> String {
        let mut v = self.first(seg, field);
        if component > 0 {
            v = v.component(component);
            if sub > 0 {
                v = v.subcomponent(sub);
            }
        }
        v.text()
    }
}

fn encoding_from(field: char, enc: &[char], charset: Charset) -> Result<Encoding, Hl7Error> {
    let bad = |why: &str| Hl7Error::EncodingCharacters(why.to_owned());
    if enc.len() < 2 || enc.len() > 5 {
        return Err(bad(
            "MSH-2 must hold 2 to 5 encoding characters (usually ^~\\&)",
        ));
    }
    let mut all = vec![field];
    all.extend_from_slice(enc);
    for (i, c) in all.iter().enumerate() {
        if c.is_alphanumeric() || c.is_whitespace() || c.is_control() {
            return Err(bad(&format!(
                "{c:?} cannot be a delimiter (letters, digits, spaces and control characters cannot)"
            )));
        }
        if all[..i].contains(c) {
            return Err(bad(&format!("{c:?} is used for two delimiters")));
        }
    }
    Ok(Encoding {
        field,
        component: enc[0],
        repetition: enc[1],
        escape: enc.get(2).copied(),
        subcomponent: enc.get(3).copied(),
        truncation: enc.get(4).copied(),
        charset,
    })
}

impl Segment {
    fn parse(line: &str, enc: &Encoding, index: usize) -> Result<Segment, Hl7Error> {
        let id: String = line.chars().take(3).collect();
        if id.len() != 3
            || !id
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(Hl7Error::Segment {
                index,
                reason: "does not start with a three-character segment id".into(),
            });
        }
        let rest = &line[3..];
        let mut fields = vec![id.clone()];
        if id == "MSH" {
            // MSH-1 is the separator itself; MSH-2 the encoding characters (not split).
            fields.push(enc.field.to_string());
            let rest = rest.strip_prefix(enc.field).unwrap_or(rest);
            fields.extend(rest.split(enc.field).map(str::to_owned));
        } else if !rest.is_empty() {
            let Some(rest) = rest.strip_prefix(enc.field) else {
                return Err(Hl7Error::Segment {
                    index,
                    reason: format!("{id} is not followed by the field separator"),
                });
            };
            fields.extend(rest.split(enc.field).map(str::to_owned));
        }
        Ok(Segment { fields })
    }

    /// The segment id, e.g. `OBX`.
    pub fn id(&self) -> &str {
        &self.fields[0]
    }

    /// Field `n` as sent (still escaped; all repetitions); empty if absent.
    pub fn raw(&self, n: usize) -> &str {
        self.fields.get(n).map_or("", String::as_str)
    }

    /// The number of the last field present.
    pub fn len(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A field, repetition, component or subcomponent, still escaped.
#[derive(Clone, Copy, Debug)]
pub struct Value<'a> {
    raw: &'a str,
    enc: &'a Encoding,
}

impl<'a> Value<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// True for an absent value and for the HL7 null `""`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || self.raw == "\"\""
    }

    /// Component `n` (1-based).
    pub fn component(&self, n: usize) -> Value<'a> {
        self.nth(self.enc.component, n)
    }

    /// Subcomponent `n` (1-based) of a component.
    pub fn subcomponent(&self, n: usize) -> Value<'a> {
        match self.enc.subcomponent {
            Some(s) => self.nth(s, n),
            None if n == 1 => *self,
            None => Value {
                raw: "",
                enc: self.enc,
            },
        }
    }

    /// All components.
    pub fn components(&self) -> Vec<Value<'a>> {
        self.raw
            .split(self.enc.component)
            .map(|raw| Value { raw, enc: self.enc })
            .collect()
    }

    fn nth(&self, sep: char, n: usize) -> Value<'a> {
        let raw = if n == 0 {
            ""
        } else {
            self.raw.split(sep).nth(n - 1).unwrap_or("")
        };
        Value { raw, enc: self.enc }
    }

    /// The unescaped text. Delimiters inside the value (if it was not split further) are kept
    /// as they are; the HL7 null `""` reads as empty.
    pub fn text(&self) -> String {
        if self.raw == "\"\"" {
            return String::new();
        }
        unescape(self.raw, self.enc)
    }
}

/// Decodes the escape sequences of one value (see the module doc).
pub fn unescape(raw: &str, enc: &Encoding) -> String {
    let Some(esc) = enc.escape else {
        return raw.to_owned();
    };
    if !raw.contains(esc) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find(esc) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // An escape character that opens nothing: keep it as text (lenient, like most
            // interface engines).
            out.push_str(&rest[pos..]);
            return out;
        };
        let seq = &after[..end];
        match decode_sequence(seq, enc) {
            Some(s) => {
                out.push_str(&s);
                rest = &after[end + esc.len_utf8()..];
            }
            None => {
                // Unknown sequence: keep the escape character literally and go on after it.
                out.push(esc);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_sequence(seq: &str, enc: &Encoding) -> Option<String> {
    let one = |c: Option<char>| c.map(String::from);
    match seq {
        "F" => Some(enc.field.to_string()),
        "S" => Some(enc.component.to_string()),
        "R" => Some(enc.repetition.to_string()),
        "T" => one(enc.subcomponent),
        "E" => one(enc.escape),
        "P" => one(enc.truncation),
        ".br" => Some("\n".into()),
        "H" | "N" => Some(String::new()),
        s if s.starts_with('.') => {
            // .sp, .in, .ti, .sk, .ce, .fi, .nf: layout hints; a line break for .sp, else nothing.
            Some(if s.starts_with(".sp") {
                "\n".into()
            } else {
                String::new()
            })
        }
        s if s.starts_with('X') && s.len() > 1 => {
            let bytes = hex::decode(&s[1..]).ok()?;
            Some(match enc.charset {
                Charset::Utf8 => String::from_utf8_lossy(&bytes).into_owned(),
                Charset::Gb18030 => encoding_rs::GB18030.decode(&bytes).0.into_owned(),
                Charset::Latin1 => encoding_rs::WINDOWS_1252.decode(&bytes).0.into_owned(),
            })
        }
        // Locally defined (\Z..\) sequences carry no text we can interpret.
        s if s.starts_with('Z') => Some(String::new()),
        _ => None,
    }
}

/// Parses an HL7 DTM/TS value `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]` to Unix milliseconds.
/// At least a date is required; a value without offset is taken at `default_offset`.
pub fn parse_dtm(value: &str, default_offset: time::UtcOffset) -> Result<i64, String> {
    let v = value.trim();
    // TS may carry a degree-of-precision component: take the first component only.
    let v = v.split('^').next().unwrap_or("");
    let (digits, offset) = match v.find(['+', '-']) {
        Some(p) => (&v[..p], Some(&v[p..])),
        None => (v, None),
    };
    let (main, frac) = match digits.split_once('.') {
        Some((m, f)) => (m, f),
        None => (digits, ""),
    };
    let bad = || format!("{value:?} is not an HL7 date/time such as 20261118074500+0800");
    if main.len() < 8
        || main.len() % 2 != 0
        || main.len() > 14
        || !main.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| main.get(r).map_or(Ok(0), |s| s.parse::<u32>());
    let (year, month, day) = (
        num(0..4).map_err(|_| bad())? as i32,
        num(4..6).map_err(|_| bad())?,
        num(6..8).map_err(|_| bad())?,
    );
    let (hour, minute, second) = (
        num(8..10).map_err(|_| bad())?,
        num(10..12).map_err(|_| bad())?,
        num(12..14).map_err(|_| bad())?,
    );
    let month =
        time::Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(day).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    let millis = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 4 {
            return Err(bad());
        }
        let padded = format!("{frac:0<3}");
        padded[..3].parse::<u16>().map_err(|_| bad())?
    };
    let t = time::Time::from_hms_milli(
        u8::try_from(hour).map_err(|_| bad())?,
        u8::try_from(minute).map_err(|_| bad())?,
        u8::try_from(second).map_err(|_| bad())?,
        millis,
    )
    .map_err(|_| bad())?;
    let offset = match offset {
        None => default_offset,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let d = &o[1..];
            if d.len() != 4 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let h: i8 = d[..2].parse().map_err(|_| bad())?;
            let m: i8 = d[2..].parse().map_err(|_| bad())?;
            time::UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())?
        }
    };
    let dt = time::PrimitiveDateTime::new(date, t).assume_offset(offset);
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message {
        Message::parse(text, Charset::Utf8).unwrap()
    }

    fn seg<'a>(m: &'a Message, id: &str) -> &'a Segment {
        m.segments.iter().find(|s| s.id() == id).unwrap()
    }

    const ORU: &str = "MSH|^~\\&|LIS|SHXPH|HUREN|ALLIANCE|20261118090000+0800||ORU^R01^ORU_R01|MSG0001|P|2.5.1\r\
PID|1||610102196703151235^^^&2.16.156.10011.1.3&ISO^NNCHN~H00123^^^SHXPH^MR||张^三||19670315|M\r\
OBR|1|P-1|LAB-1^LIS|CBC^血常规^L\r\
OBX|1|NM|HGB^血红蛋白^L||128|g/L|130-175|L|||F\r";

    #[test]
    fn fields_components_repetitions_subcomponents() {
        let m = parse(ORU);
        let msh = m.msh();
        assert_eq!(msh.raw(1), "|");
        assert_eq!(msh.raw(2), "^~\\&");
        assert_eq!(m.text(msh, 9, 1, 0), "ORU");
        assert_eq!(m.text(msh, 9, 2, 0), "R01");
        assert_eq!(m.text(msh, 10, 0, 0), "MSG0001");
        let pid = seg(&m, "PID");
        let ids = m.repetitions(pid, 3);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].component(5).text(), "NNCHN");
        assert_eq!(
            ids[0].component(4).subcomponent(2).text(),
            "2.16.156.10011.1.3"
        );
        assert_eq!(ids[1].component(4).text(), "SHXPH");
        assert_eq!(m.text(pid, 5, 1, 0), "张");
        let obx = seg(&m, "OBX");
        assert_eq!(m.text(obx, 5, 0, 0), "128");
        assert_eq!(m.text(obx, 11, 0, 0), "F");
        // Absent fields and components are empty, never an error.
        assert_eq!(m.text(obx, 30, 2, 1), "");
        assert_eq!(obx.len(), 11);
    }

    #[test]
    fn other_encoding_characters() {
        // Field #, component $, repetition *, escape !, subcomponent %.
        let text = "MSH#$*!%#LIS#H#X#Y#20261118##ORU$R01#1#P#2.4\rOBX#1#ST#A$B%C*D##x!F!y!S!z\r";
        let m = parse(text);
        assert_eq!(m.encoding.field, '#');
        assert_eq!(m.encoding.escape, Some('!'));
        let msh = m.msh();
        assert_eq!(m.text(msh, 9, 2, 0), "R01");
        let obx = seg(&m, "OBX");
        let reps = m.repetitions(obx, 3);
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].component(2).subcomponent(2).text(), "C");
        assert_eq!(reps[1].text(), "D");
        assert_eq!(m.text(obx, 5, 0, 0), "x#y$z");
    }

    #[test]
    fn escape_sequences() {
        let m = parse(ORU);
        let v = |raw: &str| m.value(raw).text();
        assert_eq!(v("a\\F\\b"), "a|b");
        assert_eq!(v("a\\S\\b\\T\\c\\R\\d\\E\\e"), "a^b&c~d\\e");
        assert_eq!(v("line 1\\.br\\line 2"), "line 1\nline 2");
        assert_eq!(v("\\H\\bold\\N\\"), "bold");
        // \X..\ is hex in the message's character set: 肝 in UTF-8 is E8 82 9D.
        assert_eq!(v("\\XE8829D\\功能"), "肝功能");
        // Unknown or unterminated sequences are kept as text.
        assert_eq!(v("C:\\Q\\x"), "C:\\Q\\x");
        assert_eq!(v("50\\"), "50\\");
        // Escaped delimiters do not split.
        let m2 = parse("MSH|^~\\&|A|B|C|D|20261118||ORU^R01|1|P|2.5\rOBX|1|ST|X||a\\S\\b^c\r");
        let obx = seg(&m2, "OBX");
        assert_eq!(m2.first(obx, 5).component(1).text(), "a^b");
        assert_eq!(m2.first(obx, 5).component(2).text(), "c");
        // HL7 null.
        assert_eq!(v("\"\""), "");
    }

    #[test]
    fn gb18030_escape_hex_uses_the_message_charset() {
        let enc = Encoding {
            charset: Charset::Gb18030,
            ..*parse(ORU).value("").enc
        };
        // 肝 in GB18030 is B8 CE.
        assert_eq!(unescape("\\XB8CE\\", &enc), "肝");
    }

    #[test]
    fn mllp_frames_and_plain_files() {
        let one = ORU.as_bytes();
        let mut framed = vec![MLLP_START];
        framed.extend_from_slice(one);
        framed.extend_from_slice(&[MLLP_END, b'\r', MLLP_START]);
        framed.extend_from_slice(one);
        framed.extend_from_slice(&[MLLP_END, b'\r', b'\n']);
        let msgs = split_messages(&framed).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], one);

        let unterminated = [&[MLLP_START][..], one].concat();
        assert!(matches!(
            split_messages(&unterminated),
            Err(Hl7Error::Framing(_))
        ));

        // Plain: two messages in a batch envelope, LF line ends.
        let batch = format!(
            "FHS|^~\\&|LIS\nBHS|^~\\&|LIS\n{}{}BTS|2\nFTS|1\n",
            ORU.replace('\r', "\n"),
            ORU.replace('\r', "\n")
        );
        let msgs = split_messages(batch.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 2);
        let m = Message::parse(std::str::from_utf8(msgs[1]).unwrap(), Charset::Utf8).unwrap();
        assert_eq!(m.segments.len(), 4);
        assert_eq!(m.segments[3].id(), "OBX");
    }

    #[test]
    fn gb18030_bytes_are_decoded() {
        // The trail byte of some GB18030 characters is '|' (0x7C), '^' or '\\', so decoding
        // must come before splitting fields: take the character encoded 81 7C.
        let tricky = encoding_rs::GB18030.decode(&[0x81, 0x7C]).0.into_owned();
        assert_eq!(tricky.chars().count(), 1);
        let text = ORU.replace("张", &tricky);
        let (encoded, _, _) = encoding_rs::GB18030.encode(&text);
        assert!(encoded.windows(2).any(|w| w == [0x81, 0x7C]));
        let (text, charset) = decode(&encoded, CharsetSetting::Auto).unwrap();
        assert_eq!(charset, Charset::Gb18030);
        let m = Message::parse(&text, charset).unwrap();
        assert_eq!(m.text(seg(&m, "PID"), 5, 1, 0), tricky);
        assert_eq!(m.text(seg(&m, "OBX"), 3, 2, 0), "血红蛋白");

        // MSH-18 naming GB 18030 is honoured; naming UTF-8 over GB18030 bytes is refused.
        let declared = ORU.replace("|2.5.1\r", "|2.5.1|||||CHN|GB 18030-2000\r");
        let (encoded, _, _) = encoding_rs::GB18030.encode(&declared);
        let (text, charset) = decode(&encoded, CharsetSetting::Auto).unwrap();
        assert_eq!(charset, Charset::Gb18030);
        assert!(text.contains("血红蛋白"));
        let lying = ORU.replace("|2.5.1\r", "|2.5.1|||||CHN|UNICODE UTF-8\r");
        let (encoded, _, _) = encoding_rs::GB18030.encode(&lying);
        let err = decode(&encoded, CharsetSetting::Auto).unwrap_err();
        assert!(err.to_string().contains("declares UTF-8"), "{err}");
        // Forced UTF-8 refuses GB18030 bytes.
        assert!(decode(&encoded, CharsetSetting::Utf8).is_err());
        // UTF-8 stays UTF-8.
        assert_eq!(
            decode(ORU.as_bytes(), CharsetSetting::Auto).unwrap().1,
            Charset::Utf8
        );
    }

    #[test]
    fn malformed_messages() {
        assert_eq!(
            split_messages(b"PID|1||123\rOBX|1\r").unwrap_err(),
            Hl7Error::NoMsh
        );
        assert_eq!(split_messages(b"  \n").unwrap_err(), Hl7Error::NoMsh);
        assert!(matches!(
            Message::parse("MSH|^|A\r", Charset::Utf8),
            Err(Hl7Error::EncodingCharacters(_))
        ));
        assert!(matches!(
            Message::parse("MSHa^~\\&|A\r", Charset::Utf8),
            Err(Hl7Error::EncodingCharacters(_))
        ));
        assert!(matches!(
            Message::parse("MSH|^^\\&|A\r", Charset::Utf8),
            Err(Hl7Error::EncodingCharacters(_))
        ));
        let err = Message::parse("MSH|^~\\&|A\rP\r", Charset::Utf8).unwrap_err();
        assert!(matches!(err, Hl7Error::Segment { index: 2, .. }), "{err}");
        let err = Message::parse("MSH|^~\\&|A\rOBXX|1\r", Charset::Utf8).unwrap_err();
        assert!(matches!(err, Hl7Error::Segment { index: 2, .. }), "{err}");
    }

    #[test]
    fn dtm_values() {
        let cst = time::UtcOffset::from_hms(8, 0, 0).unwrap();
        // 2026-11-18T07:45:00+08:00
        assert_eq!(
            parse_dtm("20261118074500+0800", cst).unwrap(),
            1_794_959_100_000
        );
        assert_eq!(parse_dtm("20261118074500", cst).unwrap(), 1_794_959_100_000);
        assert_eq!(parse_dtm("202611180745", cst).unwrap(), 1_794_959_100_000);
        assert_eq!(
            parse_dtm("20261117234500+0000", cst).unwrap(),
            1_794_959_100_000
        );
        assert_eq!(
            parse_dtm("20261118074500.25+0800", cst).unwrap(),
            1_794_959_100_250
        );
        assert_eq!(parse_dtm("20261118", cst).unwrap(), 1_794_931_200_000);
        for bad in [
            "",
            "2026",
            "202611",
            "2026111807450",
            "20261318",
            "2026-11-18",
            "20261118+08",
        ] {
            assert!(parse_dtm(bad, cst).is_err(), "{bad}");
        }
    }
}
