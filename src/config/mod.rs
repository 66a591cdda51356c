//! Configuration files: the servers file (who plays each role) and the experiment file (which
//! dataset, which servers file, which pipeline parameters).
//!
//! Both are TOML, parsed strictly (`deny_unknown_fields`) and then validated. Every error names the
//! file, the key and what is allowed, so a typo never silently becomes a default. Relative paths in
//! an experiment file are resolved against that file's folder.

mod experiment;
mod index_options;
mod servers;

use std::path::{Path, PathBuf};

pub use experiment::{
    DatasetName, DatasetSection, EvaluatorParse, ExperimentConfig, IndexSection, PipelineParams,
    Profile, RerankMode, Stage, VerifierMode,
};
pub use index_options::{DEFAULT_EF_SEARCH, Quantization, SearchMode, VectorOptions};
pub use servers::{
    ApiFlavour, EmbedShape, Grounding, ImageTransport, MAX_TIMEOUT_SECS, ResponseSchema,
    RetryPolicy, Role, RoleServer, Sampling, ServersConfig,
};

/// A configuration problem, always naming the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema (unknown key, wrong type, bad value).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key, the line and the expected values.
        message: String,
    },
    /// A value parsed but is not allowed.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// An environment variable named by the config is not set.
    #[error(
        "{path}: `{key}` names the environment variable {var}, which is not set; export it (the key itself never goes in a file)"
    )]
    MissingEnv {
        /// The file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// The variable's name.
        var: String,
    },
}

/// Whether `path` is a servers file (has `[roles.*]` tables) rather than an experiment file.
pub fn is_servers_file(path: &Path) -> Result<bool, ConfigError> {
    let table: toml::Table = parse_toml(&read_text(path)?, path)?;
    Ok(table.contains_key("roles"))
}

pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}
