//! `huren-demo`: a self-contained alliance on this machine.
//!
//! Makes a development PKI in a temporary folder, starts a real hub (mutual TLS, sled store) on
//! a free local port, and runs two members' agents: 陕西省人民医院 (shx-prov-people, a tertiary
//! hospital) publishes signed results; 蓝田县人民医院 (lantian-county, a county hospital) looks
//! for a referred patient's prior results and verifies every one against the alliance CA.
//! With `--serve`, the county hospital's web app stays up afterwards (demo accounts printed)
//! until Ctrl-C.

use anyhow::Context;
use clap::Parser;
use std::path::{Path, PathBuf};

use huren_agent::table::{Table, format_time, parse_offset, results_table, verdict_cell};
use huren_agent::verify::VerifiedResult;
use huren_agent::{Agent, AgentConfig, Asking, OrderItem};
use huren_certs_dev::{DevPkiDir, init_dir};
use huren_core::identity::InstitutionId;
use huren_core::logentry::Purpose;
use huren_core::rules::{Decision, RetestReason};

const TERTIARY: &str = "shx-prov-people";
const COUNTY: &str = "lantian-county";
/// The alliance's administrator in hub/policy.example.toml: reads the statistics.
const COMMISSION: &str = "xian-health-commission";
/// The referred patient of the demo (a synthetic id with a valid check character).
const PATIENT_ID: &str = "610102196703151235";
/// Who asks at the county hospital, as it names its staff to the alliance (never a name).
const CLINICIAN: &str = "staff:LT-D0423";
const REFERRAL_DESK: &str = "staff:LT-R0107";

/// Run a demonstration alliance: one hub and two member hospitals on this machine.
#[derive(Parser)]
struct Args {
    /// Keep everything (certificates, configurations, the hub's store) in this folder instead
    /// of a temporary one that is removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// After the demo, leave the county hospital's web app running (plain HTTP on this machine
    /// only) with demo accounts, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Where the web app of `--serve` listens (a loopback address); a free port if taken.
    #[arg(long, default_value = "127.0.0.1:8480", requires = "serve")]
    listen: std::net::SocketAddr,
}

/// The demo accounts of `--serve` (username, staff id, role) and their password.
const WEB_USERS: &[(&str, &str, &str)] = &[
    ("demo", "LT-D0423", "clinician"),
    ("quality", "LT-Q0001", "quality-office"),
];
const WEB_PASSWORD: &str = "huren-demo-2026";

/// `--serve`: the county hospital's agent with a store and `[web]`, its demo accounts, and its
/// web app on `listen` (or a free port) until Ctrl-C.
async fn serve_county_web(
    root: &Path,
    county_config: &Path,
    listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "--listen {listen}: the demo serves plain HTTP, so only on a loopback address"
    );
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind((listen.ip(), 0)).await?,
    };
    let addr = listener.local_addr()?;
    let path = root.join(format!("agent-{COUNTY}-web.toml"));
    let text = format!(
        "{}
[store]
path = {:?}

[web]
listen = \"{addr}\"
plain_http_on_loopback = true
time_zone = \"Asia/Shanghai\"
default_language = \"zh-CN\"
",
        std::fs::read_to_string(county_config)?,
        root.join("county-agent-store"),
    );
    std::fs::write(&path, text)?;
    let config = AgentConfig::load(&path)?;
    let store = huren_agent::daemon::open_store(&config)?;
    for (user, staff, role) in WEB_USERS {
        match huren_agent::web::accounts::add(&store, user, staff, role, WEB_PASSWORD) {
            Ok(()) => {}
            // A kept --dir from an earlier run: the account is there; its password again.
            Err(huren_agent::web::accounts::AccountError::Exists(_)) => {
                huren_agent::web::accounts::reset(&store, user, WEB_PASSWORD)?
            }
            Err(e) => return Err(e.into()),
        }
    }
    let agent = std::sync::Arc::new(Agent::connect(config).await?);
    let extra = huren_agent::ehr::extra_routes(agent.clone())?;
    let state = huren_agent::web::WebState::new(agent, store.clone())?;
    println!("   http://{addr}/  (plain HTTP on this machine only; Ctrl-C stops the web app and the hub)");
    println!("   sign in as:");
    for (user, _, role) in WEB_USERS {
        println!("     {user:<8} password {WEB_PASSWORD}   ({role})");
    }
    println!(
        "   then find the patient: 居民身份证 (resident identity card) {PATIENT_ID}, purpose 诊疗 (treatment)"
    );
    huren_agent::web::serve(state, listener, extra, huren::shutdown_signal()).await?;
    store.flush()?;
    println!("\n   web app stopped");
    Ok(())
}

