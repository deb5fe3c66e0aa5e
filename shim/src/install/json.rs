//! Minimal edits of Docker's `daemon.json`: one member added to or removed from an
//! object, every other byte of the file kept, so an admin's keys, order, indentation and
//! line breaks survive, and `uninstall` after `install` gives back the very bytes the
//! file had. The text is checked with serde_json before and after each edit.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// One member of a JSON object, as byte offsets into the text.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: String,
    /// The key's opening quote.
    pub start: usize,
    /// Just after the key's closing quote.
    pub key_end: usize,
    pub value_start: usize,
    /// Just after the value.
    pub end: usize,
}

/// An object: its braces and its members, in the file's order.
#[derive(Debug, Clone)]
pub struct Object {
    pub open: usize,
    pub close: usize,
    pub members: Vec<Member>,
}

impl Object {
    pub fn get(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.key == key)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `i` at a string's opening quote: the index after its closing quote.
fn skip_string(b: &[u8], i: usize) -> Result<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    bail!("unterminated string at byte {i}")
}

/// `i` at a value's first byte: the index just after the value.
fn skip_value(b: &[u8], i: usize) -> Result<usize> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            bail!("unterminated value at byte {i}")
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Ok(j)
        }
        None => bail!("value expected at the end of the text"),
    }
}

/// The object whose `{` is at `open`.
pub fn object_at(text: &str, open: usize) -> Result<Object> {
    let b = text.as_bytes();
    ensure!(b.get(open) == Some(&b'{'), "object expected at byte {open}");
    let mut members = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(Object {
            open,
            close: i,
            members,
        });
    }
    loop {
        ensure!(b.get(i) == Some(&b'"'), "key expected at byte {i}");
        let key_end = skip_string(b, i)?;
        let key: String = serde_json::from_str(&text[i..key_end]).context("a key")?;
        let colon = skip_ws(b, key_end);
        ensure!(b.get(colon) == Some(&b':'), "':' expected at byte {colon}");
        let value_start = skip_ws(b, colon + 1);
        let end = skip_value(b, value_start)?;
        members.push(Member {
            key,
            start: i,
            key_end,
            value_start,
            end,
        });
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                return Ok(Object {
                    open,
                    close: i,
                    members,
                });
            }
            _ => bail!("',' or '}}' expected at byte {i}"),
        }
    }
}

/// The file's top-level object.
pub fn top(text: &str) -> Result<Object> {
    let v: Value = serde_json::from_str(text).context("not valid JSON")?;
    ensure!(v.is_object(), "not a JSON object");
    let open = skip_ws(text.as_bytes(), 0);
    object_at(text, open)
}

/// The whitespace that starts the line holding `pos`, if `pos` is the first thing on it.
fn line_indent(text: &str, pos: usize) -> Option<&str> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let indent = &text[line_start..pos];
    indent
        .bytes()
        .all(|c| c == b' ' || c == b'\t')
        .then_some(indent)
}

/// The indentation of the line holding `pos`, whatever follows it.
fn indent_of_line(text: &str, pos: usize) -> &str {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

/// `value` pretty-printed with `unit` per level, its lines after the first prefixed by
/// `base` (the member's own indentation).
fn pretty(value: &Value, unit: &str, base: &str) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(unit.as_bytes());
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(value, &mut ser).expect("JSON values serialize");
    let s = String::from_utf8(out).expect("serde_json writes UTF-8");
    s.replace('\n', &format!("\n{base}"))
}

/// The text with `key: value` added as the last member of `obj`, laid out as the
/// object's existing members are (the same indentation and separator; on one line if the
/// object is on one line). `unit` is the indentation step for a multi-line layout.
pub fn insert(text: &str, obj: &Object, key: &str, value: &Value, unit: &str) -> String {
    let key_json = Value::String(key.to_string()).to_string();
    match obj.members.last() {
        Some(last) => {
            let sep = &text[last.key_end..last.value_start];
            let sep = if sep.contains('\n') { ": " } else { sep };
            let added = match line_indent(text, last.start) {
                Some(indent) => {
                    let close_indent = indent_of_line(text, obj.close);
                    let unit = indent
                        .strip_prefix(close_indent)
                        .filter(|u| !u.is_empty())
                        .unwrap_or(unit);
                    format!(",\n{indent}{key_json}{sep}{}", pretty(value, unit, indent))
                }
                None => format!(", {key_json}{sep}{value}"),
            };
            format!("{}{added}{}", &text[..last.end], &text[last.end..])
        }
        None => {
            let base = indent_of_line(text, obj.open);
            let indent = format!("{base}{unit}");
            format!(
                "{}\n{indent}{key_json}: {}\n{base}{}",
                &text[..=obj.open],
                pretty(value, unit, &indent),
                &text[obj.close..]
            )
        }
    }
}

/// The text without member `i` of `obj` (and the separator that joined it to the others).
pub fn remove(text: &str, obj: &Object, i: usize) -> String {
    let m = &obj.members;
    let (from, to) = if m.len() == 1 {
        (obj.open + 1, obj.close)
    } else if i > 0 {
        (m[i - 1].end, m[i].end)
    } else {
        (m[0].start, m[1].start)
    };
    format!("{}{}", &text[..from], &text[to..])
}

/// The indentation step the file uses: that of its top object's first member, or two
/// spaces (Docker's documentation) when the file does not show one.
pub fn indent_unit(text: &str, top: &Object) -> String {
    top.members
        .first()
        .and_then(|m| line_indent(text, m.start))
        .filter(|i| !i.is_empty())
        .unwrap_or("  ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        serde_json::json!({"runtimeType": "io.containerd.stockade.v2"})
    }

    #[test]
    fn insert_then_remove_gives_back_the_bytes() {
        for text in [
            "{\n  \"log-level\": \"warn\"\n}\n",
            "{\n    \"a\": [1, 2],\n    \"b\": {\"c\": \"}\\\"\"}\n}",
            "{\"a\":1}",
            "{ \"a\": 1, \"b\": true }\n",
            "{\n\t\"a\": null\n}\n",
        ] {
            let o = top(text).unwrap();
            let unit = indent_unit(text, &o);
            let added = insert(text, &o, "runtimes", &entry(), &unit);
            let v: Value = serde_json::from_str(&added).unwrap();
            assert_eq!(v["runtimes"], entry(), "{added}");
            let o2 = top(&added).unwrap();
            let i = o2.members.iter().position(|m| m.key == "runtimes").unwrap();
            assert_eq!(remove(&added, &o2, i), text);
        }
    }

    #[test]
    fn insert_follows_the_files_layout() {
        let text = "{\n    \"a\": 1\n}\n";
        let o = top(text).unwrap();
        let out = insert(text, &o, "k", &entry(), &indent_unit(text, &o));
        assert_eq!(
            out,
            "{\n    \"a\": 1,\n    \"k\": {\n        \"runtimeType\": \"io.containerd.stockade.v2\"\n    }\n}\n"
        );
        let text = "{}";
        let o = top(text).unwrap();
        assert_eq!(
            insert(text, &o, "k", &Value::from(1), "  "),
            "{\n  \"k\": 1\n}"
        );
    }

    #[test]
    fn removes_a_first_member() {
        let text = "{\n  \"x\": {},\n  \"y\": 2\n}";
        let o = top(text).unwrap();
        assert_eq!(remove(text, &o, 0), "{\n  \"y\": 2\n}");
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        assert!(top("[1]").is_err());
        assert!(top("{\"a\": }").is_err());
        assert!(top("").is_err());
    }
}
