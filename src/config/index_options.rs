//! How stage 1 searches the image database: the plain settings of the experiment file's `[index]`
//! table. They live here, with the rest of the configuration, so that `config` depends on no other
//! module of the crate; `index::vectors` applies them.

/// HNSW's default search breadth (the `[index] ef_search` default).
pub const DEFAULT_EF_SEARCH: usize = 256;

/// How searches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Brute force over every vector.
    #[default]
    Exact,
    /// HNSW graph candidates, rescored exactly.
    Hnsw,
}

/// How vectors are stored in the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit integers (exact mode only).
    I8,
}

/// Index settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct VectorOptions {
    /// Search mode.
    pub mode: SearchMode,
    /// Storage precision.
    pub quantization: Quantization,
}