/// Spells out why each unrecognised result is not recognised.
fn print_reasons(results: &[VerifiedResult]) {
    for (i, r) in results.iter().enumerate() {
        if let Some(v) = r.verdict.as_ref().filter(|v| !v.recognised()) {
            let why: Vec<&str> = v.reasons.iter().map(|(_, t)| t.as_str()).collect();
            println!("   #{} not recognised: {}", i + 1, why.join("; "));
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn write_agent_config(
    dir: &Path,
    pki: &DevPkiDir,
    id: &InstitutionId,
    hub: &str,
) -> anyhow::Result<PathBuf> {
    let files = pki.member(id).context("member files missing")?;
    let path = dir.join(format!("agent-{id}.toml"));
    let text = format!(
        "institution = \"{id}\"\nhub = \"{hub}\"\nhub_tls_name = \"localhost\"\ndisplay_utc_offset = \"+08:00\"\n\n\
         [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[signing]\ncert = {scert:?}\nkey = {skey:?}\n\n\
         [pseudonym]\nkey_file = {pkey:?}\n",
        ca = pki.ca_cert,
        cert = files.tls_cert,
        key = files.tls_key,
        scert = files.signing_cert,
        skey = files.signing_key,
        pkey = pki.pseudonym_key,
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huren::install_crypto_provider();
    let args = Args::parse();
    // Keep the demo's output readable; RUST_LOG=info shows the hub's and agents' logs.
    huren::init_tracing_with_default(huren::LogFormat::Text, "error");
    let temp = tempfile::tempdir()?;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => temp.path().to_owned(),
    };
    let tertiary = InstitutionId::parse(TERTIARY)?;
    let county = InstitutionId::parse(COUNTY)?;
    let offset = parse_offset("+08:00").map_err(anyhow::Error::msg)?;

    step(
        1,
        "Development PKI: alliance CA, hub certificate, two members' TLS and signing certificates",
    );
    let commission = InstitutionId::parse(COMMISSION)?;
    let pki = init_dir(
        &root.join("pki"),
        &[],
        &[tertiary.clone(), county.clone(), commission.clone()],
    )?;
    println!(
        "   written to {} (development only; see DEVELOPMENT-ONLY.txt there)",
        pki.root.display()
    );

    step(
        2,
        "Hub: gRPC with mutual TLS, sled store, on a free local port",
    );
    let hub_config_path = root.join("hub.toml");
    std::fs::write(
        &hub_config_path,
        format!(
            "listen = \"127.0.0.1:0\"\nstore = {:?}\npolicy = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            root.join("hub-store"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("hub/policy.example.toml"),
            pki.ca_cert,
            pki.hub_cert,
            pki.hub_key
        ),
    )?;
    let hub_config = huren_hub::HubConfig::load(&hub_config_path)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub_task = tokio::spawn(huren_hub::run(hub_config, listener, async {
        let _ = stop_rx.await;
    }));
    let hub_url = format!("https://127.0.0.1:{}", addr.port());
    println!("   hub listening on {hub_url}");

    let tertiary_agent = Agent::connect(AgentConfig::load(&write_agent_config(
        &root, &pki, &tertiary, &hub_url,
    )?)?)
    .await?;
    let county_config = write_agent_config(&root, &pki, &county, &hub_url)?;
    let county_agent = Agent::connect(AgentConfig::load(&county_config)?).await?;

    step(
        3,
        "陕西省人民医院 (shx-prov-people, tertiary) signs and publishes its results",
    );
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("node-agent/examples/results.json");
    println!("   from {}", results.display());
    let signed = tertiary_agent.sign_results_file(&results)?;
    let mut table = Table::new(["Summary", "Item", "Outcome", "Accepted"]);
    for (summary, envelope) in signed.iter().cloned() {
        let p = tertiary_agent.publish(&summary, envelope).await?;
        table.push(vec![
            format!("{} v{}", summary.id, summary.version),
            format!("{} {}", summary.item.code, summary.item.display),
            if p.already_stored {
                "already stored"
            } else {
                "stored, durable"
            }
            .into(),
            format_time(p.receipt.accepted_at, offset),
        ]);
    }
    print!("{}", table.render());

    step(
        4,
        "The export runs again (a retry): the hub answers with the same receipts, nothing doubles",
    );
    let (summary, envelope) = signed
        .first()
        .cloned()
        .context("no results in the example file")?;
    let again = tertiary_agent.publish(&summary, envelope).await?;
    println!(
        "   {} v{}: already stored = {}, accepted at {} (the original receipt)",
        summary.id,
        summary.version,
        again.already_stored,
        format_time(again.receipt.accepted_at, offset)
    );

    step(
        5,
        "蓝田县人民医院 (lantian-county) receives the referred patient and, before ordering, asks for prior results",
    );
    println!(
        "   patient id cn-ric {}…{} is pseudonymised at the county agent; the hub only sees the pseudonym",
        &PATIENT_ID[..4],
        &PATIENT_ID[14..]
    );
    let pseudonym = county_agent.pseudonymise("cn-ric", PATIENT_ID)?;
    let as_of = huren_agent::results::parse_time("as-of", "2026-11-23T09:00:00+08:00")
        .map_err(anyhow::Error::msg)?;
    let items: Vec<(String, String)> = ["718-7", "777-3", "24627-2", "2160-0"]
        .iter()
        .map(|c| ("http://loinc.org".to_owned(), (*c).to_owned()))
        .collect();
    println!(
        "   asking for 718-7 haemoglobin, 777-3 platelets, 24627-2 CT chest, 2160-0 creatinine; as of {}, last 30 days",
        format_time(as_of, offset)
    );
    let answer = county_agent
        .find_prior(
            &Asking::new(Purpose::Treatment).by(CLINICIAN),
            &pseudonym,
            &items,
            as_of,
            Some(std::time::Duration::from_secs(30 * 86_400)),
        )
        .await?;
    print!("{}", results_table(&answer.results, offset).render());
    print_reasons(&answer.results);
    println!(
        "   {} results, every signature checked by the county agent against the alliance CA; no creatinine on file, so that test is ordered",
        answer.results.len()
    );

    step(
        6,
        "The referral desk looks at the patient's whole history across the alliance",
    );
    let history = county_agent
        .history(
            &Asking::new(Purpose::Referral).by(REFERRAL_DESK),
            &pseudonym,
            huren_core::summary::UnixMillis(0),
            false,
        )
        .await?;
    print!("{}", results_table(&history.results, offset).render());
    print_reasons(&history.results);

    step(
        7,
        "A doctor at the county hospital orders tests; the HIS asks first, by local codes",
    );
    let order: Vec<OrderItem> = ["XCG-HB", "XCG-PLT", "FS-CT-XB", "SH-CR"]
        .iter()
        .map(|c| OrderItem::Local((*c).to_owned()))
        .collect();
    let checks = county_agent
        .check_order(
            &Asking::new(Purpose::Treatment).by(CLINICIAN),
            &pseudonym,
            &order,
            as_of,
        )
        .await?;
    let mut table = Table::new([
        "Ordered",
        "Catalogue item",
        "Advice",
        "Prior result",
        "Recognition",
    ]);
    let mut notes = Vec::new();
    for c in &checks {
        let OrderItem::Local(code) = &c.asked else {
            continue;
        };
        match &c.best {
            Some(b) => table.push(vec![
                code.clone(),
                c.item_name.clone(),
                "REUSE".into(),
                format!(
                    "{}/{} v{}",
                    b.summary.publisher, b.summary.id, b.summary.version
                ),
                verdict_cell(b.verdict.as_ref()),
            ]),
            None => {
                table.push(vec![
                    code.clone(),
                    c.item_name.clone(),
                    "ORDER".into(),
                    "-".into(),
                    String::new(),
                ]);
                notes.push(format!("   {code}: {}", c.explanation));
            }
        }
    }
    print!("{}", table.render());
    for n in notes {
        println!("{n}");
    }

    step(
        8,
        "The doctor decides, and the county agent records each decision (closing the loop)",
    );
    for c in &checks {
        let Some(b) = &c.best else { continue };
        // The CT is repeated: the patient's breathing worsened since the scan.
        let decision = if b.summary.item.code == "24627-2" {
            Decision::Retested {
                reason: Some(RetestReason::ConditionChanged),
                note: "咳嗽加重 cough worse since the scan".into(),
            }
        } else {
            Decision::Adopted
        };
        let id = format!("ORDER-20261123-0042-{}", b.summary.item.code);
        county_agent
            .record_decision(&id, &b.receipt, &decision)
            .await?;
        println!(
            "   {}: {}",
            b.summary.item.display,
            match &decision {
                Decision::Adopted => "adopted, not repeated".to_owned(),
                Decision::Retested { reason, note } => format!(
                    "re-tested, reason {} ({note})",
                    reason.map_or("none", RetestReason::code)
                ),
            }
        );
    }
    let err = county_agent
        .record_decision(
            "ORDER-20261123-0043",
            &checks[0].best.as_ref().context("no haemoglobin")?.receipt,
            &Decision::Retested {
                reason: None,
                note: String::new(),
            },
        )
        .await
        .err()
        .context("a re-test of a recognised result without a reason was accepted")?;
    println!("   a re-test of a recognised result without a reason: {err}");

    step(9, "The health commission reads the recognition statistics");
    let commission_agent = Agent::connect(AgentConfig::load(&write_agent_config(
        &root,
        &pki,
        &commission,
        &hub_url,
    )?)?)
    .await?;
    let now = huren_core::summary::UnixMillis::now();
    let stats = commission_agent
        .statistics(
            huren_core::summary::UnixMillis(now.0 - 86_400_000),
            huren_core::summary::UnixMillis(now.0 + 60_000),
            huren_core::stats::GroupBy::Item,
        )
        .await?;
    let mut table = Table::new([
        "Item",
        "Name",
        "Asked",
        "Found",
        "Adopted",
        "Re-tested",
        "Saved (yuan)",
    ]);
    let total = (stats.total, String::new());
    for (r, label) in stats.rows.iter().chain(std::iter::once(&total)) {
        table.push(vec![
            r.key.clone(),
            label.clone(),
            r.queries.to_string(),
            r.found.to_string(),
            r.adopted.to_string(),
            r.retested.to_string(),
            format!("{}.{:02}", r.money_saved_fen / 100, r.money_saved_fen % 100),
        ]);
    }
    print!("{}", table.render());

    step(10, "The hub refuses what it cannot trust");
    let (summary, envelope) = signed
        .first()
        .cloned()
        .context("no results in the example file")?;
    match county_agent.publish(&summary, envelope.clone()).await {
        Err(e) => {
            println!("   county relays the tertiary hospital's signed summary as its own: {e}")
        }
        Ok(_) => anyhow::bail!("the hub accepted a summary from a member that did not publish it"),
    }
    let mut tampered = envelope;
    if let Some(b) = tampered.body.iter_mut().rev().find(|b| b.is_ascii_digit()) {
        *b = if *b == b'9' { b'0' } else { *b + 1 };
    }
    match tertiary_agent.publish(&summary, tampered).await {
        Err(e) => println!("   a summary altered after signing: {e}"),
        Ok(_) => anyhow::bail!("the hub accepted a summary altered after signing"),
    }
    if let Err(e) = county_agent.sign(&summary) {
        println!("   and the county agent will not sign in another hospital's name: {e}");
    }

    if args.serve {
        step(
            11,
            "The county hospital's web app, for its clinicians and quality office (zh-CN; English on every page)",
        );
        let served = serve_county_web(&root, &county_config, args.listen).await;
        let _ = stop_tx.send(());
        hub_task.await??;
        served?;
        println!("\nDemo finished.");
        return Ok(());
    }

    let _ = stop_tx.send(());
    hub_task.await??;
    println!(
        "\nDemo finished. `--dir DIR` keeps the certificates, configurations and store; README.md shows the same steps with the CLI."
    );
    Ok(())
}
