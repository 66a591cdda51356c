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

impl VectorOptions {
    /// A short name of these options for file names: `exact-f32`, `hnsw-f16`, ...
    pub fn tag(&self) -> &'static str {
        match (self.mode, self.quantization) {
            (SearchMode::Exact, Quantization::F32) => "exact-f32",
            (SearchMode::Exact, Quantization::F16) => "exact-f16",
            (SearchMode::Exact, Quantization::I8) => "exact-i8",
            (SearchMode::Hnsw, Quantization::F32) => "hnsw-f32",
            (SearchMode::Hnsw, Quantization::F16) => "hnsw-f16",
            (SearchMode::Hnsw, Quantization::I8) => "hnsw-i8",
        }
    }
}
