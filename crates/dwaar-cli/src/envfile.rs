//! `--envfile`: environment variables from a file, loaded before the config is read (so
//! `{$VAR}` and `{env.VAR}` in the config see them).
//!
//! The format is the common dotenv one: `KEY=VALUE` per line, an optional `export `
//! prefix, `#` comments on their own line or after an unquoted value, values in double
//! quotes (with `\n`, `\t`, `\"`, `\\` escapes) or single quotes (taken literally).
//! A variable the environment already has keeps its value, so a service manager's
//! setting wins over the file. Any malformed line fails the whole file with its line
//! number, before anything is set.

use std::path::{Path, PathBuf};

/// Loads every file in order; prints the error and returns the exit code on failure.
pub fn load_all(files: &[PathBuf]) -> Result<(), i32> {
    for f in files {
        let vars = match read(f) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return Err(1);
            }
        };
        for (k, v) in vars {
            if std::env::var_os(&k).is_none() {
                // Called before any thread starts (first thing in `main`).
                std::env::set_var(k, v);
            }
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the env file {}: {e}", path.display()))?;
    parse(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// The variables of an env file, in order; on error the line number and the reason.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, rest)) = line.split_once('=') else {
            return Err((n, format!("expected KEY=VALUE, found {line:?}")));
        };
        let key = key.trim();
        let valid_key = key
            .bytes()
            .enumerate()
            .all(|(j, b)| b == b'_' || b.is_ascii_alphabetic() || (j > 0 && b.is_ascii_digit()));
        if key.is_empty() || !valid_key {
            return Err((
                n,
                format!("{key:?} is not a variable name (letters, digits and _)"),
            ));
        }
        let value = value(rest.trim()).map_err(|why| (n, why))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn value(v: &str) -> Result<String, String> {
    let trailing = |rest: &str| {
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with('#') {
            Ok(())
        } else {
            Err(format!("unexpected text after the closing quote: {rest:?}"))
        }
    };
    if let Some(body) = v.strip_prefix('\'') {
        let end = body
            .find('\'')
            .ok_or("single-quoted value has no closing quote")?;
        trailing(&body[end + 1..])?;
        return Ok(body[..end].to_string());
    }
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    trailing(&body[i + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('"' | '\\' | '$')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("double-quoted value has no closing quote".into());
    }
    // Unquoted: a ` #` starts a comment.
    let end = v.find(" #").or_else(|| v.find("\t#")).unwrap_or(v.len());
    Ok(v[..end].trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn the_common_forms() {
        let vars = ok("# comment\n\nA=1\nexport B = two words # note\nC=\"x\\ny \\\"q\\\"\"\nD='$raw \\n'\nE=\nF=a#b\n");
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x\ny \"q\""),
            ("D", "$raw \\n"),
            ("E", ""),
            ("F", "a#b"),
        ];
        assert_eq!(vars.len(), want.len());
        for ((k, v), (wk, wv)) in vars.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A=1\nnot a pair\n").map_err(|e| e.0), Err(2));
        assert_eq!(parse("1A=x\n").map_err(|e| e.0), Err(1));
        assert_eq!(parse("A=\"open\n").map_err(|e| e.0), Err(1));
        assert_eq!(parse("A='x' y\n").map_err(|e| e.0), Err(1));
        assert_eq!(parse("MY-VAR=x\n").map_err(|e| e.0), Err(1));
    }
}
