//! Flickr30K 1k test and MSCOCO 5k test (the nlphuji CSVs): one row per image, the captions in
//! the `raw` column as a JSON (or Python-literal) list. Columns are found by header name; rows with
//! a `split` column other than `test` are skipped. Every caption is one query, id
//! `<filename>#<n>`, whose target is the row's image. The gallery is every row's `filename`.

use std::path::{Path, PathBuf};

use super::{
    DatasetError, DatasetName, DatasetSpec, GalleryImage, ImageKey, Instruction, Query, find_file,
    split_is,
};

struct Row {
    filename: String,
    captions: Vec<String>,
}

fn csv_name(spec: &DatasetSpec) -> &'static str {
    match spec.name {
        DatasetName::Mscoco => "test_5k_mscoco_2014.csv",
        _ => "test_1k_flickr.csv",
    }
}

fn image_dir(spec: &DatasetSpec) -> PathBuf {
    let zipped = match spec.name {
        DatasetName::Mscoco => "images_mscoco_2014_5k_test",
        _ => "images_flickr_1k_test",
    };
    let z = spec.root.join(zipped);
    if z.is_dir() {
        z
    } else {
        spec.root.join("images")
    }
}

fn rows(spec: &DatasetSpec) -> Result<(PathBuf, Vec<Row>), DatasetError> {
    split_is(spec, &["test"], &[])?;
    let path = find_file(&spec.root, "caption CSV", &[csv_name(spec).to_string()])?;
    let rows = read_rows(&path)?;
    Ok((path, rows))
}

fn read_rows(path: &Path) -> Result<Vec<Row>, DatasetError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| DatasetError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let headers = reader
        .headers()
        .map_err(|e| DatasetError::Format {
            path: path.to_path_buf(),
            message: format!("cannot read the header row: {e}"),
        })?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(file_col), Some(raw_col)) = (col("filename"), col("raw")) else {
        return Err(DatasetError::Format {
            path: path.to_path_buf(),
            message: format!(
                "needs columns `filename` and `raw`; the header has: {}",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        });
    };
    let split_col = col("split");
    let mut out = Vec::new();
    for (index, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| DatasetError::Format {
            path: path.to_path_buf(),
            message: format!("data row {index}: {e}"),
        })?;
        if let Some(c) = split_col
            && rec.get(c).is_some_and(|s| s.trim() != "test")
        {
            continue;
        }
        let bad = |field: &str, message: String| DatasetError::Record {
            path: path.to_path_buf(),
            index,
            field: field.into(),
            message,
        };
        let filename = rec.get(file_col).unwrap_or("").trim().to_string();
        if filename.is_empty() || filename.contains(['/', '\\']) || filename.starts_with('.') {
            return Err(bad(
                "filename",
                format!("{filename:?} is not a plain image file name"),
            ));
        }
        let raw = rec.get(raw_col).unwrap_or("");
        let captions = parse_caption_list(raw).ok_or_else(|| {
            bad(
                "raw",
                format!("not a JSON or Python list of strings: {raw:.80}"),
            )
        })?;
        if captions.is_empty() {
            return Err(bad("raw", "the caption list is empty".into()));
        }
        out.push(Row { filename, captions });
    }
    Ok(out)
}

/// Parses `["a", "b"]` as JSON, or a Python list literal such as `['a', "b's"]`.
pub fn parse_caption_list(raw: &str) -> Option<Vec<String>> {
    if let Ok(v) = serde_json::from_str::<Vec<String>>(raw) {
        return Some(v);
    }
    let mut chars = raw.trim().chars().peekable();
    if chars.next()? != '[' {
        return None;
    }
    let mut out = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.next()? {
            ']' => return chars.all(char::is_whitespace).then_some(out),
            q @ ('\'' | '"') => {
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => match chars.next()? {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            other => s.push(other),
                        },
                        c if c == q => break,
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            _ => return None,
        }
    }
}

pub(super) fn queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    let (path, rows) = rows(spec)?;
    let mut out = Vec::new();
    for row in rows {
        for (n, caption) in row.captions.iter().enumerate() {
            out.push(Query {
                id: format!("{}#{n}", row.filename),
                reference: None,
                instruction: Instruction::Text {
                    text: caption.trim().to_string(),
                },
                targets: vec![ImageKey(row.filename.clone())],
                subset: None,
                aspects: vec![],
                shared_concept: None,
            });
        }
    }
    super::check_unique_ids(&path, &out)?;
    Ok(out)
}

pub(super) fn gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    let (_, rows) = rows(spec)?;
    let dir = image_dir(spec);
    Ok(rows
        .into_iter()
        .map(|r| GalleryImage {
            path: dir.join(&r.filename),
            key: ImageKey(r.filename),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_lists_in_json_and_python_form() {
        assert_eq!(
            parse_caption_list(r#"["a, b", "c"]"#).unwrap(),
            vec!["a, b", "c"]
        );
        assert_eq!(
            parse_caption_list(r#"['A man\'s hat.', "It's red", 'x']"#).unwrap(),
            vec!["A man's hat.", "It's red", "x"]
        );
        assert_eq!(parse_caption_list("[]").unwrap(), Vec::<String>::new());
        assert!(parse_caption_list("['unterminated").is_none());
        assert!(parse_caption_list("not a list").is_none());
        assert!(parse_caption_list("['a'] trailing").is_none());
    }
}
