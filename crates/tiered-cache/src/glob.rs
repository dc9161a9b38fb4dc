//! Redis-style glob matching, exactly as Redis's `SCAN MATCH` reads a
//! pattern over the keys of a prefixed tier, so that a pattern invalidation
//! drops the same keys from the first tier as from Redis.
//!
//! The rules, Redis's own (checked against a real server by the
//! differential test below):
//!
//! - `*` matches any run of bytes, `?` exactly one byte (not one character:
//!   `?` does not match `é`, `??` does).
//! - `\x` is the byte `x`; a trailing `\` is a literal backslash.
//! - `[...]` matches one byte: listed bytes, `\`-escaped bytes, and ranges
//!   `a-z` (either order). A `-` range takes the byte after the dash
//!   whatever it is, so `[a-]]` is the range `]`..`a`. Range bounds compare
//!   as signed bytes (C's `char`), so a range reaching past 0x7F covers what
//!   a signed comparison covers. `[^...]` negates. A class with no closing
//!   `]` runs to the end of the pattern; `[]` matches nothing and `[^]` any
//!   byte.
//! - The key is matched after the tier's prefix, which is never empty: an
//!   empty key therefore matches a pattern made only of `*`s (Redis matches
//!   the prefix, then finds the key empty).
//! - Redis gives up on a pattern whose stars nest more than 1,000 deep (a
//!   denial-of-service guard): a pattern that needs more than 1,000 stars
//!   followed by something else to match never matches.
//!
//! Matching is by backtracking over the stars, with Redis's cut (once the
//! rest of a pattern fails from every position, earlier stars stop
//! trying longer spans), so it is linear in practice and never exponential.

/// How deep stars may nest before Redis gives up on a pattern.
const MAX_NESTING: u32 = 1_000;

/// A pattern, ready to match many keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Vec<u8>,
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.as_bytes().to_vec(),
        }
    }

    /// Whether the key `text` (without the tier's prefix) matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        if text.is_empty() {
            // What is left of the pattern once the prefix has matched.
            return self.pattern.iter().all(|&b| b == b'*');
        }
        let mut gave_up = false;
        match_from(&self.pattern, text, 0, &mut gave_up)
    }
}

/// Matches `pattern` against all of `text` (not empty on entry). `cut` is
/// set once a star has tried every position of the text in vain: no
/// earlier star can do better by spanning more.
fn match_from(mut pattern: &[u8], mut text: &[u8], nesting: u32, cut: &mut bool) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while let (Some(&p), false) = (pattern.first(), text.is_empty()) {
        match p {
            b'*' => {
                let rest = skip_stars(pattern);
                if rest.is_empty() {
                    return true;
                }
                while !text.is_empty() {
                    if match_from(rest, text, nesting + 1, cut) {
                        return true;
                    }
                    if *cut {
                        return false;
                    }
                    text = &text[1..];
                }
                *cut = true;
                return false;
            }
            b'?' => {
                pattern = &pattern[1..];
            }
            b'[' => {
                let (matched, after) = class(&pattern[1..], text[0]);
                if !matched {
                    return false;
                }
                pattern = after;
            }
            b'\\' if pattern.len() >= 2 => {
                if pattern[1] != text[0] {
                    return false;
                }
                pattern = &pattern[2..];
            }
            literal => {
                if literal != text[0] {
                    return false;
                }
                pattern = &pattern[1..];
            }
        }
        text = &text[1..];
        if text.is_empty() {
            // Trailing stars match the empty rest.
            pattern = skip_stars(pattern);
        }
    }
    pattern.is_empty() && text.is_empty()
}

fn skip_stars(pattern: &[u8]) -> &[u8] {
    let stars = pattern.iter().take_while(|&&b| b == b'*').count();
    &pattern[stars..]
}

