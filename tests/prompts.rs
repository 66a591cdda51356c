//! Snapshot tests of every prompt template of every family, rendered with fixed sample inputs.
//! The prompt-iteration loop: edit a template, `cargo insta test`, `cargo insta review`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use imagescope::prompts::{Family, PromptKind, PromptSet};
use serde_json::{Value, json};

fn sample(kind: PromptKind) -> Value {
    match kind {
        PromptKind::Caption => json!({}),
        PromptKind::Reason => json!({
            "instruction": "has two of them and they sit on a wooden bench",
            "reference_description": "A small brown puppy sits on green grass.",
            "has_reference": true,
        }),
        PromptKind::Propositions => json!({
            "instruction": "has two of them and they sit on a wooden bench",
            "edits": [
                {"kind": "Modification", "text": "one puppy becomes two puppies"},
                {"kind": "Modification", "text": "the grass becomes a wooden bench"},
            ],
        }),
        PromptKind::Verify => json!({"question": "Are there two puppies?"}),
        PromptKind::Evaluate => {
            json!({"instruction": "has two of them and they sit on a wooden bench", "has_reference": true})
        }
        PromptKind::Reask => json!({"error": "no JSON object in the answer"}),
        PromptKind::VerifyCaption => {
            json!({"caption": "Two brown puppies sit on a wooden bench.", "question": "Are there two puppies?"})
        }
        PromptKind::EvaluateCaption => json!({
            "instruction": "has two of them and they sit on a wooden bench",
            "reference_caption": "A small brown puppy sits on green grass.",
            "candidate_caption": "Two brown puppies sit on a wooden bench.",
        }),
    }
}

/// Every (family, prompt) rendering, keyed `family/prompt`, system part first when present.
fn render_all(set: &PromptSet) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for family in Family::ALL {
        for kind in PromptKind::ALL {
            let r = set.render(family, kind, &sample(kind)).unwrap();
            let text = match r.system {
                Some(s) => format!("[system]\n{s}\n\n[user]\n{}", r.user),
                None => r.user,
            };
            out.insert(format!("{}/{}", family.dir(), kind.stem()), text);
        }
    }
    out
}

#[test]
fn every_template_of_every_family() {
    let set = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    for (key, text) in render_all(&set) {
        insta::assert_snapshot!(format!("prompt__{}", key.replace('/', "__")), text);
    }
}

#[test]
fn the_evaluate_prompt_without_a_reference() {
    let set = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let r = set
        .render(
            Family::General,
            PromptKind::Evaluate,
            &json!({"instruction": "a red bus", "has_reference": false}),
        )
        .unwrap();
    insta::assert_snapshot!("prompt__general__evaluate_without_reference", r.user);
}

/// Changes one word of one template in a copy of the prompts and returns which renderings moved.
fn changed_by(file: &str, from: &str, to: &str) -> Vec<String> {
    let original = render_all(&PromptSet::load(&PromptSet::bundled_dir()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    support::copy_dir(&PromptSet::bundled_dir(), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    let edited = render_all(&PromptSet::load(dir.path()).unwrap());
    original
        .keys()
        .filter(|k| original[*k] != edited[*k])
        .cloned()
        .collect()
}

#[test]
fn one_word_changes_exactly_the_expected_renderings() {
    // verify is shared by every family through the fallback to general/.
    assert_eq!(
        changed_by("general/verify.user.j2", "Yes or No.", "yes or no."),
        [
            "fashioniq-dress/verify",
            "fashioniq-shirt/verify",
            "fashioniq-toptee/verify",
            "general/verify",
            "visdial/verify"
        ]
    );
    // The general reasoning task text is used by general and (through fallback) nobody else.
    assert_eq!(
        changed_by("general/_reason_task.j2", "smallest", "tiniest"),
        ["general/reason"]
    );
    // The fashion task text reaches the three FashionIQ families only.
    assert_eq!(
        changed_by("general/_fashion_reason_task.j2", "shopper's", "customer's"),
        [
            "fashioniq-dress/reason",
            "fashioniq-shirt/reason",
            "fashioniq-toptee/reason"
        ]
    );
    assert_eq!(
        changed_by("fashioniq-shirt/caption.user.j2", "detailed", "precise"),
        ["fashioniq-shirt/caption"]
    );
}

#[test]
fn no_template_reads_a_variable_its_role_does_not_pass() {
    // Strict undefined behaviour: rendering with exactly the documented context must succeed for
    // every family (render_all unwraps), and a missing variable must fail.
    let set = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let err = set
        .render(
            Family::General,
            PromptKind::Reason,
            &json!({"instruction": "x"}),
        )
        .unwrap_err();
    assert!(err.to_string().contains("general/reason.user.j2"), "{err}");
}
