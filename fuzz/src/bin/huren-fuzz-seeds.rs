//! Writes the seed corpus: `cargo run -p huren-fuzz --bin huren-fuzz-seeds` fills
//! fuzz/corpus/<target>/ with the structured seeds of `huren_fuzz::seeds` and copies the test
//! data files named in `seeds::FILE_SEEDS`. Files already there are kept.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    for (target, _) in huren_fuzz::targets::TARGETS {
        std::fs::create_dir_all(corpus.join(target))?;
    }
    let mut n = 0;
    for (target, name, bytes) in huren_fuzz::seeds::all() {
        std::fs::write(corpus.join(target).join(format!("seed-{name}")), bytes)?;
        n += 1;
    }
    let repo = root.join("..");
    for (target, path) in huren_fuzz::seeds::FILE_SEEDS {
        let from = repo.join(path);
        let files: Vec<_> = if from.is_dir() {
            std::fs::read_dir(&from)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect()
        } else {
            vec![from]
        };
        for f in files {
            if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
                std::fs::copy(&f, corpus.join(target).join(format!("seed-{name}")))?;
                n += 1;
            }
        }
    }
    println!("{n} seeds written under {}", corpus.display());
    Ok(())
}
