//! The `markdown` template function: CommonMark with GitHub's extensions (tables,
//! strikethrough, task lists, bare URLs as links) and footnotes, parsed by
//! pulldown-cmark and written the way Caddy's goldmark writes it (`<hr>`, heading ids
//! made from the heading's text, raw HTML kept).

use pulldown_cmark::{Alignment, CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use std::collections::HashMap;
use std::fmt::Write;

/// `text` as HTML.
pub fn to_html(text: &str) -> String {
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let events: Vec<Event<'_>> = Parser::new_ext(text, opts).collect();
    let mut w = Writer::default();
    w.write_all(&events);
    w.finish()
}

#[derive(Default)]
struct Writer {
    out: String,
    ids: HashMap<String, usize>,
    /// Per open list: whether it is tight (items without paragraphs).
    tight: Vec<bool>,
    table_align: Vec<Alignment>,
    cell: usize,
    in_head: bool,
    /// Inside a link, code or an image: bare URLs stay text.
    no_link: usize,
    footnotes: Vec<(String, String)>,
    footnote_refs: Vec<String>,
    /// Where the body of the footnote being written started.
    footnote_at: Option<(String, usize)>,
    heading_at: Option<(u8, usize)>,
    /// Inside an image: its alt text so far, and its title.
    image_alt: Option<String>,
    image_title: String,
}

impl Writer {
    fn write_all(&mut self, events: &[Event<'_>]) {
        let mut i = 0;
        while i < events.len() {
            // A list is tight when none of its items holds a paragraph.
            if let Event::Start(Tag::List(_)) = &events[i] {
                self.tight.push(list_is_tight(&events[i..]));
            }
            self.event(&events[i]);
            i += 1;
        }
    }

    fn in_tight_item(&self) -> bool {
        self.tight.last().copied().unwrap_or(false)
    }

    fn event(&mut self, e: &Event<'_>) {
        if let Some(alt) = self.image_alt.as_mut() {
            match e {
                Event::Text(t) | Event::Code(t) => {
                    alt.push_str(t);
                    return;
                }
                Event::End(TagEnd::Image) => {}
                _ => return,
            }
        }
        match e {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(*tag),
            Event::Text(t) => {
                if self.no_link > 0 {
                    escape_into(&mut self.out, t);
                } else {
                    linkify(&mut self.out, t);
                }
            }
            Event::Code(t) => {
                self.out.push_str("<code>");
                escape_into(&mut self.out, t);
                self.out.push_str("</code>");
            }
            Event::Html(h) | Event::InlineHtml(h) => self.out.push_str(h),
            Event::SoftBreak => self.out.push('\n'),
            Event::HardBreak => self.out.push_str("<br>\n"),
            Event::Rule => {
                self.block_start();
                self.out.push_str("<hr>\n");
            }
            Event::TaskListMarker(done) => {
                self.out.push_str(if *done {
                    "<input checked=\"\" disabled=\"\" type=\"checkbox\"> "
                } else {
                    "<input disabled=\"\" type=\"checkbox\"> "
                });
            }
            Event::FootnoteReference(label) => {
                let n = match self.footnote_refs.iter().position(|l| l == label.as_ref()) {
                    Some(i) => i + 1,
                    None => {
                        self.footnote_refs.push(label.to_string());
                        self.footnote_refs.len()
                    }
                };
                let _ = write!(
                    self.out,
                    "<sup id=\"fnref:{n}\"><a href=\"#fn:{n}\" class=\"footnote-ref\" role=\"doc-noteref\">{n}</a></sup>"
                );
            }
            Event::InlineMath(t) | Event::DisplayMath(t) => escape_into(&mut self.out, t),
        }
    }

    /// A block inside a tight list item starts on a line of its own.
    fn block_start(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    fn start(&mut self, tag: &Tag<'_>) {
        if matches!(
            tag,
            Tag::List(_)
                | Tag::BlockQuote(_)
                | Tag::CodeBlock(_)
                | Tag::Table(_)
                | Tag::Heading { .. }
                | Tag::HtmlBlock
        ) {
            self.block_start();
        }
        match tag {
            Tag::Paragraph if !self.in_tight_item() || self.footnote_at.is_some() => {
                self.out.push_str("<p>");
            }
            Tag::Heading { level, .. } => {
                let n = *level as u8;
                self.heading_at = Some((n, self.out.len()));
            }
            Tag::BlockQuote(_) => self.out.push_str("<blockquote>\n"),
            Tag::CodeBlock(kind) => {
                self.no_link += 1;
                match kind {
                    CodeBlockKind::Fenced(info) if !info.trim().is_empty() => {
                        let lang = info.split_whitespace().next().unwrap_or_default();
                        self.out.push_str("<pre><code class=\"language-");
                        escape_into(&mut self.out, lang);
                        self.out.push_str("\">");
                    }
                    _ => self.out.push_str("<pre><code>"),
                }
            }
            Tag::List(Some(start)) => {
                if *start == 1 {
                    self.out.push_str("<ol>\n");
                } else {
                    let _ = writeln!(self.out, "<ol start=\"{start}\">");
                }
            }
            Tag::List(None) => self.out.push_str("<ul>\n"),
            Tag::Item => {
                self.out.push_str("<li>");
                if !self.in_tight_item() {
                    self.out.push('\n');
                }
            }
            Tag::FootnoteDefinition(label) => {
                self.footnote_at = Some((label.to_string(), self.out.len()));
            }
            Tag::Table(align) => {
                self.table_align = align.clone();
                self.out.push_str("<table>\n");
            }
            Tag::TableHead => {
                self.in_head = true;
                self.cell = 0;
                self.out.push_str("<thead>\n<tr>\n");
            }
            Tag::TableRow => {
                self.cell = 0;
                self.out.push_str("<tr>\n");
            }
            Tag::TableCell => {
                let name = if self.in_head { "th" } else { "td" };
                let align = match self.table_align.get(self.cell) {
                    Some(Alignment::Left) => " style=\"text-align:left\"",
                    Some(Alignment::Center) => " style=\"text-align:center\"",
                    Some(Alignment::Right) => " style=\"text-align:right\"",
                    _ => "",
                };
                let _ = write!(self.out, "<{name}{align}>");
            }
            Tag::Emphasis => self.out.push_str("<em>"),
            Tag::Strong => self.out.push_str("<strong>"),
            Tag::Strikethrough => self.out.push_str("<del>"),
            Tag::Link {
                dest_url, title, ..
            } => {
                self.no_link += 1;
                self.out.push_str("<a href=\"");
                escape_url(&mut self.out, dest_url);
                self.out.push('"');
                if !title.is_empty() {
                    self.out.push_str(" title=\"");
                    escape_into(&mut self.out, title);
                    self.out.push('"');
                }
                self.out.push('>');
            }
            Tag::Image {
                dest_url, title, ..
            } => {
                self.out.push_str("<img src=\"");
                escape_url(&mut self.out, dest_url);
                self.out.push_str("\" alt=\"");
                // The alt text is the image's text, written (with the title) at its end.
                self.image_alt = Some(String::new());
                self.image_title = title.to_string();
            }
            Tag::HtmlBlock => {}
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph if !self.in_tight_item() || self.footnote_at.is_some() => {
                self.out.push_str("</p>\n");
            }
            TagEnd::Heading(level) => {
                if let Some((n, at)) = self.heading_at.take() {
                    let inner = self.out.split_off(at);
                    let id = self.heading_id(&strip_tags(&inner));
                    let _ = writeln!(self.out, "<h{n} id=\"{id}\">{inner}</h{n}>");
                } else {
                    let _ = writeln!(self.out, "</h{}>", level as u8);
                }
            }
            TagEnd::BlockQuote(_) => self.out.push_str("</blockquote>\n"),
            TagEnd::CodeBlock => {
                self.no_link = self.no_link.saturating_sub(1);
                self.out.push_str("</code></pre>\n");
            }
            TagEnd::List(ordered) => {
                self.tight.pop();
                self.out
                    .push_str(if ordered { "</ol>\n" } else { "</ul>\n" });
            }
            TagEnd::Item => self.out.push_str("</li>\n"),
            TagEnd::FootnoteDefinition => {
                if let Some((label, at)) = self.footnote_at.take() {
                    let body = self.out.split_off(at);
                    self.footnotes.push((label, body));
                }
            }
            TagEnd::Table => self.out.push_str("</tbody>\n</table>\n"),
            TagEnd::TableHead => {
                self.in_head = false;
                self.out.push_str("</tr>\n</thead>\n<tbody>\n");
            }
            TagEnd::TableRow => self.out.push_str("</tr>\n"),
            TagEnd::TableCell => {
                let name = if self.in_head { "th" } else { "td" };
                let _ = writeln!(self.out, "</{name}>");
                self.cell += 1;
            }
            TagEnd::Emphasis => self.out.push_str("</em>"),
            TagEnd::Strong => self.out.push_str("</strong>"),
            TagEnd::Strikethrough => self.out.push_str("</del>"),
            TagEnd::Link => {
                self.no_link = self.no_link.saturating_sub(1);
                self.out.push_str("</a>");
            }
            TagEnd::Image => {
                let alt = self.image_alt.take().unwrap_or_default();
                escape_into(&mut self.out, &alt);
                self.out.push('"');
                let title = std::mem::take(&mut self.image_title);
                if !title.is_empty() {
                    self.out.push_str(" title=\"");
                    escape_into(&mut self.out, &title);
                    self.out.push('"');
                }
                self.out.push('>');
            }
            _ => {}
        }
    }

    /// goldmark's automatic heading id: ASCII letters and digits, lowercased, with
    /// spaces, `-` and `_` as `-`; `heading` when nothing is left; `-1`, `-2`... for
    /// repeats.
    fn heading_id(&mut self, text: &str) -> String {
        let mut id = String::new();
        for c in text.trim().chars() {
            if c.is_ascii_alphanumeric() {
                id.push(c.to_ascii_lowercase());
            } else if c == ' ' || c == '-' || c == '_' {
                id.push('-');
            }
        }
        if id.is_empty() {
            id = "heading".into();
        }
        let n = self.ids.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            format!("{id}-{}", *n - 1)
        } else {
            id
        }
    }

    fn finish(mut self) -> String {
        let refs = std::mem::take(&mut self.footnote_refs);
        if !refs.is_empty() {
            self.out
                .push_str("<div class=\"footnotes\" role=\"doc-endnotes\">\n<hr>\n<ol>\n");
            for (i, label) in refs.iter().enumerate() {
                let n = i + 1;
                let body = self
                    .footnotes
                    .iter()
                    .find(|(l, _)| l == label)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                let back = format!(
                    "&#160;<a href=\"#fnref:{n}\" class=\"footnote-backref\" role=\"doc-backlink\">&#x21a9;&#xfe0e;</a>"
                );
                // The back link goes inside the note's last paragraph.
                let body = match body.rfind("</p>") {
                    Some(at) => format!("{}{back}{}", &body[..at], &body[at..]),
                    None => format!("{body}{back}"),
                };
                let _ = writeln!(self.out, "<li id=\"fn:{n}\">\n{}</li>", body);
            }
            self.out.push_str("</ol>\n</div>\n");
        }
        self.out
    }
}

/// Whether the list starting at `events[0]` is tight: no item of its own holds a
/// paragraph (pulldown-cmark leaves paragraphs out of tight items).
fn list_is_tight(events: &[Event<'_>]) -> bool {
    let mut depth = 0;
    let mut item_depth = 0;
    for e in events {
        match e {
            Event::Start(Tag::List(_)) => depth += 1,
            Event::End(TagEnd::List(_)) => {
                depth -= 1;
                if depth == 0 {
                    return true;
                }
            }
            Event::Start(Tag::Item) if depth == 1 => item_depth = 1,
            Event::Start(Tag::Paragraph) if depth == 1 && item_depth == 1 => return false,
            _ => {}
        }
    }
    true
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
}

fn escape_into(out: &mut String, t: &str) {
    for c in t.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

fn escape_url(out: &mut String, url: &str) {
    for b in url.bytes() {
        match b {
            b'"' => out.push_str("%22"),
            b'&' => out.push_str("&amp;"),
            b'<' => out.push_str("%3C"),
            b'>' => out.push_str("%3E"),
            b' ' => out.push_str("%20"),
            b if b.is_ascii() => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// Text with bare `http://`, `https://` and `www.` URLs made links (GitHub's autolinks).
fn linkify(out: &mut String, t: &str) {
    let mut rest = t;
    loop {
        let found = ["https://", "http://", "www."]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .filter(|(i, _)| *i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric())
            .min_by_key(|(i, _)| *i);
        let Some((at, prefix)) = found else {
            escape_into(out, rest);
            return;
        };
        let tail = &rest[at..];
        let mut end = tail
            .find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(tail.len());
        // Trailing punctuation is not part of the link.
        while end > 0
            && tail[..end].ends_with(['.', ',', ':', ';', '!', '?', '"', '\'', ')', '*', '_', '~'])
        {
            end -= 1;
        }
        let url = &tail[..end];
        if url.len() <= prefix.len()
            || !url[prefix.len()..].contains(|c: char| c.is_ascii_alphanumeric())
        {
            escape_into(out, &rest[..at + prefix.len()]);
            rest = &rest[at + prefix.len()..];
            continue;
        }
        escape_into(out, &rest[..at]);
        out.push_str("<a href=\"");
        if prefix == "www." {
            out.push_str("http://");
        }
        escape_url(out, url);
        out.push_str("\">");
        escape_into(out, url);
        out.push_str("</a>");
        rest = &tail[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_html_like_goldmark() {
        assert_eq!(
            to_html("# Hello World\n\nSome *text* and `code`.\n\n---\n"),
            "<h1 id=\"hello-world\">Hello World</h1>\n<p>Some <em>text</em> and <code>code</code>.</p>\n<hr>\n"
        );
        assert_eq!(
            to_html("- a\n- [x] b\n"),
            "<ul>\n<li>a</li>\n<li><input checked=\"\" disabled=\"\" type=\"checkbox\"> b</li>\n</ul>\n"
        );
        assert_eq!(
            to_html("| a | b |\n|:--|--:|\n| 1 | 2 |\n"),
            "<table>\n<thead>\n<tr>\n<th style=\"text-align:left\">a</th>\n<th style=\"text-align:right\">b</th>\n</tr>\n</thead>\n<tbody>\n<tr>\n<td style=\"text-align:left\">1</td>\n<td style=\"text-align:right\">2</td>\n</tr>\n</tbody>\n</table>\n"
        );
        assert_eq!(
            to_html("see https://example.com/x. ~~old~~\n"),
            "<p>see <a href=\"https://example.com/x\">https://example.com/x</a>. <del>old</del></p>\n"
        );
        assert_eq!(
            to_html("## Dup\n## Dup\n"),
            "<h2 id=\"dup\">Dup</h2>\n<h2 id=\"dup-1\">Dup</h2>\n"
        );
        assert_eq!(
            to_html("```rust\nlet a = 1 < 2;\n```\n"),
            "<pre><code class=\"language-rust\">let a = 1 &lt; 2;\n</code></pre>\n"
        );
        assert_eq!(to_html("<div>raw</div>\n"), "<div>raw</div>\n");
    }

    #[test]
    fn footnotes_at_the_end() {
        let html = to_html("Text[^n].\n\n[^n]: The note.\n");
        assert!(html.starts_with("<p>Text<sup id=\"fnref:1\"><a href=\"#fn:1\" class=\"footnote-ref\" role=\"doc-noteref\">1</a></sup>.</p>\n"), "{html}");
        assert!(html.contains("<div class=\"footnotes\" role=\"doc-endnotes\">\n<hr>\n<ol>\n<li id=\"fn:1\">\n<p>The note.&#160;<a href=\"#fnref:1\""), "{html}");
    }
}
