//! Unicode helpers shared by the pre-tokenizers: general-category flags (as llama.cpp's
//! `unicode_cpt_flags` sees them) and GPT-2's byte ↔ unicode mapping.

use std::sync::OnceLock;

/// Bitset over all code points: is the code point in general category L (letter)?
fn letter_bits() -> &'static [u64] {
    static BITS: OnceLock<Vec<u64>> = OnceLock::new();
    BITS.get_or_init(|| {
        let mut bits = vec![0u64; 0x110000 / 64];
        // regex-syntax carries the Unicode tables; `\p{L}` parses to the exact ranges.
        let hir = regex_syntax::ParserBuilder::new()
            .build()
            .parse(r"\p{L}")
            .expect("\\p{L} is a valid class");
        if let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) =
            hir.kind()
        {
            for r in class.ranges() {
                for c in u32::from(r.start())..=u32::from(r.end()) {
                    bits[(c / 64) as usize] |= 1 << (c % 64);
                }
            }
        }
        bits
    })
}

#[inline]
pub(crate) fn is_letter(c: char) -> bool {
    let c = c as u32;
    letter_bits()[(c / 64) as usize] >> (c % 64) & 1 == 1
}

/// General category N (Nd, Nl, No).
#[inline]
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    c.is_numeric()
}

/// The White_Space property (llama.cpp's `unicode_set_whitespace` is the same set).
#[inline]
pub(crate) fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

/// GPT-2's printable stand-in for every byte (`bytes_to_unicode`).
pub(crate) fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..256u32 {
            let printable = (0x21..=0x7E).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            table[b as usize] = if printable {
                char::from_u32(b).unwrap_or('\0')
            } else {
                let c = char::from_u32(256 + n).unwrap_or('\0');
                n += 1;
                c
            };
        }
        table
    })
}

/// The byte a GPT-2 stand-in character represents.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => {
            // The 68 non-printable bytes in increasing order.
            let idx = c - 0x100;
            let mut n = 0;
            for b in 0..256u32 {
                let printable = (0x21..=0x7E).contains(&b)
                    || (0xA1..=0xAC).contains(&b)
                    || (0xAE..=0xFF).contains(&b);
                if !printable {
                    if n == idx {
                        return Some(b as u8);
                    }
                    n += 1;
                }
            }
            None
        }
        _ => None,
    }
}

/// Maps bytes to their GPT-2 stand-in characters.
pub(crate) fn byte_encode(bytes: &[u8], out: &mut String) {
    let table = byte_to_char_table();
    for &b in bytes {
        out.push(table[b as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert!(is_letter('a') && is_letter('中') && is_letter('ß') && !is_letter('1'));
        assert!(!is_letter('\u{301}')); // combining mark is M, not L
        assert!(is_number('7') && is_number('Ⅻ') && is_number('½') && !is_number('a'));
        assert!(is_whitespace('\u{3000}') && is_whitespace('\u{85}') && !is_whitespace('\u{200B}'));
    }

    #[test]
    fn byte_table_roundtrip() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'!' as usize], '!');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
    }
}
