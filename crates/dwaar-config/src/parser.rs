//! The Dwaarfile parser: tokens -> syntax tree ([`Document`]), with `import` expansion.
//!
//! Structure follows Caddy's Caddyfile: an optional global options block first, then
//! snippets `(name) { ... }` and site blocks. Inside a block each logical line is one
//! [`Directive`]; a line ending in `{` opens a nested block. `import` lines are replaced
//! by the tokens of a snippet or of files matched by a path or glob (relative to the
//! importing file), with `{args[N]}` / `{args[:]}` substituted, before they are parsed.
//! Environment variables (`{$VAR}`, `{$VAR:default}`) are substituted as files are lexed.

use crate::diag::{did_you_mean, Diagnostic};
use crate::lexer::{lex, ImportChain, ImportSite, Token, TokenKind};
use crate::source::{SourceFile, SourceMap, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Deepest import nesting allowed before we call it a runaway.
pub const MAX_IMPORT_DEPTH: usize = 16;

/// Deepest `{ ... }` nesting allowed. Real configs nest a handful of levels; the limit
/// keeps every recursive walk over the tree (compiling, route tables, matching a
/// request, dropping it) far from the end of a thread's stack, so no config can crash
/// `validate`, a start or a reload.
pub const MAX_NESTING: usize = 64;

/// A `{ ... }` block and the directives inside it.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub open: Span,
    pub directives: Vec<Directive>,
    pub close: Span,
}

/// One logical line inside a block, with an optional nested block.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: Token,
    pub args: Vec<Token>,
    pub block: Option<Block>,
}

impl Directive {
    /// Span from the name to the last argument.
    pub fn span(&self) -> Span {
        match self.args.last() {
            Some(last) if last.span.file == self.name.span.file => self.name.span.to(last.span),
            _ => self.name.span,
        }
    }
}

/// A site block: one or more addresses and the directives that serve them.
#[derive(Debug, Clone)]
pub struct SiteBlock {
    pub addresses: Vec<Token>,
    pub block: Block,
}

/// A parsed (but not yet validated) Dwaarfile.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub global: Option<Block>,
    pub sites: Vec<SiteBlock>,
}

/// Where environment variables come from (tests inject their own).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses the file already added to `sources` as `file`, expanding imports (which are
/// added to `sources` too). Returns the document and every diagnostic found.
pub fn parse(
    sources: &mut SourceMap,
    file: u32,
    env: EnvLookup<'_>,
) -> (Document, Vec<Diagnostic>) {
    let text = sources
        .file(file)
        .map(|f| f.text.clone())
        .unwrap_or_default();
    let (mut tokens, mut diags) = lex(file, &text, false);
    substitute_env(&mut tokens, env, &mut diags);
    let mut p = Parser {
        sources,
        tokens,
        pos: 0,
        snippets: HashMap::new(),
        diags,
        env,
        depth: 0,
    };
    let doc = p.document();
    (doc, p.diags)
}

struct Parser<'a, 'e> {
    sources: &'a mut SourceMap,
    tokens: Vec<Token>,
    pos: usize,
    snippets: HashMap<String, Vec<Token>>,
    diags: Vec<Diagnostic>,
    env: EnvLookup<'e>,
    /// Blocks open around the current token.
    depth: usize,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn eof_span(&self) -> Span {
        self.tokens
            .last()
            .map(|t| Span {
                start: t.span.end,
                ..t.span
            })
            .unwrap_or_default()
    }

    fn at_import(&self) -> bool {
        self.peek()
            .map(|t| t.line_start && t.is_word("import"))
            .unwrap_or(false)
    }

