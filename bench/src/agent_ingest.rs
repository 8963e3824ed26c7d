//! The agent's ingest path (`--only ingest`): an HL7 v2 file of ORU^R01 messages turned into
//! signed, durably queued outbox records by the agent's own `Ingestor` (parse, map,
//! pseudonymise, decide versions, sign, write), on one thread, beside the floor of that work:
//! one summary signature per result, on one core.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pki_types::CertificateDer;
use pki_types::pem::PemObject;

use huren_agent::ingest::{IngestSettings, Ingestor};
use huren_agent::mapping::Mapping;
use huren_agent::store::Store;
use huren_core::identity::InstitutionId;
use huren_core::pseudonym::PseudonymKey;
use huren_core::signing::SummarySigner;

/// The member whose mapping (node-agent/examples) the messages are written for.
const MEMBER: &str = "shx-prov-people";

/// One measured file.
pub struct IngestRun {
    pub messages: usize,
    pub results: usize,
    pub per_second: f64,
    pub cpu_per_result: Duration,
}

/// An 18-character resident identity card number from its first 17 digits, so each
/// generated patient is a valid one.
fn with_check_digit(first17: &str) -> anyhow::Result<String> {
    let check = huren_core::pseudonym::ric_check_char(first17.as_bytes())
        .with_context(|| format!("{first17} is not 17 digits"))?;
    Ok(format!("{first17}{check}"))
}

/// `n` ORU^R01 messages, each for a patient of its own (ten results per patient across the
/// file) with two orders (a blood count of three observations, a liver panel of two), as a
/// laboratory system exports them: segments ended by CR, one message after another.
pub fn oru_file(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n * 1100);
    for i in 0..n {
        let patient = i / 5;
        let id = with_check_digit(&format!("6101021967{:07}", patient % 10_000_000))?;
        let segments = [
            format!(
                "MSH|^~\\&|LIS|SHXPH|HUREN|ALLIANCE|20261118091500+0800||ORU^R01^ORU_R01|BENCH{i:09}|P|2.5.1|||||CHN|UNICODE UTF-8"
            ),
            format!(
                "PID|1||{id}^^^&2.16.156.10011.1.3&ISO^NNCHN~MR{patient:08}^^^SHXPH^MR||王^建国||19670315|M|||雁塔路1号^^西安^陕西^710061"
            ),
            "PV1|1|O|内科门诊^^^SHXPH||||1234^李^医生".to_string(),
            format!("ORC|RE|P{i:09}A|LAB-{i:09}-A^LIS"),
            format!(
                "OBR|1|P{i:09}A|LAB-{i:09}-A^LIS|CBC^血常规^L|||20261118074500+0800||||||||BLD&全血&HL70070|||||||20261118090000+0800||HM|F"
            ),
            "OBX|1|NM|HGB^血红蛋白^L||128|g/L|130-175|L|||F|||20261118074500+0800".to_string(),
            "OBX|2|NM|PLT^血小板^L||210|10\\S\\9/L|125-350|N|||F|||20261118074500+0800".to_string(),
            "OBX|3|NM|MCHC^平均红细胞血红蛋白浓度^L||330|g/L|316-354|N|||F|||".to_string(),
            format!("ORC|RE|P{i:09}B|LAB-{i:09}-B^LIS"),
            format!(
                "OBR|2|P{i:09}B|LAB-{i:09}-B^LIS|LFT^肝功能^L|||20261118074500+0800||||||||SER&血清&HL70070|||||||20261118100000+0800||CH|F"
            ),
            "OBX|1|NM|ALT^丙氨酸氨基转移酶^L||56|U/L|9-50|H|||F|||".to_string(),
            "OBX|2|SN|CREA^肌酐^L||<^44|umol/L|57-111|L|||F|||".to_string(),
        ];
        for s in segments {
            out.extend_from_slice(s.as_bytes());
            out.push(b'\r');
        }
    }
    Ok(out)
}

fn signer(pki: &huren_certs_dev::DevPki) -> anyhow::Result<SummarySigner> {
    let member = pki.issue_member(&InstitutionId::parse(MEMBER)?)?;
    let cert = CertificateDer::from_pem_slice(member.signing.cert_pem.as_bytes())
        .context("the member's signing certificate")?
        .to_vec();
    Ok(SummarySigner::from_pkcs8_pem(
        &member.signing.key_pem,
        cert,
    )?)
}

/// CPU time of the calling thread.
fn thread_cpu() -> anyhow::Result<Duration> {
    // /proc/thread-self/stat: fields 14 and 15 (utime, stime) in clock ticks, after the
    // command name in brackets.
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/thread-self/stat has no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("/proc/thread-self/stat is short")?
            .parse()?)
    };
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 10))
}

