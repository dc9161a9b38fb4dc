//! Redis-style glob matching (as `KEYS`, `SCAN MATCH` and `PSUBSCRIBE`
//! read a pattern), so that a pattern selects the same keys in L1 as in Redis.

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of bytes, possibly empty.
    Any,
    /// `?`: one byte.
    One,
    /// A literal byte (`\x` escapes `x`).
    Byte(u8),
    /// `[...]`: one byte in (or, with `^`, not in) the listed bytes and ranges.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. Like Redis, an unterminated `[` takes the rest of
    /// the pattern as its class, and a trailing `\` is a literal backslash.
    pub(crate) fn new(pattern: &str) -> Self {
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i += 1;
            match b {
                b'*' => {
                    if tokens.last() != Some(&Token::Any) {
                        tokens.push(Token::Any);
                    }
                }
                b'?' => tokens.push(Token::One),
                b'\\' => match bytes.get(i) {
                    Some(&escaped) => {
                        tokens.push(Token::Byte(escaped));
                        i += 1;
                    }
                    None => tokens.push(Token::Byte(b'\\')),
                },
                b'[' => {
                    let negated = bytes.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    while let Some(&c) = bytes.get(i) {
                        i += 1;
                        match c {
                            b']' => break,
                            b'\\' if i < bytes.len() => {
                                let escaped = bytes.get(i).copied().unwrap_or(b'\\');
                                ranges.push((escaped, escaped));
                                i += 1;
                            }
                            _ if bytes.get(i) == Some(&b'-')
                                && bytes.get(i + 1).is_some_and(|&end| end != b']') =>
                            {
                                let end = bytes.get(i + 1).copied().unwrap_or(c);
                                ranges.push((c.min(end), c.max(end)));
                                i += 2;
                            }
                            _ => ranges.push((c, c)),
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                _ => tokens.push(Token::Byte(b)),
            }
        }
        Self { tokens }
    }

    /// Whether `text` matches the whole pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        let (mut t, mut p) = (0, 0);
        // Where to resume after the last `*`: (pattern index after it, text index).
        let mut resume: Option<(usize, usize)> = None;
        loop {
            match self.tokens.get(p) {
                Some(Token::Any) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                Some(token) => {
                    if let Some(&byte) = text.get(t)
                        && Self::one(token, byte)
                    {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                None if t == text.len() => return true,
                None => {}
            }
            // Mismatch: let the last `*` swallow one more byte, if any is left.
            match resume {
                Some((after_star, start)) if start < text.len() => {
                    resume = Some((after_star, start + 1));
                    p = after_star;
                    t = start + 1;
                }
                _ => return false,
            }
        }
    }

    fn one(token: &Token, byte: u8) -> bool {
        match token {
            Token::Any | Token::One => true,
            Token::Byte(b) => *b == byte,
            Token::Class { negated, ranges } => {
                ranges
                    .iter()
                    .any(|&(low, high)| (low..=high).contains(&byte))
                    != *negated
            }
        }
    }
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
    }
}
