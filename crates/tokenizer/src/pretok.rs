//! Pre-tokenizers for byte-level BPE vocabularies, written to split exactly as llama.cpp's
//! hand-written equivalents of the regexes do (`unicode_regex_split_custom_*`).

use crate::unicode::{is_letter, is_number, is_whitespace};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTok {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// As Llama3 with `\p{N}` (one digit per piece).
    Qwen2,
    /// llama.cpp's `default` BPE pre-tokenizer: four regexes applied in turn.
    Default,
}

/// Splits `text` into pieces; returns byte ranges covering `text` in order.
pub(crate) fn split(pre: PreTok, text: &str) -> Vec<(usize, usize)> {
    let cpts: Vec<(usize, char)> = text.char_indices().collect();
    let whole = vec![(0usize, cpts.len())];
    let pieces = match pre {
        PreTok::Gpt2 => split_gpt2(&cpts, &whole),
        PreTok::Llama3 => split_llama3(&cpts, &whole, 3),
        PreTok::Qwen2 => split_llama3(&cpts, &whole, 1),
        PreTok::Default => {
            let p = regex_split(
                &cpts,
                &whole,
                |c| is_punct(c) || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|'),
                None,
            );
            let p = split_gpt2(&cpts, &p);
            let p = regex_split(&cpts, &p, is_number, None);
            regex_split(&cpts, &p, |c| c.is_ascii_digit(), Some(3))
        }
    };
    let byte_at = |i: usize| {
        if i < cpts.len() {
            cpts[i].0
        } else {
            text.len()
        }
    };
    pieces
        .into_iter()
        .map(|(s, e)| (byte_at(s), byte_at(e)))
        .collect()
}

