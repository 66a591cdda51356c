//! The comparison as an HTML page (`compare/page.html`, a minijinja template with HTML
//! auto-escaping: every id, path, prompt line and diff is escaped by the engine). No JavaScript;
//! per-query links go to both runs' `report.html` by paths relative to the page.

use std::path::{Component, Path, PathBuf};

use super::Comparison;

const PAGE: &str = include_str!("page.html");

/// `to` as a path relative to the folder `from` (both made absolute first); `to` itself when
/// they share no root.
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let (Ok(from), Ok(to)) = (std::path::absolute(from), std::path::absolute(to)) else {
        return to.to_path_buf();
    };
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return to;
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// The page, for a file to be written into the folder `page_dir`.
pub fn render(c: &Comparison, page_dir: &Path) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // The name ends in .html, so the engine escapes every value as HTML.
    env.add_template("compare.html", PAGE)?;
    let link = |dir: &Path| {
        relative(page_dir, &dir.join("report.html"))
            .display()
            .to_string()
    };
    env.get_template("compare.html")?
        .render(minijinja::context! {
            c => minijinja::value::Serde(c),
            a_report => link(&c.a.dir),
            b_report => link(&c.b.dir),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        assert_eq!(
            relative(
                Path::new("/r/cirr/b/t2"),
                Path::new("/r/cirr/a/t1/report.html")
            ),
            PathBuf::from("../../a/t1/report.html")
        );
        assert_eq!(
            relative(Path::new("/r/x"), Path::new("/r/x/report.html")),
            PathBuf::from("report.html")
        );
    }
}