/// Ingests a file of `messages` messages into a fresh outbox in `dir` on this thread and
/// checks that every result was queued exactly once.
pub fn ingest_once(
    dir: &Path,
    pki: &huren_certs_dev::DevPki,
    mapping: &Mapping,
    messages: usize,
) -> anyhow::Result<IngestRun> {
    let file = oru_file(messages)?;
    let store = Arc::new(Store::open(&dir.join(format!("outbox-{messages}")))?);
    let ingestor = Ingestor::new(
        InstitutionId::parse(MEMBER)?,
        Arc::new(signer(pki)?),
        PseudonymKey::new([7; 32]),
        mapping.clone(),
        IngestSettings::default(),
        store.clone(),
    );
    let cpu = thread_cpu()?;
    let t = Instant::now();
    let outcome = ingestor.ingest(&file, None)?;
    store.flush()?;
    let wall = t.elapsed();
    let cpu = thread_cpu()?.saturating_sub(cpu);
    ensure!(
        outcome.rejected.is_empty() && outcome.incomplete.is_none(),
        "the generated file was refused in part: {:?} {:?}",
        outcome.rejected.first().map(|r| &r.reasons),
        outcome.incomplete
    );
    let queued = store.counts().pending;
    ensure!(
        queued == outcome.queued && queued > 0,
        "{} results were queued but the outbox holds {queued}",
        outcome.queued
    );
    Ok(IngestRun {
        messages,
        results: queued,
        per_second: queued as f64 / wall.as_secs_f64().max(1e-9),
        cpu_per_result: cpu / u32::try_from(queued).unwrap_or(u32::MAX),
    })
}

/// Summary signatures per second on this thread: the floor of ingesting (each result is
/// signed once).
pub fn signing_rate(pki: &huren_certs_dev::DevPki, seconds: f64) -> anyhow::Result<f64> {
    let signer = signer(pki)?;
    let s = super::summary(1, 20, huren_core::summary::UnixMillis::now().0, "SIGN")?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        signer.sign(&s)?;
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Measures each file size on one thread and prints a line per size, then whether the rate
/// per result held from the smallest file to the largest.
pub fn run(sizes: &[usize], seconds: f64) -> anyhow::Result<Vec<IngestRun>> {
    let dir = tempfile::Builder::new()
        .prefix("huren-bench-ingest-")
        .tempdir()?;
    let pki = huren_certs_dev::DevPki::generate()?;
    let mapping = Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../node-agent/examples")
            .join(format!("mapping-{MEMBER}.toml")),
    )?;
    let floor = signing_rate(&pki, seconds.min(2.0))?;
    println!();
    println!("the agent's ingest, HL7 v2 ORU^R01 file -> signed outbox records, on one thread:");
    println!(
        "  {:<40}{:>9.0}/s                                      (baseline)",
        "Ed25519 summary signing, one core", floor
    );
    let mut runs = Vec::new();
    for &messages in sizes {
        let r = ingest_once(dir.path(), &pki, &mapping, messages)?;
        println!(
            "  {:<40}{:>9.0}/s  {:>3.0}% of signing  target >= 10000/s  cpu {:.0} us/result  ({} results)",
            format!("{messages} messages per file"),
            r.per_second,
            100.0 * r.per_second / floor,
            r.cpu_per_result.as_secs_f64() * 1e6,
            r.results
        );
        runs.push(r);
    }
    if let (Some(first), Some(last)) = (runs.first(), runs.last())
        && runs.len() > 1
    {
        let ratio = last.per_second / first.per_second;
        println!(
            "  linear in file size: {} ({} messages at {:.0}% of the rate of {})",
            if (0.8..=1.2).contains(&ratio) {
                "yes"
            } else {
                "no"
            },
            last.messages,
            100.0 * ratio,
            first.messages
        );
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_patients_have_valid_identity_numbers() -> anyhow::Result<()> {
        // A published example number and its check digit.
        assert_eq!(with_check_digit("11010519491231002")?, "11010519491231002X");
        assert!(with_check_digit("1101051949123100").is_err());
        assert!(with_check_digit("1101051949123100A").is_err());
        Ok(())
    }

    /// A small file goes through the real ingest path: every result queued once, figures
    /// measured.
    #[test]
    fn a_small_file_is_queued_whole_and_measured() -> anyhow::Result<()> {
        let runs = run(&[20, 40], 0.2)?;
        assert_eq!(runs.len(), 2);
        assert!(runs[0].results >= 20 && runs[1].results == 2 * runs[0].results);
        assert!(runs.iter().all(|r| r.per_second > 0.0));
        Ok(())
    }
}
