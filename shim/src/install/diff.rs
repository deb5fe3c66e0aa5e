//! `--dry-run`'s output: the change of one file as a unified diff (one hunk: install and
//! uninstall change one contiguous run of lines).

use std::fmt::Write;
use std::path::Path;

const CONTEXT: usize = 3;

pub fn unified(path: &Path, before: Option<&str>, after: Option<&str>, verb: &str) -> String {
    let old: Vec<&str> = before.map_or(Vec::new(), |t| t.split_inclusive('\n').collect());
    let new: Vec<&str> = after.map_or(Vec::new(), |t| t.split_inclusive('\n').collect());
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let max_suffix = old.len().min(new.len()) - prefix;
    let suffix = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    let from = prefix.saturating_sub(CONTEXT);
    let old_to = (old.len() - suffix + CONTEXT).min(old.len());
    let new_to = (new.len() - suffix + CONTEXT).min(new.len());
    let mut out = String::new();
    let name = path.display();
    let _ = writeln!(
        out,
        "--- {}",
        if before.is_some() {
            name.to_string()
        } else {
            "/dev/null".into()
        }
    );
    let _ = writeln!(
        out,
        "+++ {}",
        if after.is_some() {
            format!("{name} (after {verb})")
        } else {
            "/dev/null".into()
        }
    );
    let range = |start: usize, len: usize| {
        if len == 0 {
            format!("{start},0")
        } else {
            format!("{},{len}", start + 1)
        }
    };
    let _ = writeln!(
        out,
        "@@ -{} +{} @@",
        range(from, old_to - from),
        range(from, new_to - from)
    );
    let line = |out: &mut String, mark: char, l: &str| {
        out.push(mark);
        out.push_str(l);
        if !l.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    };
    for l in &old[from..prefix] {
        line(&mut out, ' ', l);
    }
    for l in &old[prefix..old.len() - suffix] {
        line(&mut out, '-', l);
    }
    for l in &new[prefix..new.len() - suffix] {
        line(&mut out, '+', l);
    }
    for l in &old[old.len() - suffix..old_to] {
        line(&mut out, ' ', l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hunk_with_context() {
        let d = unified(
            Path::new("/etc/x"),
            Some("a\nb\nc\nd\ne\n"),
            Some("a\nb\nc\nd\nX\ne\n"),
            "install",
        );
        assert_eq!(
            d,
            "--- /etc/x\n+++ /etc/x (after install)\n@@ -2,4 +2,5 @@\n b\n c\n d\n+X\n e\n"
        );
    }

    #[test]
    fn created_and_removed_files() {
        let d = unified(Path::new("/x"), None, Some("a\n"), "install");
        assert!(d.starts_with("--- /dev/null\n+++ /x (after install)\n@@ -0,0 +1,1 @@\n+a\n"));
        let d = unified(Path::new("/x"), Some("a\n"), None, "uninstall");
        assert!(d.ends_with("+++ /dev/null\n@@ -1,1 +0,0 @@\n-a\n"), "{d}");
    }
}