/// General category P.
fn is_punct(c: char) -> bool {
    use std::sync::OnceLock;
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    if c.is_ascii() {
        return c.is_ascii_punctuation()
            && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~');
    }
    let re = RE.get_or_init(|| regex::Regex::new(r"^\p{P}$").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// Splits each chunk by runs of characters in `class` (each run, or each `fixed` characters
/// of it, is a piece; text between runs stays a piece), as a `[class]+` regex split does.
fn regex_split(
    cpts: &[(usize, char)],
    chunks: &[(usize, usize)],
    class: impl Fn(char) -> bool,
    fixed: Option<usize>,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(s, e) in chunks {
        let mut last = s;
        let mut i = s;
        while i < e {
            if !class(cpts[i].1) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < e && class(cpts[j].1) {
                j += 1;
            }
            match fixed {
                None => {
                    if i > last {
                        out.push((last, i));
                    }
                    out.push((i, j));
                    last = j;
                }
                Some(k) => {
                    // `[0-9]{k}` matches: whole groups of k from the start of the run.
                    let mut g = i;
                    while g + k <= j {
                        if g > last {
                            out.push((last, g));
                        }
                        out.push((g, g + k));
                        last = g + k;
                        g += k;
                    }
                }
            }
            i = j;
        }
        if last < e {
            out.push((last, e));
        }
    }
    out
}

fn split_gpt2(cpts: &[(usize, char)], chunks: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(ini, end) in chunks {
        let get = |p: usize| {
            if p >= ini && p < end {
                Some(cpts[p].1)
            } else {
                None
            }
        };
        let letter = |p: usize| get(p).is_some_and(is_letter);
        let number = |p: usize| get(p).is_some_and(is_number);
        let other =
            |p: usize| get(p).is_some_and(|c| !is_whitespace(c) && !is_letter(c) && !is_number(c));
        let ws = |p: usize| get(p).is_some_and(is_whitespace);
        let mut prev = ini;
        let mut pos = ini;
        let mut add = |to: usize, out: &mut Vec<(usize, usize)>| {
            if to > prev {
                out.push((prev, to));
            }
            prev = to;
        };
        while pos < end {
            let c = cpts[pos].1;
            if c == '\'' && pos + 1 < end {
                let n1 = cpts[pos + 1].1;
                if matches!(n1, 's' | 't' | 'm' | 'd') {
                    pos += 2;
                    add(pos, &mut out);
                    continue;
                }
                if pos + 2 < end {
                    let n2 = cpts[pos + 2].1;
                    if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        pos += 3;
                        add(pos, &mut out);
                        continue;
                    }
                }
            }
            let q = if c == ' ' { pos + 1 } else { pos };
            if letter(q) {
                pos = q;
                while letter(pos) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            if number(q) {
                pos = q;
                while number(pos) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            if other(q) {
                pos = q;
                while other(pos) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            let mut nws = 0;
            while ws(pos + nws) {
                nws += 1;
            }
            if nws > 1 && get(pos + nws).is_some() {
                pos += nws - 1;
                add(pos, &mut out);
                continue;
            }
            if nws > 0 {
                pos += nws;
                add(pos, &mut out);
                continue;
            }
            pos += 1;
            add(pos, &mut out);
        }
    }
    out
}

/// Llama 3 (`max_digits` 3) and Qwen2 (`max_digits` 1).
fn split_llama3(
    cpts: &[(usize, char)],
    chunks: &[(usize, usize)],
    max_digits: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(ini, end) in chunks {
        let get = |p: usize| {
            if p >= ini && p < end {
                Some(cpts[p].1)
            } else {
                None
            }
        };
        let letter = |p: usize| get(p).is_some_and(is_letter);
        let number = |p: usize| get(p).is_some_and(is_number);
        let other =
            |p: usize| get(p).is_some_and(|c| !is_whitespace(c) && !is_letter(c) && !is_number(c));
        let ws = |p: usize| get(p).is_some_and(is_whitespace);
        let mut prev = ini;
        let mut pos = ini;
        let mut add = |to: usize, out: &mut Vec<(usize, usize)>| {
            if to > prev {
                out.push((prev, to));
            }
            prev = to;
        };
        while pos < end {
            let c = cpts[pos].1;
            if c == '\'' && pos + 1 < end {
                let n1 = cpts[pos + 1].1.to_ascii_lowercase();
                if matches!(n1, 's' | 't' | 'm' | 'd') {
                    pos += 2;
                    add(pos, &mut out);
                    continue;
                }
                if pos + 2 < end {
                    let n2 = cpts[pos + 2].1.to_ascii_lowercase();
                    if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        pos += 3;
                        add(pos, &mut out);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == '\r' || c == '\n' || is_number(c)) && (is_letter(c) || letter(pos + 1)) {
                pos += 1;
                while letter(pos) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            // \p{N}{1,max}
            if is_number(c) {
                let mut run = 0;
                while number(pos) {
                    pos += 1;
                    run += 1;
                    if run == max_digits {
                        add(pos, &mut out);
                        run = 0;
                    }
                }
                add(pos, &mut out);
                continue;
            }
            // ' '?[^\s\p{L}\p{N}]+[\r\n]*
            let q = if c == ' ' { pos + 1 } else { pos };
            if other(q) {
                pos = q;
                while other(pos) {
                    pos += 1;
                }
                while matches!(get(pos), Some('\r') | Some('\n')) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            let mut nws = 0;
            let mut last_rn = 0;
            while ws(pos + nws) {
                if matches!(get(pos + nws), Some('\r') | Some('\n')) {
                    last_rn = pos + nws + 1;
                }
                nws += 1;
            }
            // \s*[\r\n]+
            if last_rn > 0 {
                pos = last_rn;
                add(pos, &mut out);
                continue;
            }
            // \s+(?!\S)
            if nws > 1 && get(pos + nws).is_some() {
                pos += nws - 1;
                add(pos, &mut out);
                continue;
            }
            if nws > 0 {
                pos += nws;
                add(pos, &mut out);
                continue;
            }
            pos += 1;
            add(pos, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: PreTok, text: &str) -> Vec<&str> {
        split(pre, text)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect()
    }

    /// Expected splits are what the regexes give (checked by hand against their definition).
    #[test]
    fn qwen2_and_llama3() {
        assert_eq!(
            pieces(PreTok::Qwen2, "Hello world's 12345  x\n\n  y?!\n"),
            [
                "Hello", " world", "'s", " ", "1", "2", "3", "4", "5", " ", " x", "\n\n", " ",
                " y", "?!\n"
            ]
        );
        assert_eq!(
            pieces(PreTok::Llama3, "abc 12345 I'M"),
            ["abc", " ", "123", "45", " I", "'M"]
        );
        assert_eq!(pieces(PreTok::Llama3, "x   "), ["x", "   "]);
    }

    #[test]
    fn gpt2() {
        assert_eq!(
            pieces(PreTok::Gpt2, "I'm  fine 42!"),
            ["I", "'m", " ", " fine", " 42", "!"]
        );
    }
}
