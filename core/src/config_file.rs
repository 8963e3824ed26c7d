//! What the hub's and the agents' configuration files share: the error a person sees, parsing
//! TOML into a typed configuration, and paths taken relative to the file. Reading the file
//! stays with each program (this crate does no I/O).

use std::path::{Path, PathBuf};

/// Why a configuration file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this program, or a value is out of range.
    #[error("{path} is not a valid {what} configuration: {message}")]
    Parse {
        path: PathBuf,
        /// Whose configuration: "hub" or "agent".
        what: &'static str,
        message: String,
    },
}

impl ConfigError {
    /// A reading failure of `path`.
    pub fn read(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }

    /// A value of `path` that the program refuses, with a message naming the field.
    pub fn invalid(path: &Path, what: &'static str, message: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_owned(),
            what,
            message: message.into(),
        }
    }
}

/// Parses the text of the configuration file at `path` (named in errors, with `what`).
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    what: &'static str,
) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|e: toml::de::Error| ConfigError::invalid(path, what, e.to_string()))
}

/// Makes every relative path in `paths` relative to the folder of the configuration file at
/// `file` (a file given without a folder leaves them as they are).
pub fn relative_to_file<'a>(file: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    let Some(base) = file.parent() else {
        return;
    };
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Sample {
        n: u32,
    }

    #[test]
    fn errors_name_the_file_and_the_program() {
        let path = Path::new("/etc/huren/hub.toml");
        let err = parse_toml::<Sample>("n = \"x\"", path, "hub").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/huren/hub.toml is not a valid hub configuration:"),
            "{text}"
        );
        assert_eq!(parse_toml::<Sample>("n = 3", path, "hub").unwrap().n, 3);
        let mut a = PathBuf::from("ca.pem");
        let mut b = PathBuf::from("/abs/key.pem");
        relative_to_file(path, [&mut a, &mut b]);
        assert_eq!(a, Path::new("/etc/huren/ca.pem"));
        assert_eq!(b, Path::new("/abs/key.pem"));
    }
}
