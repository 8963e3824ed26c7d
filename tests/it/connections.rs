//! Connection bounds: idle TCP connections, half-sent TLS handshakes and idle mTLS sessions
//! are closed after their timeouts, connections over the per-address cap are closed at once,
//! and a member still gets answers meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use huren_hub::config::Limits;

use crate::harness::{HGB, LOINC, TestHub, prior_request};

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
