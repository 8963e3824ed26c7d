//! The AFL++ harness: `huren-fuzz-afl <target>` runs one target of `huren_fuzz::targets` in
//! AFL's persistent mode. Build with `cargo afl build --release -p huren-fuzz --features afl`;
//! FUZZING.md has the commands.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = huren_fuzz::targets::by_name(&name) else {
        let names: Vec<&str> = huren_fuzz::targets::TARGETS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        eprintln!(
            "usage: huren-fuzz-afl <target>; targets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
