//! Prompts given on the command line: backslash escapes, as llama.cpp's CLI processes them.
//!
//! Why: a shell passes `"Q: ...\nA:"` as a backslash and an `n`; a model given that answers
//! nonsense. llama.cpp turns `\n \r \t \' \" \\` and `\xHH` into the characters they name by
//! default, so kiln does too. Anything else after a backslash is kept as written (as llama.cpp
//! does), so Windows paths and regexes in a prompt survive. Prompt files and stdin are never
//! processed: they already hold real newlines.

use anyhow::{bail, Result};

/// `text` with its backslash escapes replaced by the characters they name.
pub fn process_escapes(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' || i + 1 == bytes.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = bytes[i + 1];
        let named = match next {
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            _ => None,
        };
        if let Some(c) = named {
            out.push(c);
            i += 2;
        } else if let Some(v) = (next == b'x')
            .then(|| bytes.get(i + 2..i + 4))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
        } else {
            // Unknown escape: keep the backslash; the next byte is copied on the next turn.
            out.push(b'\\');
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Ok(s),
        Err(_) => bail!(
            "the prompt's \\x escapes do not form UTF-8 text (write whole UTF-8 sequences, or pass --no-escape)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::process_escapes;

    #[test]
    fn named_escapes_become_characters() {
        assert_eq!(
            process_escapes(r#"Q: a\nA:\tb\r\\ \' \""#).unwrap(),
            "Q: a\nA:\tb\r\\ ' \""
        );
    }

    #[test]
    fn hex_escapes_give_bytes_that_must_form_utf8() {
        assert_eq!(process_escapes(r"\x41\x0a").unwrap(), "A\n");
        assert_eq!(process_escapes(r"\xe2\x80\x99").unwrap(), "\u{2019}");
        assert!(process_escapes(r"\xff").is_err());
    }

    #[test]
    fn unknown_incomplete_and_trailing_escapes_stay_as_written() {
        for s in [r"C:\Users\q", r"\d+", r"end\", r"\x4", r"\xg1", "é\\ü"] {
            assert_eq!(process_escapes(s).unwrap(), s);
        }
        // A backslash that escapes a backslash does not start a second escape.
        assert_eq!(process_escapes(r"\\n").unwrap(), r"\n");
    }
}
