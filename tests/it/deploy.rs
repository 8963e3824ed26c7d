//! The example systemd units in deploy/systemd: systemd itself checks them (`systemd-analyze
//! verify`, with ExecStart pointed at the binaries this build made), and their hardening keeps
//! systemd's exposure score at 2.0 or below ("OK"; 10 is no hardening at all).

use anyhow::{Context, ensure};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd");

/// Where systemd-analyze is (.ci/run installs Debian's systemd when it is missing).
fn systemd_analyze() -> std::process::Command {
    std::process::Command::new("systemd-analyze")
}

#[test]
fn the_systemd_units_verify_and_are_hardened() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (unit, binary) in [
        ("huren-hub", env!("CARGO_BIN_EXE_huren-hub")),
        ("huren-agent", env!("CARGO_BIN_EXE_huren-agent")),
    ] {
        let text = std::fs::read_to_string(format!("{UNITS}/{unit}.service"))?;
        let installed = format!("/usr/local/bin/{unit}");
        ensure!(text.contains(&installed), "{unit}.service runs {installed}");
        let path = dir.path().join(format!("{unit}.service"));
        std::fs::write(&path, text.replace(&installed, binary))?;
        let verify = systemd_analyze()
            .arg("verify")
            .arg(&path)
            .output()
            .context("running systemd-analyze (Debian: apt-get install systemd)")?;
        ensure!(
            verify.status.success() && verify.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let security = systemd_analyze()
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&path)
            .output()?;
        ensure!(
            security.status.success(),
            "{unit}: exposure above 2.0:\n{}",
            String::from_utf8_lossy(&security.stdout)
        );
    }
    Ok(())
}