    fn document(&mut self) -> Document {
        let mut doc = Document::default();
        // Global options: a block with no keys, only as the very first thing.
        if let Some(t) = self.peek() {
            if t.is_open_brace() {
                let open = self.next().unwrap_or_else(unreachable_token);
                doc.global = Some(self.block(open));
            }
        }
        while self.peek().is_some() {
            if self.at_import() {
                self.expand_import();
                continue;
            }
            let first = self.peek().cloned().unwrap_or_else(unreachable_token);
            if first.is_open_brace() {
                self.diags.push(
                    first
                        .error("the global options block must come first in the file")
                        .with_help("move this block to the top, before any site block"),
                );
                self.next();
                self.skip_block_tail();
                continue;
            }
            if first.is_close_brace() {
                self.diags
                    .push(first.error("unexpected '}': no block is open here"));
                self.next();
                continue;
            }
            let keys = self.site_keys();
            let Some(last_key) = keys.last().cloned() else {
                self.next();
                continue;
            };
            let has_block = self
                .peek()
                .map(|t| t.is_open_brace() && !t.line_start)
                .unwrap_or(false);
            if keys.len() == 1 && is_snippet_name(&keys[0]) {
                let name = keys[0].text[1..keys[0].text.len() - 1].to_string();
                if !has_block {
                    self.diags.push(keys[0].error(format!(
                        "snippet '{name}' needs a block: ({name}) {{ ... }}"
                    )));
                    continue;
                }
                let open = self.next().unwrap_or_else(unreachable_token);
                let body = self.raw_block(&open);
                if self.snippets.insert(name.clone(), body).is_some() {
                    self.diags
                        .push(keys[0].error(format!("snippet '{name}' is defined twice")));
                }
                continue;
            }
            if has_block {
                let open = self.next().unwrap_or_else(unreachable_token);
                let block = self.block(open);
                doc.sites.push(SiteBlock {
                    addresses: keys,
                    block,
                });
            } else if doc.sites.is_empty() && !self.more_blocks_follow() {
                // A single site may omit its braces: the rest of the file is its body.
                let directives = self.directives_until_eof();
                doc.sites.push(SiteBlock {
                    addresses: keys,
                    block: Block {
                        open: last_key.span,
                        directives,
                        close: self.eof_span(),
                    },
                });
            } else {
                self.diags.push(
                    last_key
                        .error("expected '{' to open this site block")
                        .with_help("when a file has more than one site, each needs braces: example.com { ... }"),
                );
                // Skip to the next line that opens a block at the top level, then carry on.
                loop {
                    while self.peek().map(|t| !t.line_start).unwrap_or(false) {
                        self.next();
                    }
                    let line_opens = {
                        let rest = &self.tokens[self.pos..];
                        let end = rest
                            .iter()
                            .skip(1)
                            .position(|t| t.line_start)
                            .map(|p| p + 1)
                            .unwrap_or(rest.len());
                        rest[..end].last().is_some_and(|t| t.is_open_brace())
                    };
                    if self.peek().is_none() || line_opens {
                        break;
                    }
                    self.next();
                }
            }
        }
        doc
    }

    /// True when a later top-level line looks like another site block (`addr {`), so
    /// the first site may not omit its braces. Lines naming a directive do not count.
    fn more_blocks_follow(&self) -> bool {
        let toks = &self.tokens[self.pos..];
        let mut depth = 0usize;
        let mut i = 0;
        while i < toks.len() {
            let t = &toks[i];
            if t.line_start && depth == 0 {
                let line_end = toks[i + 1..]
                    .iter()
                    .position(|x| x.line_start)
                    .map(|p| i + 1 + p)
                    .unwrap_or(toks.len());
                let opens = toks[i..line_end].last().is_some_and(|x| x.is_open_brace());
                let name = t.text.as_str();
                let directive = name.starts_with('@')
                    || name == "import"
                    || crate::compile::is_known_directive(name);
                if opens && !directive && !t.is_open_brace() {
                    return true;
                }
            }
            if t.is_open_brace() {
                depth += 1;
            } else if t.is_close_brace() {
                depth = depth.saturating_sub(1);
            }
            i += 1;
        }
        false
    }

    /// Reads site addresses: the tokens of this line, continuing onto the next line
    /// while a key ends with a comma.
    fn site_keys(&mut self) -> Vec<Token> {
        let mut keys = Vec::new();
        let mut first = true;
        while let Some(t) = self.peek() {
            if t.is_open_brace() && !t.quoted() {
                break;
            }
            let continues = keys
                .last()
                .map(|k: &Token| k.text.ends_with(','))
                .unwrap_or(false);
            if !first && t.line_start && !continues {
                break;
            }
            first = false;
            let t = self.next().unwrap_or_else(unreachable_token);
            keys.push(t);
        }
        // Split comma-joined addresses (a.com,b.com) into separate keys.
        let mut out = Vec::new();
        for k in keys {
            if k.kind != TokenKind::Word || !k.text.contains(',') {
                out.push(k);
                continue;
            }
            let mut offset = 0usize;
            for part in k.text.split(',') {
                if !part.is_empty() {
                    let mut t = k.clone();
                    t.text = part.to_string();
                    let start = k.span.start as usize + offset;
                    t.span = Span::new(k.span.file, start, start + part.len());
                    out.push(t);
                }
                offset += part.len() + 1;
            }
        }
        out
    }

