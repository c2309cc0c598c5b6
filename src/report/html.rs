//! HTML for people: the escaping every page needs, the shared style sheet,
//! and a report written in Markdown turned into one self-contained page.
//!
//! Drill reports are written once, in Markdown (`jobs/drill/markdown.rs`,
//! `jobs/pitr/drill.rs`); their HTML form is converted from that text, so the
//! two cannot state different facts. Only the subset those reports use is
//! understood: `#` headings, pipe tables, `- ` lists, `**bold**`, `` `code` ``
//! and `\|`. Every piece of text is escaped: a report quotes error messages,
//! table names and hosts, none of which we chose.

use std::fmt::Write as _;

/// `text` safe in HTML element content and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // A NUL or other control character has no business in a page;
            // a replacement character shows that something was there.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The style every page shares: plain, printable, no external font. Colour
/// is never the only sign: failures also say FAILED in words.
pub const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem auto;\
max-width:72rem;padding:0 1rem;color:#1b1b1b;background:#fff;line-height:1.4}\
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin:.2rem 0}\
h3{font-size:1rem;margin:1rem 0 .3rem}\
table{border-collapse:collapse;margin:.4rem 0;font-size:.9rem}\
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.num,th.num{text-align:right}\
code{background:#f2f2f2;padding:0 .2rem}\
.failed{color:#b00020;font-weight:bold}.ok{color:#17692c;font-weight:bold}\
.warn{color:#8a5a00;font-weight:bold}.muted{color:#666}\
section.job{border:1px solid #ccc;border-left:.5rem solid #17692c;padding:.6rem 1rem;margin:1rem 0}\
section.job.is-failing{border-left-color:#b00020;background:#fff6f7}\
section.job.is-warning{border-left-color:#c98a00}\
dl{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;margin:.4rem 0}\
dt{font-weight:bold}dd{margin:0}\
.charts{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}\
figcaption{font-size:.85rem;color:#444}\
";

/// A whole page: `title` in the head, `body` as given (already HTML).
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// A report of ours, written in Markdown, as one HTML page.
pub fn from_markdown(markdown: &str) -> String {
    let mut title = String::from("report");
    let mut body = String::new();
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut list: Vec<String> = Vec::new();
    let flush = |body: &mut String, table: &mut Vec<Vec<String>>, list: &mut Vec<String>| {
        if !table.is_empty() {
            body.push_str(&render_table(table));
            table.clear();
        }
        if !list.is_empty() {
            body.push_str("<ul>\n");
            for item in list.iter() {
                let _ = writeln!(body, "<li>{}</li>", inline(item));
            }
            body.push_str("</ul>\n");
            list.clear();
        }
    };
    for line in markdown.lines() {
        let line = line.trim_end();
        if line.starts_with('|') {
            if !list.is_empty() {
                flush(&mut body, &mut Vec::new(), &mut list);
            }
            table.push(cells(line));
            continue;
        }
        if let Some(item) = line.strip_prefix("- ") {
            if !table.is_empty() {
                flush(&mut body, &mut table, &mut Vec::new());
            }
            list.push(item.to_owned());
            continue;
        }
        flush(&mut body, &mut table, &mut list);
        if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(body, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = line.strip_prefix("# ") {
            title = h.to_owned();
            let _ = writeln!(body, "<h1>{}</h1>", inline(h));
        } else if !line.is_empty() {
            let _ = writeln!(body, "<p>{}</p>", inline(line));
        }
    }
    flush(&mut body, &mut table, &mut list);
    document(&title, &body)
}

/// The cells of a pipe-table row; `\|` is a pipe inside a cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                if let Some(last) = out.last_mut() {
                    last.push('|');
                }
            }
            '|' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out.iter().map(|c| c.trim().to_owned()).collect()
}

/// A pipe table: the first row is the header, the second the alignment.
fn render_table(rows: &[Vec<String>]) -> String {
    let is_rule = |row: &Vec<String>| {
        row.iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
    };
    let right: Vec<bool> = rows
        .get(1)
        .filter(|r| is_rule(r))
        .map(|r| r.iter().map(|c| c.ends_with(':')).collect())
        .unwrap_or_default();
    let cell = |tag: &str, i: usize, text: &str| {
        let class = if right.get(i).copied().unwrap_or(false) {
            " class=\"num\""
        } else {
            ""
        };
        format!("<{tag}{class}>{}</{tag}>", inline(text))
    };
    let mut out = String::from("<table>\n");
    for (n, row) in rows.iter().enumerate() {
        if n == 1 && is_rule(row) {
            continue;
        }
        // A header of empty cells (`| | |`) is a key-value table's: none shown.
        if n == 0 && row.iter().all(String::is_empty) {
            continue;
        }
        let tag = if n == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for (i, text) in row.iter().enumerate() {
            // The first column of a key-value table names the row.
            let tag = if i == 0 && rows[0].iter().all(String::is_empty) {
                "th"
            } else {
                tag
            };
            out.push_str(&cell(tag, i, text));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// `**bold**` and `` `code` `` of escaped text. Bold FAILED and PASSED get
/// a colour too; the word stays, for readers without colour.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        let bold = rest.find("**");
        let code = rest.find('`');
        match (bold, code) {
            (Some(b), c) if c.is_none_or(|c| b < c) => {
                let after = &rest[b + 2..];
                let Some(end) = after.find("**") else {
                    out.push_str(&escape(rest));
                    break;
                };
                out.push_str(&escape(&rest[..b]));
                let word = &after[..end];
                let class = if word.starts_with("FAILED") {
                    " class=\"failed\""
                } else if word.starts_with("PASSED") {
                    " class=\"ok\""
                } else {
                    ""
                };
                let _ = write!(out, "<strong{class}>{}</strong>", escape(word));
                rest = &after[end + 2..];
            }
            (_, Some(c)) => {
                let after = &rest[c + 1..];
                let Some(end) = after.find('`') else {
                    out.push_str(&escape(rest));
                    break;
                };
                out.push_str(&escape(&rest[..c]));
                let _ = write!(out, "<code>{}</code>", escape(&after[..end]));
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&escape(rest));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        let hostile = r#"<script>alert("x")</script>&amp;' onload='x"#;
        let safe = escape(hostile);
        assert_eq!(
            safe,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;&#39; onload=&#39;x"
        );
        for c in ['<', '>', '"', '\''] {
            assert!(!safe.contains(c), "{c} left in {safe}");
        }
        // Attribute breakout and comment/CDATA openers are inert.
        assert_eq!(escape("\" autofocus x=\""), "&quot; autofocus x=&quot;");
        assert_eq!(escape("<!-- ]]>"), "&lt;!-- ]]&gt;");
        // Control characters do not reach the page; text passes unchanged.
        assert_eq!(escape("a\u{0}b\u{1b}[31m"), "a\u{FFFD}b\u{FFFD}[31m");
        assert_eq!(escape("job nightly-2 ü ✓\n"), "job nightly-2 ü ✓\n");
    }

    #[test]
    fn a_drill_report_becomes_a_page_with_the_same_facts() {
        let md = "# Disaster-recovery drill: job <b>\n\n| | |\n|---|---|\n\
                  | Result | **FAILED**: table a\\|b <i>gone</i> |\n| RTO | 3 s |\n\n\
                  ## Steps\n\n| Step | Time | Result |\n|---|---:|---|\n| restore | 1.0 s | ok |\n\n\
                  ## Warnings\n\n- disk `low` & slow\n";
        let html = from_markdown(md);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Disaster-recovery drill: job &lt;b&gt;</title>"));
        assert!(html.contains(
            "<tr><th>Result</th><td><strong class=\"failed\">FAILED</strong>: \
             table a|b &lt;i&gt;gone&lt;/i&gt;</td></tr>"
        ));
        assert!(html.contains("<tr><th>RTO</th><td>3 s</td></tr>"));
        assert!(html.contains("<tr><th>Step</th><th class=\"num\">Time</th><th>Result</th></tr>"));
        assert!(html.contains("<td class=\"num\">1.0 s</td>"));
        assert!(html.contains("<li>disk <code>low</code> &amp; slow</li>"));
        assert!(!html.contains("<b>") && !html.contains("<i>"));
        assert!(!html.contains("http"), "no external reference: {html}");
    }

    #[test]
    fn unclosed_markers_are_text() {
        assert_eq!(inline("**half `open"), "**half `open");
        assert_eq!(inline("a ** b"), "a ** b");
    }
}
