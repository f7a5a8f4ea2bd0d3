//! The strict chunked-body scanner (request bodies Pingora reads, upstream responses)
//! against an independent reference decoder written from RFC 9112 §7.1: both accept the
//! same inputs, find the same end and decode the same data; and feeding the scanner the
//! bytes in two pieces changes nothing.
#![no_main]
use dwaar_core::http1::ChunkScanner;
use libfuzzer_sys::fuzz_target;

/// Reference: `Some(Ok((end, data)))` for a complete body, `Some(Err(()))` for bad
/// framing, `None` when the input ends before the body does.
fn reference(b: &[u8]) -> Option<Result<(usize, Vec<u8>), ()>> {
    let mut i = 0;
    let mut data = Vec::new();
    // A line of the body: up to CRLF; a bare CR or LF is bad framing.
    let line = |i: usize| -> Option<Result<(usize, usize), ()>> {
        let mut j = i;
        loop {
            match b.get(j)? {
                b'\r' => {
                    return Some(match b.get(j + 1)? {
                        b'\n' => Ok((j, j + 2)),
                        _ => Err(()),
                    })
                }
                b'\n' => return Some(Err(())),
                _ => j += 1,
            }
        }
    };
    loop {
        let (end, next) = match line(i)? {
            Ok(x) => x,
            Err(()) => return Some(Err(())),
        };
        let text = &b[i..end];
        let digits = text.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Some(Err(()));
        }
        let rest = &text[digits..];
        let ws = rest
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count();
        let ext = &rest[ws..];
        if !(rest.is_empty() || ext.first() == Some(&b';')) {
            return Some(Err(()));
        }
        if ext.iter().any(|c| (*c < 0x20 && *c != b'\t') || *c == 0x7f) {
            return Some(Err(()));
        }
        let size = u64::from_str_radix(std::str::from_utf8(&text[..digits]).ok()?, 16).ok()?;
        i = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).ok()?;
        let data_end = i.checked_add(size)?;
        if b.len() < data_end {
            return None;
        }
        data.extend_from_slice(&b[i..data_end]);
        i = data_end;
        match (b.get(i), b.get(i + 1)) {
            (Some(b'\r'), Some(b'\n')) => i += 2,
            (Some(b'\r'), None) | (None, _) => return None,
            _ => return Some(Err(())),
        }
    }
    // Trailer fields, then the empty line.
    loop {
        let (end, next) = match line(i)? {
            Ok(x) => x,
            Err(()) => return Some(Err(())),
        };
        let field = &b[i..end];
        if field
            .iter()
            .any(|c| (*c < 0x20 && *c != b'\t') || *c == 0x7f)
            || matches!(field.first(), Some(b' ' | b'\t'))
        {
            return Some(Err(()));
        }
        let empty = end == i;
        i = next;
        if empty {
            return Some(Ok((i, data)));
        }
    }
}

/// The scanner over `b` fed in two pieces split at `at`.
fn scan(b: &[u8], at: usize) -> Option<Result<(usize, Vec<u8>), ()>> {
    let mut s = ChunkScanner::default();
    let mut data = Vec::new();
    let (first, second) = b.split_at(at.min(b.len()));
    match s.scan_data(first, Some(&mut data)) {
        Err(_) => return Some(Err(())),
        Ok((n, true)) => return Some(Ok((n, data))),
        Ok((_, false)) => {}
    }
    match s.scan_data(second, Some(&mut data)) {
        Err(_) => Some(Err(())),
        Ok((n, true)) => Some(Ok((first.len() + n, data))),
        Ok((_, false)) => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, body)) = input.split_first() else {
        return;
    };
    let want = reference(body);
    let whole = scan(body, body.len());
    let split = scan(body, split as usize);
    assert_eq!(whole, split, "splitting the input changed the result");
    match (&want, &whole) {
        // The reference stops at the first bad line; the scanner may notice a problem
        // in the same line only once the line ends, so "incomplete" may meet "bad".
        (Some(Err(())), None) | (None, Some(Err(()))) => {}
        _ => assert_eq!(want, whole, "scanner and reference disagree"),
    }
});