    /// Parses directives until the matching `}` (the `{` is already consumed).
    fn block(&mut self, open: Token) -> Block {
        if self.depth >= MAX_NESTING {
            self.diags.push(
                open.error(format!("blocks nested more than {MAX_NESTING} deep"))
                    .with_help(
                        "flatten the config: use named matchers, snippets or `route` at one level",
                    ),
            );
            self.skip_block_tail();
            return Block {
                open: open.span,
                directives: Vec::new(),
                close: open.span,
            };
        }
        self.depth += 1;
        let block = self.block_body(open);
        self.depth -= 1;
        block
    }

    fn block_body(&mut self, open: Token) -> Block {
        self.check_brace_ends_line(&open);
        let mut directives = Vec::new();
        loop {
            let Some(t) = self.peek().cloned() else {
                self.diags.push(
                    open.error("this '{' is never closed")
                        .with_help("add a matching '}' on its own line"),
                );
                return Block {
                    open: open.span,
                    directives,
                    close: self.eof_span(),
                };
            };
            if t.is_close_brace() {
                self.next();
                return Block {
                    open: open.span,
                    directives,
                    close: t.span,
                };
            }
            if self.at_import() {
                self.expand_import();
                continue;
            }
            if let Some(d) = self.directive() {
                directives.push(d);
            }
        }
    }

    fn directives_until_eof(&mut self) -> Vec<Directive> {
        let mut directives = Vec::new();
        while let Some(t) = self.peek().cloned() {
            if t.is_close_brace() {
                self.diags
                    .push(t.error("unexpected '}': no block is open here"));
                self.next();
                continue;
            }
            if self.at_import() {
                self.expand_import();
                continue;
            }
            if let Some(d) = self.directive() {
                directives.push(d);
            }
        }
        directives
    }

    /// One directive: a name, the rest of its line, and a nested block if the line ends
    /// with `{`.
    fn directive(&mut self) -> Option<Directive> {
        let name = self.next()?;
        if name.is_open_brace() {
            self.diags.push(
                name.error("unexpected '{': a block must follow a directive name on the same line"),
            );
            self.skip_block_tail();
            return None;
        }
        let mut args = Vec::new();
        let mut block = None;
        while let Some(t) = self.peek() {
            if t.line_start {
                break;
            }
            if t.is_close_brace() {
                // `}` closing the enclosing block on the same line: leave it to the caller.
                break;
            }
            let t = self.next().unwrap_or_else(unreachable_token);
            if t.is_open_brace() {
                block = Some(self.block(t));
                break;
            }
            args.push(t);
        }
        Some(Directive { name, args, block })
    }

    /// After a `{`, nothing else may follow on the same line.
    fn check_brace_ends_line(&mut self, open: &Token) {
        if let Some(t) = self.peek() {
            if !t.line_start && !t.is_close_brace() {
                let d = t
                    .error(format!(
                        "unexpected '{}' after '{{' on the same line",
                        t.text
                    ))
                    .with_help("put the block's contents on the following lines");
                self.diags.push(d);
                let _ = open;
            }
        }
    }

