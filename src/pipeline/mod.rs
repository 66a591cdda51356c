//! The retrieval pipeline: stages and their scheduling. (So far: the re-ask loop shared by the
//! stages that parse structured answers.)

pub mod ask;
