//! Header values are input from outside the config: a scanner, a PACS, or
//! whoever wrote the files. Before one is stored, printed or matched it is
//! made inert here: padding trimmed, control characters (C0, DEL, C1) and
//! bidirectional overrides replaced, and the length capped, so a value can
//! neither drive the terminal nor hide what it says.

/// The longest value kept, in characters (DICOM's LO is 64, LT 10,240).
const MAX_CHARS: usize = 128;

/// `value` trimmed of DICOM padding (spaces, NULs), with every control or
/// bidirectional-override character replaced by `?`, cut at 128 characters
/// (an ellipsis marks the cut).
pub fn clean(value: &str) -> String {
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0');
    let mut out = String::with_capacity(trimmed.len().min(MAX_CHARS * 4));
    for (n, c) in trimmed.chars().enumerate() {
        if n == MAX_CHARS {
            out.push('…');
            break;
        }
        out.push(if is_unsafe(c) { '?' } else { c });
    }
    out
}

fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_trimmed() {
        assert_eq!(clean("DWI_64dir \0"), "DWI_64dir");
        assert_eq!(clean("  T1 "), "T1");
    }

    #[test]
    fn control_characters_never_survive() {
        assert_eq!(clean("a\x1b[31mred\x07\x7f\u{9b}"), "a?[31mred???");
        assert_eq!(clean("evil\u{202E}txt.exe"), "evil?txt.exe");
        assert_eq!(clean("two\nlines\r"), "two?lines?");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(500);
        let cleaned = clean(&long);
        assert_eq!(cleaned.chars().count(), MAX_CHARS + 1);
        assert!(cleaned.ends_with('…'));
    }
}