/// Reads a class (the pattern just after its `[`) against the byte `c`:
/// whether it matched, and the pattern after the class.
fn class(mut pattern: &[u8], c: u8) -> (bool, &[u8]) {
    let negated = pattern.first() == Some(&b'^');
    if negated {
        pattern = &pattern[1..];
    }
    let mut matched = false;
    loop {
        match pattern {
            // Unterminated: the class took the rest of the pattern.
            [] => break,
            [b'\\', escaped, rest @ ..] => {
                matched |= *escaped == c;
                pattern = rest;
            }
            [b']', rest @ ..] => {
                pattern = rest;
                break;
            }
            [start, b'-', end, rest @ ..] => {
                // Bounds and byte compare as C's signed `char`.
                let signed = |b: u8| i32::from(b.cast_signed());
                let (low, high) = (
                    signed(*start).min(signed(*end)),
                    signed(*start).max(signed(*end)),
                );
                matched |= (low..=high).contains(&signed(c));
                pattern = rest;
            }
            [listed, rest @ ..] => {
                matched |= *listed == c;
                pattern = rest;
            }
        }
    }
    (matched != negated, pattern)
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn matches(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    #[test]
    fn reads_patterns_as_redis_does() {
        assert!(matches("*", ""));
        assert!(matches("**", ""));
        assert!(!matches("?", ""));
        assert!(!matches("a", ""));
        assert!(matches("*", "anything"));
        assert!(matches("agent:*", "agent:42"));
        assert!(!matches("agent:*", "agents:42"));
        assert!(matches("h?llo", "hello"));
        assert!(!matches("h?llo", "hllo"));
        assert!(matches("h*llo", "hllo"));
        assert!(matches("h*llo", "heeeello"));
        assert!(matches("h[ae]llo", "hallo"));
        assert!(!matches("h[ae]llo", "hillo"));
        assert!(matches("h[^e]llo", "hallo"));
        assert!(!matches("h[^e]llo", "hello"));
        assert!(matches("h[a-b]llo", "hbllo"));
        assert!(matches("h[b-a]llo", "hallo"), "reversed ranges, as Redis");
        assert!(!matches("h[a-b]llo", "hcllo"));
        assert!(matches(r"a\*b", "a*b"));
        assert!(!matches(r"a\*b", "axb"));
        assert!(matches("*:*:end", "a:b:c:end"));
        assert!(!matches("*:*:end", "a:end"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("[-a]", "-"));
        assert!(matches("user:[0-9]*", "user:7:profile"));
        assert!(!matches("?", "é"), "? is one byte");
        assert!(matches("??", "é"));
    }

    #[test]
    fn a_dash_before_the_closing_bracket_makes_a_range_ending_at_it() {
        // `[a-]` is the range `]`..`a`, unterminated.
        for key in ["]", "^", "_", "`", "a"] {
            assert!(matches("[a-]", key), "{key}");
        }
        assert!(!matches("[a-]", "-"));
        assert!(!matches("[a-]", "b"));
        // `[a-]]`: the same range, then a literal `]`... closed by it.
        assert!(matches("[a-]]", "_"));
        assert!(!matches("[a-]]", "_]"));
        // `[a-]*`: the class runs on, so the star is one of its bytes.
        assert!(matches("[a-]*", "`"));
        assert!(matches("[a-]*", "*"));
        assert!(!matches("[a-]*", "`anything"));
    }

    #[test]
    fn empty_and_open_classes() {
        assert!(!matches("[]", "a"));
        assert!(matches("[^]", "a"));
        assert!(!matches("[", "a"));
        assert!(matches("[^", "a"));
        assert!(matches("[ab", "b"), "unterminated: the rest is the class");
        assert!(matches(r"[\]]", "]"));
        assert!(matches("x\\", "x\\"), "a trailing backslash is literal");
    }

    #[test]
    fn stars_nested_past_redis_cap_never_match() {
        let within = "*a".repeat(1_000);
        let past = "*a".repeat(1_001);
        let text = "a".repeat(1_001);
        assert!(matches(&within, &text));
        assert!(!matches(&past, &text));
        assert!(
            matches(&format!("{within}*"), &text),
            "a trailing star needs no nesting"
        );
    }
}

/// The differential suite: our matcher against a real Redis over a
/// generated corpus of patterns and keys, through `SCAN MATCH` under an
/// escaped prefix, as the Redis tier invalidates.
#[cfg(all(test, feature = "redis"))]
mod against_redis {
    use super::Glob;
    use crate::tiers::redis::escape_glob;

    /// The bytes patterns and keys are made of: every metacharacter, the
    /// neighbours of `]` and `-` in ASCII, a two-byte character.
    const ALPHABET: [&str; 14] = [
        "a", "b", "-", "]", "[", "^", "\\", "*", "?", "`", "_", "z", "é", "!",
    ];

    /// A small deterministic generator (xorshift): the same corpus every run.
    struct Corpus(u64);

    impl Corpus {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }

        fn word(&mut self, max_len: usize, alphabet: &[&str]) -> String {
            let len = self.below(max_len + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    #[test]
    fn scan_match_and_the_first_tier_select_the_same_keys() {
        let Some(server) = perfkit_test_support::RedisServer::start() else {
            return;
        };
        let client = redis::Client::open(server.url()).expect("url");
        let mut redis = client.get_connection().expect("connected");
        let prefix = "pk[*]\\?:";
        let mut corpus = Corpus(0x9E37_79B9_7F4A_7C15);
        let key_alphabet: Vec<&str> = ALPHABET.iter().copied().filter(|c| *c != "*").collect();
        let mut keys: Vec<String> = (0..400).map(|_| corpus.word(4, &key_alphabet)).collect();
        keys.extend(
            ["", "a", "-", "]", "^", "_", "`", "é", "\\", "[", "*", "?"].map(str::to_owned),
        );
        keys.sort();
        keys.dedup();
        for key in &keys {
            redis::cmd("SET")
                .arg(format!("{prefix}{key}"))
                .arg(1)
                .exec(&mut redis)
                .expect("SET");
        }
        let mut patterns: Vec<String> = (0..3_000).map(|_| corpus.word(6, &ALPHABET)).collect();
        patterns.extend(
            [
                "[a-]", "[a-]]", "[a-]*", "[]", "[^]", "[", "[^", "[\\]]", "\\", "a\\", "[a-\\]",
                "[!-é]", "[é-a]", "*?*", "[z-a]*", "**", "[^a-]",
            ]
            .map(str::to_owned),
        );
        let mut disagreements = Vec::new();
        for pattern in &patterns {
            let mut from_redis: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}{pattern}", escape_glob(prefix)))
                    .arg("COUNT")
                    .arg(10_000)
                    .query(&mut redis)
                    .expect("SCAN");
                from_redis.extend(
                    page.iter()
                        .map(|key| String::from_utf8_lossy(&key[prefix.len()..]).into_owned()),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            from_redis.sort();
            let glob = Glob::new(pattern);
            let ours: Vec<String> = keys
                .iter()
                .filter(|key| glob.matches(key))
                .cloned()
                .collect();
            if ours != from_redis {
                disagreements.push(format!("{pattern:?}: Redis {from_redis:?}, ours {ours:?}"));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} of {} patterns disagree over {} keys; first: {:#?}",
            disagreements.len(),
            patterns.len(),
            keys.len(),
            &disagreements[..disagreements.len().min(5)]
        );
    }
}