    /// Skips tokens to the matching `}` after an unexpected `{`.
    fn skip_block_tail(&mut self) {
        let mut depth = 1usize;
        while let Some(t) = self.next() {
            if t.is_open_brace() {
                depth += 1;
            } else if t.is_close_brace() {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }

    /// The tokens inside a snippet's braces, unparsed (snippets may hold any fragment).
    fn raw_block(&mut self, open: &Token) -> Vec<Token> {
        let mut depth = 1usize;
        let mut body = Vec::new();
        while let Some(t) = self.next() {
            if t.is_open_brace() {
                depth += 1;
            } else if t.is_close_brace() {
                depth -= 1;
                if depth == 0 {
                    return body;
                }
            }
            body.push(t);
        }
        self.diags.push(
            open.error("this '{' is never closed")
                .with_help("add a matching '}' on its own line"),
        );
        body
    }

    /// Replaces the `import` line at the cursor with the tokens it names.
    fn expand_import(&mut self) {
        let start = self.pos;
        let import_tok = self.tokens[start].clone();
        let mut end = start + 1;
        while end < self.tokens.len() && !self.tokens[end].line_start {
            end += 1;
        }
        let mut line: Vec<Token> = self.tokens[start + 1..end].to_vec();
        // `import name [args...] { ... }`: the block is what `{block}` stands for in
        // the imported tokens (the block's lines leave the stream with the import).
        let mut block: Vec<Token> = Vec::new();
        if line.len() >= 2 && line.last().is_some_and(Token::is_open_brace) {
            let open = end - 1;
            let mut depth = 0usize;
            let close = (open..self.tokens.len()).find(|&k| {
                let t = &self.tokens[k];
                if t.is_open_brace() {
                    depth += 1;
                } else if t.is_close_brace() {
                    depth -= 1;
                }
                depth == 0
            });
            match close {
                Some(close) => {
                    block = self.tokens[open + 1..close].to_vec();
                    line.pop();
                    end = close + 1;
                }
                None => {
                    self.diags.push(
                        self.tokens[open]
                            .error("this import's block is never closed")
                            .with_help("import snippet {\n\tdirectives...\n}"),
                    );
                    self.tokens.drain(start..);
                    return;
                }
            }
        }
        let Some(target) = line.first() else {
            self.diags.push(
                import_tok
                    .error("import needs a snippet name or a file path")
                    .with_help("import snippet_name [args...] or import path/to/file"),
            );
            self.tokens.drain(start..end);
            return;
        };
        let args: Vec<String> = line[1..].iter().map(|t| t.text.clone()).collect();
        let parent_chain: Vec<ImportSite> = import_tok
            .chain
            .as_deref()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let expanded = if parent_chain.len() >= MAX_IMPORT_DEPTH {
            self.diags.push(
                target
                    .error(format!(
                        "imports are nested deeper than {MAX_IMPORT_DEPTH} levels"
                    ))
                    .with_help("an import cycle through snippets or files is the usual cause"),
            );
            Vec::new()
        } else if let Some(body) = self.snippets.get(&target.text) {
            let key: Arc<str> = Arc::from(format!("snippet:{}", target.text));
            if parent_chain.iter().any(|s| s.target == key) {
                self.diags.push(target.error(format!(
                    "import cycle: snippet '{}' imports itself",
                    target.text
                )));
                Vec::new()
            } else {
                let chain = chain_with(
                    &parent_chain,
                    ImportSite {
                        span: target.span,
                        target: key,
                    },
                );
                let body = body.clone();
                self.instantiate(&body, (&args, &block), &chain, target)
            }
        } else {
            self.import_files(target, (&args, &block), &parent_chain)
        };
        self.tokens.splice(start..end, expanded);
    }

    /// Copies imported tokens, substituting `{args[...]}` and `{block}` (the import's
    /// block) and attaching the chain.
    fn instantiate(
        &mut self,
        body: &[Token],
        (args, block): (&[String], &[Token]),
        chain: &ImportChain,
        at: &Token,
    ) -> Vec<Token> {
        let mut out = Vec::with_capacity(body.len() + block.len());
        for (i, t) in body.iter().enumerate() {
            let mut t = t.clone();
            t.chain = Some(chain.clone());
            if i == 0 {
                t.line_start = true;
            }
            if !t.quoted() && t.text == "{block}" {
                for (j, b) in block.iter().enumerate() {
                    let mut b = b.clone();
                    if j == 0 {
                        b.line_start = t.line_start;
                    }
                    out.push(b);
                }
                continue;
            }
            if let Some(name) = (!t.quoted())
                .then(|| t.text.strip_prefix("{blocks.")?.strip_suffix('}'))
                .flatten()
            {
                // `{blocks.name}`: the inside of the import block's `name { ... }`
                // (nothing when it has none).
                for (j, b) in named_block(block, name).iter().enumerate() {
                    let mut b = b.clone();
                    if j == 0 {
                        b.line_start = t.line_start;
                    }
                    out.push(b);
                }
                continue;
            }
            if !t.quoted() && (t.text == "{args[:]}" || t.text == "{args.*}") {
                for (j, a) in args.iter().enumerate() {
                    let mut at = t.clone();
                    at.text = a.clone();
                    at.line_start = t.line_start && j == 0;
                    out.push(at);
                }
                continue;
            }
            if t.text.contains("{args") {
                match substitute_args(&t.text, args) {
                    Ok(s) => t.text = s,
                    Err(msg) => self.diags.push(t.error(msg).with_chain(&[at.span])),
                }
            }
            out.push(t);
        }
        out
    }

    fn import_files(
        &mut self,
        target: &Token,
        (args, block): (&[String], &[Token]),
        parent_chain: &[ImportSite],
    ) -> Vec<Token> {
        let base = self
            .sources
            .file(target.span.file)
            .map(SourceFile::base_dir)
            .unwrap_or_else(|| PathBuf::from("."));
        let pattern = target.text.as_str();
        let is_glob = pattern.contains(['*', '?', '[']);
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let mut paths = Vec::new();
        if is_glob {
            if Path::new(pattern)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                self.diags.push(
                    target
                        .error("a glob import may not contain '..'")
                        .with_help("name the files inside the config directory, or import a single file by path"),
                );
                return Vec::new();
            }
            let Some(full_str) = full.to_str() else {
                self.diags
                    .push(target.error("import path is not valid UTF-8"));
                return Vec::new();
            };
            match glob::glob(full_str) {
                Ok(entries) => {
                    let glob_root = glob_base(&full);
                    let canon_root = std::fs::canonicalize(&glob_root).unwrap_or(glob_root);
                    for e in entries.flatten() {
                        if e.is_dir() {
                            continue;
                        }
                        match std::fs::canonicalize(&e) {
                            Ok(c) if c.starts_with(&canon_root) => paths.push(e),
                            _ => {
                                self.diags.push(target.error(format!(
                                    "glob import matched '{}', which resolves outside '{}'",
                                    e.display(),
                                    canon_root.display()
                                )).with_help("a symlink in the imported directory points elsewhere; the whole import is refused"));
                                return Vec::new();
                            }
                        }
                    }
                    paths.sort();
                }
                Err(e) => {
                    self.diags
                        .push(target.error(format!("invalid glob pattern: {e}")));
                    return Vec::new();
                }
            }
            // A glob matching nothing is not an error (Caddy's behaviour).
        } else {
            if !full.exists() {
                // Name the file as written: absolute paths of the host are not leaked.
                let mut d = target.error(format!(
                    "import '{pattern}': no snippet with that name, and no such file next to the importing file"
                ));
                if let Some(s) = did_you_mean(pattern, self.snippets.keys().map(String::as_str)) {
                    d = d.with_help(format!("did you mean the snippet '{s}'?"));
                }
                self.diags.push(d);
                return Vec::new();
            }
            paths.push(full);
        }
        let mut out = Vec::new();
        for path in paths {
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let key: Arc<str> = Arc::from(canon.to_string_lossy().as_ref());
            let main_is_same = self
                .sources
                .files()
                .first()
                .and_then(|f| f.path.as_deref())
                .and_then(|p| std::fs::canonicalize(p).ok())
                .map(|p| p == canon)
                .unwrap_or(false);
            if main_is_same || parent_chain.iter().any(|s| s.target == key) {
                self.diags.push(
                    target.error(format!("import cycle: '{}' imports itself", path.display())),
                );
                continue;
            }
            let text = match crate::source::read_text(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.diags
                        .push(target.error(format!("cannot read '{}': {e}", path.display())));
                    continue;
                }
            };
            let name = display_name(&path, &base);
            let id = self
                .sources
                .add(SourceFile::new(name, Some(path.clone()), text.clone()));
            let (mut toks, diags) = lex(id, &text, false);
            let chain = chain_with(
                parent_chain,
                ImportSite {
                    span: target.span,
                    target: key,
                },
            );
            for d in diags {
                self.diags
                    .push(d.with_chain(&chain.iter().map(|s| s.span).collect::<Vec<_>>()));
            }
            substitute_env(&mut toks, self.env, &mut self.diags);
            let inst = self.instantiate(&toks, (args, block), &chain, target);
            out.extend(inst);
        }
        out
    }
}

