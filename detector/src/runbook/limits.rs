//! What a runbook file may cost before the YAML parser sees it. The parser
//! takes time that grows with the square of the nesting depth (a `note` of
//! 100,000 nested brackets took about 40 s), so a file is measured first,
//! in one cheap pass over its bytes: its size, then how deep it nests.
//! Each refusal names the line (and column) where the limit is crossed.
//! The third limit, steps per runbook, is the schema's ([`MAX_STEPS`]).
//!
//! The depth measured here is an estimate that errs on the deep side:
//! flow collections (`[`, `{`) where a node may start (not in quoted or
//! plain scalars, nor comments), indentation levels, and `- ` / `? ` / `: `
//! entries opened on one line. A runbook needs about six levels, so the
//! limit leaves ample room for any real file. The pass is linear: no
//! look-back, so a long line costs no more than its length.

/// The largest runbook file, in bytes. The shipped ones are about 1 KiB.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// The deepest nesting (collections within collections) of a file.
pub const MAX_DEPTH: usize = 32;
/// The most steps a runbook may have.
pub const MAX_STEPS: usize = 100;

/// A file past a limit: where, and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The line a file of `len` bytes crosses [`MAX_FILE_BYTES`] on, given its
/// first bytes (at least the limit's worth). `None` when it is within it.
pub fn size(head: &[u8], len: u64) -> Option<Refusal> {
    if len <= MAX_FILE_BYTES as u64 {
        return None;
    }
    let within = &head[..head.len().min(MAX_FILE_BYTES)];
    let line = within.iter().filter(|b| **b == b'\n').count() + 1;
    Some(Refusal {
        line,
        column: 1,
        message: format!(
            "the file is {len} bytes, larger than a runbook may be ({} KiB); it passes the limit on this line",
            MAX_FILE_BYTES / 1024
        ),
    })
}

/// Checks the size and the nesting depth of a runbook's text; linear in its
/// length, and done before the YAML parser sees it.
pub fn check(text: &str) -> Result<(), Refusal> {
    if let Some(r) = size(text.as_bytes(), text.len() as u64) {
        return Err(r);
    }
    depth(text)
}

fn too_deep(line: usize, column: usize) -> Refusal {
    Refusal { line, column, message: format!("nested deeper than {MAX_DEPTH} levels; a runbook needs about six") }
}

/// True when the byte at `j` ends a token: a space, a tab, or the line's end.
fn ends_token(bytes: &[u8], j: usize) -> bool {
    matches!(bytes.get(j), None | Some(b' ' | b'\t'))
}

