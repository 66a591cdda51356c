//! The queries `compare` scores: the annotations run A ran on, read again, or, when they cannot be
//! read (the dataset folder moved), the targets each run's journal records, with a note saying
//! which metrics that leaves out.

use crate::config::DatasetName;
use crate::datasets::{self, DatasetSpec, ImageKey, Instruction, Query};

use super::{CompareError, bad};

/// A query as a journal records it: id, reference and targets.
pub(super) type Recorded = (String, Option<ImageKey>, Vec<ImageKey>);

/// The queries to score, and a note when they come from the journal.
pub(super) fn for_scoring(
    spec: &DatasetSpec,
    recorded: &[Recorded],
) -> Result<(Vec<Query>, Option<String>), CompareError> {
    let e = match datasets::load_queries(spec) {
        Ok(q) => return Ok((q, None)),
        Err(e) => e,
    };
    if spec.name == DatasetName::CirrSubset {
        return Err(bad(format!(
            "cannot load the {} {} annotations that run A ran on ({e}); Recall_subset needs each query's image set, which the journal does not record: put the annotations back at {}",
            spec.name,
            spec.split,
            spec.root.display()
        )));
    }
    let queries = recorded
        .iter()
        .map(|(id, reference, targets)| Query {
            id: id.clone(),
            reference: reference.clone(),
            instruction: Instruction::Text {
                text: String::new(),
            },
            targets: targets.clone(),
            subset: None,
            aspects: vec![],
            shared_concept: None,
        })
        .collect();
    let left_out = if spec.name == DatasetName::Circo {
        " (CIRCO's per-aspect mAP needs the annotations and is left out)"
    } else {
        ""
    };
    Ok((
        queries,
        Some(format!(
            "the annotations at {} cannot be read ({e}); scored from the targets the journals record{left_out}",
            spec.root.display()
        )),
    ))
}
