//! Full-text search's words. A message's `terms` are the distinct words of
//! its content, lowercased: runs of letters and digits (any script), from 2
//! to `MAX_TERM_CHARS` characters, at most `MAX_TERMS` of them, in order of
//! first use. The messages worker stores them with the message (and again
//! on an edit; a delete removes them), and the multikey index
//! `{terms: 1, seq: -1}` is the inverted index: a query finds the
//! messages holding a word newest first without a scan. Search matches
//! whole words; a script written without spaces is one word per run.

/// Longest word indexed (longer runs are cut to it).
pub const MAX_TERM_CHARS: usize = 32;
/// Most distinct words indexed per message.
pub const MAX_TERMS: usize = 64;

/// The distinct words of `text`, as indexed.
pub fn terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if out.len() >= MAX_TERMS {
            break;
        }
        if word.chars().nth(1).is_none() {
            continue;
        }
        let t: String = word.chars().take(MAX_TERM_CHARS).flat_map(char::to_lowercase).collect();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_distinct_and_not_single_characters() {
        assert_eq!(terms("Ship it, ship IT! a b 42 x9"), ["ship", "it", "42", "x9"]);
        assert_eq!(terms("Überweisung erledigt — ÜBERWEISUNG"), ["überweisung", "erledigt"]);
        assert_eq!(terms("<@64b7f0c2a1b2c3d4e5f60718> hi"), ["64b7f0c2a1b2c3d4e5f60718", "hi"]);
        assert!(terms("  !! ? ").is_empty());
        let long = "y".repeat(100);
        assert_eq!(terms(&long), ["y".repeat(MAX_TERM_CHARS)]);
        let many: String = (0..200).map(|i| format!("w{i} ")).collect();
        assert_eq!(terms(&many).len(), MAX_TERMS);
    }
}