/// The nesting-depth estimate (see the module's documentation).
fn depth(text: &str) -> Result<(), Refusal> {
    // Indentations of the open block collections.
    let mut indents: Vec<usize> = Vec::new();
    // Open flow collections.
    let mut flow = 0usize;
    // Inside a quoted scalar that goes on past its line.
    let mut quote: Option<u8> = None;
    // Inside a block scalar (`|`, `>`): its lines are text, indented more
    // than this.
    let mut block_scalar: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let rest = &bytes[indent..];
        if let Some(parent) = block_scalar {
            if rest.is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut pos = indent;
        if quote.is_none() && flow == 0 {
            if rest.is_empty() || rest[0] == b'#' || rest.starts_with(b"---") || rest.starts_with(b"...") {
                continue;
            }
            while indents.last().is_some_and(|top| *top > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
            // `- - - x` (or `? - x`): each entry opens a collection inside the last.
            while bytes[pos..].starts_with(b"- ") || bytes[pos..].starts_with(b"? ") || bytes[pos..].starts_with(b": ")
            {
                pos += 2;
                while bytes.get(pos) == Some(&b' ') {
                    pos += 1;
                }
                indents.push(pos);
                if indents.len() > MAX_DEPTH {
                    return Err(too_deep(n, pos + 1));
                }
            }
            if indents.len() > MAX_DEPTH {
                return Err(too_deep(n, indent + 1));
            }
        }
        // Where a node may start (after an indicator, or a node's
        // properties: an anchor `&a`, a tag `!!seq`): there a quote starts
        // a quoted scalar and a bracket a collection; elsewhere (`don't`,
        // `a [b`) they are a plain scalar's text. One pass, no look-back.
        let mut node = true;
        let mut j = pos;
        while j < bytes.len() {
            let c = bytes[j];
            match quote {
                Some(b'"') => match c {
                    b'\\' => j += 1,
                    b'"' => quote = None,
                    _ => {}
                },
                Some(_) => {
                    if c == b'\'' {
                        if bytes.get(j + 1) == Some(&b'\'') {
                            j += 1;
                        } else {
                            quote = None;
                        }
                    }
                }
                None => match c {
                    b' ' | b'\t' => {}
                    b'#' if j == 0 || bytes[j - 1] == b' ' || bytes[j - 1] == b'\t' => break,
                    b'[' | b'{' if node || flow > 0 => {
                        flow += 1;
                        node = true;
                        if indents.len() + flow > MAX_DEPTH {
                            return Err(too_deep(n, j + 1));
                        }
                    }
                    b']' | b'}' if flow > 0 => {
                        flow -= 1;
                        node = false;
                    }
                    b',' if flow > 0 => node = true,
                    b'"' | b'\'' if node => {
                        quote = Some(c);
                        node = false;
                    }
                    b'|' | b'>' if node && flow == 0 => {
                        block_scalar = Some(indent);
                        break;
                    }
                    b'&' | b'!' if node => {
                        // Properties: the node still to come starts after them.
                        while j + 1 < bytes.len()
                            && !matches!(bytes[j + 1], b' ' | b'\t' | b',' | b'[' | b']' | b'{' | b'}')
                        {
                            j += 1;
                        }
                    }
                    b'-' | b'?' | b':' if ends_token(bytes, j + 1) => node = true,
                    b':' if flow > 0 => node = true,
                    _ => node = false,
                },
            }
            j += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const HEAD: &str = "name: x\ntrigger: { families: [any] }\nsteps:\n";

    #[test]
    fn real_runbooks_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                assert_eq!(check(&text), Ok(()), "{}", p.display());
            }
        }
        let tricky = r#"name: x # a comment with [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
trigger: { families: [any] }
steps:
  - note: "{{ top_sources[0].addr }} [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
  - note: 'it''s [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['
  - note: plain text [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
  - note: |
      a block scalar
              [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
                  indented any way
        it likes
  - note: "a quoted scalar
      over [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
      lines"
  - notify: { channel: slack, url: "https://x.test/", headers: { A: "b" } }
"#;
        assert_eq!(check(tricky), Ok(()));
    }

    /// Each pathological file is refused where the limit is crossed, and
    /// fast: well under a second even in a debug build.
    #[test]
    fn pathological_files_are_refused_fast_with_their_place() {
        let cases: Vec<(&str, String, usize, &str)> = vec![
            ("100,000 nested brackets", format!("{HEAD}  - note: {}\n", "[".repeat(100_000)), 4, "larger than"),
            ("50,000 nested brackets", format!("{HEAD}  - note: {}\n", "[".repeat(50_000)), 4, "nested deeper than 32"),
            (
                "50,000 nested maps in flow",
                format!("{HEAD}  - note: {}\n", "{a: ".repeat(12_000)),
                4,
                "nested deeper than 32",
            ),
            (
                "deep indentation",
                format!(
                    "{HEAD}  - note:\n{}",
                    (0..300).map(|i| format!("{}k:\n", " ".repeat(i + 4))).collect::<String>()
                ),
                35,
                "nested deeper than 32",
            ),
            ("nested entries", format!("{HEAD}  {}note: x\n", "- ".repeat(10_000)), 4, "nested deeper than 32"),
            ("nested keys", format!("{HEAD}  - note: x\n{}x\n", "? ".repeat(10_000)), 5, "nested deeper than 32"),
            (
                "brackets after an anchor",
                format!("{HEAD}  - note: &a {}\n", "[".repeat(30_000)),
                4,
                "nested deeper than 32",
            ),
            (
                "brackets after a tag",
                format!("{HEAD}  - note: !!seq {}\n", "[".repeat(30_000)),
                4,
                "nested deeper than 32",
            ),
            ("brackets in a plain scalar", format!("{HEAD}  - note: a{}\n", "[".repeat(60_000)), 0, ""),
            (
                "60,000 steps",
                format!("{HEAD}{}", "  - note: hi\n".repeat(60_000)),
                3 + (MAX_FILE_BYTES - 44) / 13 + 1,
                "larger than",
            ),
            ("a huge file", format!("{HEAD}  - note: \"{}\"\n", "x".repeat(10_000_000)), 4, "larger than"),
        ];
        for (what, text, line, expect) in cases {
            let t0 = Instant::now();
            let r = check(&text);
            let took = t0.elapsed();
            assert!(took < Duration::from_millis(200), "{what}: {took:?}");
            if expect.is_empty() {
                assert_eq!(r, Ok(()), "{what}: text, not nesting");
                continue;
            }
            let r = r.expect_err(what);
            assert!(r.message.contains(expect), "{what}: {r:?}");
            assert_eq!(r.line, line, "{what}: {r:?}");
        }
    }

    #[test]
    fn the_size_limit_counts_bytes() {
        let just = format!("{HEAD}  - note: \"{}\"\n", "x".repeat(MAX_FILE_BYTES - HEAD.len() - 13));
        assert_eq!(just.len(), MAX_FILE_BYTES);
        assert_eq!(check(&just), Ok(()));
        let over = format!("{just} ");
        assert_eq!(check(&over).unwrap_err().line, 5);
    }
}