fn chain_with(parent: &[ImportSite], site: ImportSite) -> ImportChain {
    let mut v = Vec::with_capacity(parent.len() + 1);
    v.push(site);
    v.extend_from_slice(parent);
    Arc::from(v)
}

/// The directory part of a glob pattern before its first wildcard component.
fn glob_base(full: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for c in full.components() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        base.push(c);
    }
    base
}

fn display_name(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn is_snippet_name(t: &Token) -> bool {
    t.kind == TokenKind::Word
        && t.text.len() > 2
        && t.text.starts_with('(')
        && t.text.ends_with(')')
}

fn unreachable_token() -> Token {
    Token {
        kind: TokenKind::Word,
        text: String::new(),
        span: Span::default(),
        line_start: true,
        breaks_before: 0,
        chain: None,
    }
}

/// The tokens inside `name { ... }` at the top level of an import's block (the
/// `{blocks.name}` of the snippet), empty when the block has no such entry.
fn named_block<'a>(block: &'a [Token], name: &str) -> &'a [Token] {
    let mut k = 0;
    while k < block.len() {
        let t = &block[k];
        let opens = block
            .get(k + 1)
            .is_some_and(|n| n.is_open_brace() && !n.line_start);
        if t.line_start && !t.quoted() && t.text == name && opens {
            let open = k + 1;
            let mut depth = 0usize;
            for (m, x) in block.iter().enumerate().skip(open) {
                if x.is_open_brace() {
                    depth += 1;
                } else if x.is_close_brace() {
                    depth -= 1;
                    if depth == 0 {
                        return &block[open + 1..m];
                    }
                }
            }
            return &[];
        }
        // Skip this entry (and its block, if any).
        let mut depth = 0usize;
        k += 1;
        while k < block.len() && (depth > 0 || !block[k].line_start) {
            if block[k].is_open_brace() {
                depth += 1;
            } else if block[k].is_close_brace() {
                depth = depth.saturating_sub(1);
            }
            k += 1;
        }
    }
    &[]
}

