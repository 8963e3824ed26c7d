//! Connection bounds: idle TCP connections, half-sent TLS handshakes and idle mTLS sessions
//! are closed after their timeouts, connections over the per-address cap are closed at once,
//! and a member still gets answers meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use huren_hub::config::Limits;

use anyhow::Context;

use crate::harness::{HGB, LOINC, TestHub, hours, http, lab_summary, prior_request, publish, sign};

/// Whether the hub closed `s` within `within` (a read gives end of file or an error).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A TLS alert or other bytes: keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

on_each_store! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_bounded_and_members_still_get_answers()
-> anyhow::Result<()> {
    let hub = TestHub::start_with(Limits {
        max_connections: 400,
        max_connections_per_address: 150,
        handshake_timeout_seconds: 1,
        idle_timeout_seconds: 2,
        ..Limits::default()
    })
    .await?;
    let patient = hub.patient("E00000500");
    // 100 idle TCP connections and 30 half-sent ClientHellos.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(hub.addr).await?);
    }
    let mut half = Vec::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(hub.addr).await?;
        // A TLS handshake record header announcing 512 bytes, and 3 of them.
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
            .await?;
        half.push(s);
    }
    // A member still gets answers, on a connection of its own (131 of 150 from this address).
    let mut member = hub.client("hosp-b").await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        member.find_prior(prior_request(&patient, &[(LOINC, HGB)])),
    )
    .await??;
    assert!(answer.into_inner().results.is_empty());

    // Over the per-address cap: the connections past 150 are closed at once.
    let mut over = Vec::new();
    for _ in 0..40 {
        over.push(TcpStream::connect(hub.addr).await?);
    }
    let mut closed_at_once = 0;
    for s in &mut over {
        if closed_within(s, Duration::from_millis(300)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        (20..=40).contains(&closed_at_once),
        "{closed_at_once} of 40 connections over the cap were closed at once"
    );

    // The half-sent handshakes are closed after the handshake timeout (1 s), the idle
    // connections after the idle timeout (2 s).
    for s in &mut half {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a half-open handshake stayed"
        );
    }
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "an idle connection stayed"
        );
    }
    // A member connecting now is answered.
    let mut member = hub.client("hosp-b").await?;
    member
        .find_prior(prior_request(&patient, &[(LOINC, HGB)]))
        .await?;
    Ok(())
}
}

on_each_store! {
/// The metrics endpoint (issue 20, part 7): after a publish and a query it counts both by RPC
/// and status, shows the log's size and the policy in force, names no patient, and answers
/// only GET /metrics.
#[tokio::test]
async fn the_metrics_endpoint_counts_calls_by_rpc_and_status() -> anyhow::Result<()> {
    let (hub, metrics) = TestHub::start_with_metrics().await?;
    let p = hub.patient("E50000001");
    let signed = sign(
        &hub.member("hosp-a")?,
        &lab_summary("hosp-a", "M-1", p, HGB, hours(1))?,
    )?;
    publish(&mut hub.client("hosp-a").await?, signed).await?;
    let mut b = hub.client("hosp-b").await?;
    b.find_prior(prior_request(&p, &[(LOINC, HGB)])).await?;
    // A query without a purpose is refused: counted with its status.
    let mut no_purpose = prior_request(&p, &[(LOINC, HGB)]);
    no_purpose.purpose = 0;
    assert!(b.find_prior(no_purpose).await.is_err());

    let text = http(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "huren_hub_requests_total{method=\"Publish\",code=\"Ok\"} 1",
        "huren_hub_requests_total{method=\"FindPrior\",code=\"Ok\"} 1",
        "huren_hub_requests_total{method=\"FindPrior\",code=\"InvalidArgument\"} 1",
        "huren_hub_policy_info{version=\"2026.11-1\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // One summary and one access leaf at least.
    let entries: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("huren_hub_log_entries "))
        .context("no log size")?
        .trim()
        .parse()?;
    assert!(entries >= 2, "{text}");
    assert!(text.contains("huren_hub_request_seconds_bucket"), "{text}");
    for writer in ["publishes", "queries"] {
        let count = format!("huren_hub_commit_seconds_count{{writer=\"{writer}\"}} ");
        assert!(text.contains(&count), "{count} missing:\n{text}");
    }
    assert!(
        !text.contains("E50000001") && !text.contains(&hex_of(&p)),
        "{text}"
    );
    let other = http(
        metrics,
        "GET /admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // A client that sends half a request head is dropped, and the endpoint still answers.
    let half = TcpStream::connect(metrics).await?;
    let again = http(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    drop(half);
    Ok(())
}
}

fn hex_of(p: &huren_core::pseudonym::Pseudonym) -> String {
    p.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
