//! What a run leaves behind: its folder (`folder`: `run.json`, the resolved config, prompt
//! copies, the journal appended one record per finished query and streamed back by
//! `read_journal`, metrics and summary files) and test-server submission files (`submission`).

pub mod folder;
pub mod submission;