/// Replaces `{args[N]}`, `{args.N}` and `{args[A:B]}` in `text`.
fn substitute_args(text: &str, args: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{args") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 5..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let inner = &after[..close];
        let sel = if let Some(s) = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            s
        } else if let Some(s) = inner.strip_prefix('.') {
            s
        } else {
            out.push_str(&rest[i..i + 5]);
            rest = after;
            continue;
        };
        if let Some((a, b)) = sel.split_once(':') {
            let a: usize = if a.is_empty() {
                0
            } else {
                a.parse()
                    .map_err(|_| format!("bad argument range '{sel}'"))?
            };
            let b: usize = if b.is_empty() {
                args.len()
            } else {
                b.parse()
                    .map_err(|_| format!("bad argument range '{sel}'"))?
            };
            if a > b || b > args.len() {
                return Err(format!(
                    "argument range [{sel}] is out of bounds: the import passed {} argument(s)",
                    args.len()
                ));
            }
            out.push_str(&args[a..b].join(" "));
        } else {
            let n: usize = sel
                .parse()
                .map_err(|_| format!("bad argument index '{sel}'"))?;
            let Some(a) = args.get(n) else {
                return Err(format!(
                    "argument index {n} is out of range: the import passed {} argument(s)",
                    args.len()
                ));
            };
            out.push_str(a);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes `{$VAR}` and `{$VAR:default}` in every token.
fn substitute_env(tokens: &mut [Token], env: EnvLookup<'_>, diags: &mut Vec<Diagnostic>) {
    for t in tokens.iter_mut() {
        if t.kind == TokenKind::Comment || !t.text.contains("{$") {
            continue;
        }
        let mut out = String::new();
        let mut rest = t.text.as_str();
        while let Some(i) = rest.find("{$") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(close) = after.find('}') else {
                diags.push(t.error("environment placeholder '{$' is never closed with '}'"));
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let inner = &after[..close];
            let (name, default) = match inner.split_once(':') {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let value = env(name)
                .or_else(|| default.map(str::to_string))
                .unwrap_or_default();
            out.push_str(&value);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        t.text = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(src: &str) -> (Document, Vec<Diagnostic>, SourceMap) {
        let mut sm = SourceMap::new();
        let id = sm.add(SourceFile::new("Dwaarfile", None, src.to_string()));
        let env = |k: &str| (k == "PORT").then(|| "9000".to_string());
        let (d, diags) = parse(&mut sm, id, &env);
        (d, diags, sm)
    }

    #[test]
    fn import_blocks_fill_block_placeholders() {
        let (doc, diags, _) = parse_str(
            "(wrap) {\n handle /{args[0]}/* {\n  header X-A 1\n  {block}\n }\n}\n:1 {\n import wrap api {\n  respond \"api\"\n  header X-B 2\n }\n respond other\n}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let site = &doc.sites[0].block.directives;
        assert_eq!(site.len(), 2, "{site:?}");
        let inner = &site[0]
            .block
            .as_ref()
            .map(|b| &b.directives[..])
            .unwrap_or_default();
        let names: Vec<&str> = inner.iter().map(|d| d.name.text.as_str()).collect();
        assert_eq!(names, ["header", "respond", "header"]);
        assert_eq!(site[1].name.text, "respond");
        // `{blocks.name}`: the inside of the import block's named entries.
        let (doc, diags, _) = parse_str(
            "(s) {\n handle /a {\n  {blocks.first}\n }\n handle {\n  {blocks.second}\n  {blocks.missing}\n }\n}\n:1 {\n import s {\n  first {\n   respond \"one\"\n  }\n  second {\n   header X 2\n   respond \"two\"\n  }\n }\n}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let site = &doc.sites[0].block.directives;
        let inner = |i: usize| -> Vec<String> {
            site[i]
                .block
                .as_ref()
                .map(|b| b.directives.iter().map(|d| d.name.text.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(inner(0), vec!["respond"]);
        assert_eq!(inner(1), vec!["header", "respond"]);
        // Without a block, `{block}` stands for nothing.
        let (doc, diags, _) = parse_str("(s) {\n header X 1\n {block}\n}\n:1 {\n import s\n}\n");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(doc.sites[0].block.directives.len(), 1);
    }

    #[test]
    fn global_snippet_and_sites() {
        let (doc, diags, _) = parse_str(
            "{\n debug\n}\n(common) {\n header X-A {args[0]}\n}\na.com, b.com {\n import common one\n respond hi\n}\n:{$PORT} {\n respond x\n}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(doc.global.as_ref().map(|g| g.directives.len()), Some(1));
        assert_eq!(doc.sites.len(), 2);
        let s = &doc.sites[0];
        assert_eq!(
            s.addresses
                .iter()
                .map(|t| t.text.as_str())
                .collect::<Vec<_>>(),
            ["a.com", "b.com"]
        );
        assert_eq!(s.block.directives[0].name.text, "header");
        assert_eq!(s.block.directives[0].args[1].text, "one");
        assert!(s.block.directives[0].name.chain.is_some());
        assert_eq!(doc.sites[1].addresses[0].text, ":9000");
    }

    #[test]
    fn braceless_single_site() {
        let (doc, diags, _) =
            parse_str("localhost\n\nrespond hi\nreverse_proxy x {\n  lb_policy first\n}\n");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(doc.sites.len(), 1);
        assert_eq!(doc.sites[0].block.directives.len(), 2);
        assert!(doc.sites[0].block.directives[1].block.is_some());
    }

    #[test]
    fn unclosed_brace_reports_open_location() {
        let (_, diags, sm) = parse_str("a.com {\n respond hi\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].location(&sm).as_deref(), Some("Dwaarfile:1:7"));
    }

    #[test]
    fn snippet_cycle_is_caught() {
        let (_, diags, _) = parse_str("(a) {\n import a\n}\nx.com {\n import a\n}\n");
        assert!(
            diags.iter().any(|d| d.message.contains("cycle")),
            "{diags:?}"
        );
    }

    #[test]
    fn args_ranges() {
        let a = vec!["x".to_string(), "y".to_string(), "z".to_string()];
        assert_eq!(
            substitute_args("{args[0]}-{args.2}", &a).as_deref(),
            Ok("x-z")
        );
        assert_eq!(substitute_args("{args[1:]}", &a).as_deref(), Ok("y z"));
        assert!(substitute_args("{args[5]}", &a).is_err());
    }
}
