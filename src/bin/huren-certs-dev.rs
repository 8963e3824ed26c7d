//! `huren-certs-dev`: writes (or extends) a development PKI directory for a Huren alliance: a CA,
//! the hub's TLS certificate, each member's TLS and summary-signing certificates, and the members'
//! pseudonymisation key. Development only; see the `huren-certs-dev` crate for the layout.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use huren_certs_dev::{FileAction, init_dir};
use huren_core::identity::InstitutionId;

/// Make a development PKI for a Huren alliance. NEVER FOR PRODUCTION: keys are unencrypted.
///
/// Running it again on the same directory keeps the CA and every file already there and only
/// issues what is missing, so members can be added later.
#[derive(Debug, Parser)]
#[command(name = "huren-certs-dev", version)]
struct Args {
    /// Directory to write; created if needed.
    #[arg(long, value_name = "DIR", default_value = "certs-dev/generated")]
    out: PathBuf,

    /// Extra DNS name (or IP address) for the hub certificate, besides localhost, 127.0.0.1 and
    /// ::1. Repeat for several. Only used when the hub certificate is (re)issued.
    #[arg(long = "hub-dns", value_name = "NAME")]
    hub_dns: Vec<String>,

    /// Institution id of a member to issue certificates for. Repeat for several.
    #[arg(long = "member", value_name = "ID", required = true, value_parser = InstitutionId::parse)]
    members: Vec<InstitutionId>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = init_dir(&args.out, &args.hub_dns, &args.members)
        .with_context(|| format!("making the development PKI in {}", args.out.display()))?;

    let mut written = 0;
    for file in &out.files {
        let verb = match file.action {
            FileAction::Written => {
                written += 1;
                "wrote"
            }
            FileAction::Kept => "kept ",
        };
        println!("{verb} {}", file.path.display());
    }
    println!(
        "{written} file(s) written, {} kept in {}.",
        out.files.len() - written,
        out.root.display()
    );
    println!(
        "The hub needs {} and hub/; each member needs {}, its members/<id>/ and {} (never give that one to the hub).",
        out.ca_cert.display(),
        out.ca_cert.display(),
        out.pseudonym_key.display()
    );
    println!(
        "This is a DEVELOPMENT PKI: private keys are unencrypted. Never use it in production; \
         a production alliance uses its own CA."
    );
    Ok(())
}
