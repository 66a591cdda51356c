//! What a run leaves behind: test-server submission files (and, with the pipeline, run folders
//! and journals).

pub mod folder;
pub mod submission;
