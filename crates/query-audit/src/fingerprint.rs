//! Query fingerprints: a statement normalized so that executions differing
//! only in their constants share one, and a stable 64-bit id of it.
//!
//! A hand-written scanner (no regular expressions, no parser): it knows SQL's
//! lexical forms — quoted strings with doubled quotes, `E''` strings with
//! backslash escapes, dollar quotes (`$$…$$`, `$tag$…$tag$`), quoted
//! identifiers, nested block comments, line comments, numbers, placeholders
//! (`$1`, `?`, `?1`, `:name`, `@name`) — and runs in one linear pass over
//! bytes, so any input (unterminated quotes, invalid UTF-8, megabytes of SQL)
//! is scanned without a panic and in time proportional to its length.

use std::borrow::Cow;
use std::fmt;

/// The longest normalized text kept (the id is computed over all of it).
pub const MAX_TEXT_LEN: usize = 4_096;

/// A statement's fingerprint: its normalized text and a stable id.
///
/// Normalization: constants (strings, numbers, booleans are kept as words)
/// and placeholders become `?`; a list of them in `IN (…)`, `VALUES (…), (…)`
/// or `ARRAY[…]` collapses to `(...)` / `[...]`; comments are dropped;
/// whitespace is one space; unquoted words are lower case; a trailing `;`
/// is dropped. Quoted identifiers keep their case.
///
/// ```
/// use perfkit_query_audit::Fingerprint;
///
/// let a = Fingerprint::of("SELECT * FROM users WHERE id IN (1, 2, 3) -- hot");
/// let b = Fingerprint::of("select *\n  from USERS where id in ($1)");
/// assert_eq!(a, b);
/// assert_eq!(a.text(), "select * from users where id in (...)");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    id: u64,
    text: Box<str>,
}

impl Fingerprint {
    /// The fingerprint of `sql` (bytes that are not UTF-8 are accepted:
    /// inside constants they vanish, elsewhere they are replaced).
    #[must_use]
    pub fn of(sql: impl AsRef<[u8]>) -> Self {
        let mut normalizer = Normalizer::default();
        Scanner::new(sql.as_ref()).for_each(|token| normalizer.push(&token));
        normalizer.finish()
    }

    /// The overflow entry's: id 0, `text` as given.
    pub(crate) fn overflow(text: &str) -> Self {
        Self {
            id: 0,
            text: Box::from(text),
        }
    }

    /// A stable 64-bit id of the normalized text (FNV-1a): the same in every
    /// process and version of this crate that normalizes the same way.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the statement only reads (`SELECT`, `VALUES`, a `WITH`
    /// without a write): its rows are the rows it returned. (SQLite reports
    /// the rows changed by the connection's last write as a read's rows
    /// affected.)
    pub(crate) fn reads(&self) -> bool {
        let first = self.text.split([' ', '(']).next().unwrap_or_default();
        matches!(
            first,
            "select" | "values" | "show" | "table" | "pragma" | "explain"
        ) || (first == "with"
            && ![" insert ", " update ", " delete ", " merge "]
                .iter()
                .any(|verb| self.text.contains(verb)))
    }

    /// The normalized text, constants redacted (at most [`MAX_TEXT_LEN`]
    /// bytes, cut at a character boundary with `…` when longer).
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:016x}: {})", self.id, self.text)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One lexical token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// An unquoted word: keyword or identifier.
    Word(&'a [u8]),
    /// A quoted identifier, quotes included (`"Name"`, `` `name` ``).
    Quoted(&'a [u8]),
    /// A string constant of any form, as written (quotes and prefix included).
    String(&'a [u8]),
    /// A numeric constant, as written.
    Number(&'a [u8]),
    /// A placeholder (`$1`, `?`, `?1`, `:name`, `@name`), as written.
    Placeholder(&'a [u8]),
    /// An operator or punctuation, as written (`(`, `,`, `<=`, `::`…).
    Symbol(&'a [u8]),
}

/// Splits a statement into tokens, skipping whitespace and comments.
pub(crate) struct Scanner<'a> {
    sql: &'a [u8],
    at: usize,
    /// The previous token could end an operand (a `-` after it is an operator).
    after_operand: bool,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(sql: &'a [u8]) -> Self {
        Self {
            sql,
            at: 0,
            after_operand: false,
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.sql.get(self.at + ahead).copied()
    }

    fn slice(&self, start: usize) -> &'a [u8] {
        self.sql.get(start..self.at).unwrap_or_default()
    }

    /// Past a quoted run that starts at `self.at` with `quote`; a doubled
    /// quote is one quote inside, and so is a backslash-escaped one when
    /// `backslashes`. An unterminated run ends the input.
    fn skip_quoted(&mut self, quote: u8, backslashes: bool) {
        self.at += 1;
        // Backslashes right before the current byte.
        let mut run = 0_usize;
        while let Some(byte) = self.peek(0) {
            self.at += 1;
            if backslashes && byte == b'\\' {
                self.at = (self.at + 1).min(self.sql.len());
            } else if byte == quote {
                if quote == b'\'' && !backslashes && run % 2 == 1 {
                    // `\'`: PostgreSQL ends the string here ('C:\'), MySQL
                    // escapes the quote ('O\'Brien'). Read either way, part
                    // of a constant could come out as words: the rest of
                    // the statement is taken as the constant instead.
                    self.at = self.sql.len();
                    return;
                }
                if self.peek(0) == Some(quote) {
                    self.at += 1;
                } else {
                    return;
                }
            }
            run = if byte == b'\\' { run + 1 } else { 0 };
        }
    }

    /// Past a dollar-quoted string whose opening tag (`$tag$`) is `tag`.
    fn skip_dollar_quoted(&mut self, tag: &[u8]) {
        self.at += tag.len();
        let rest = self.sql.get(self.at..).unwrap_or_default();
        self.at = match rest.windows(tag.len()).position(|window| window == tag) {
            Some(position) => self.at + position + tag.len(),
            None => self.sql.len(),
        };
    }

    /// Past a block comment (nested, as in PostgreSQL); unterminated ends
    /// the input.
    fn skip_block_comment(&mut self) {
        self.at += 2;
        let mut depth = 1_usize;
        while self.at < self.sql.len() {
            match (self.peek(0), self.peek(1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.at += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.at += 2;
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.at += 1,
            }
        }
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek(0).is_some_and(&keep) {
            self.at += 1;
        }
    }

    /// The `$tag$` that starts at `self.at`, if one does.
    fn dollar_tag(&self) -> Option<&'a [u8]> {
        let rest = self.sql.get(self.at..)?;
        let body = rest.get(1..)?;
        let end = body.iter().position(|&b| !is_word_byte(b) || b == b'$')?;
        let first = body.first()?;
        (body.get(end) == Some(&b'$') && !first.is_ascii_digit()).then(|| rest.get(..end + 2))?
    }

    fn number(&mut self, start: usize) -> Token<'a> {
        if self.peek(0) == Some(b'0') && matches!(self.peek(1), Some(b'x' | b'X')) {
            self.at += 2;
            self.skip_while(|b| b.is_ascii_hexdigit() || b == b'_');
        } else {
            self.skip_while(|b| b.is_ascii_digit() || b == b'_');
            if self.peek(0) == Some(b'.') && self.peek(1).is_none_or(|b| b != b'.') {
                self.at += 1;
                self.skip_while(|b| b.is_ascii_digit() || b == b'_');
            }
            if matches!(self.peek(0), Some(b'e' | b'E'))
                && (self.peek(1).is_some_and(|b| b.is_ascii_digit())
                    || (matches!(self.peek(1), Some(b'+' | b'-'))
                        && self.peek(2).is_some_and(|b| b.is_ascii_digit())))
            {
                self.at += 2;
                self.skip_while(|b| b.is_ascii_digit());
            }
        }
        Token::Number(self.slice(start))
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let byte = self.peek(0)?;
            let start = self.at;
            let token = match byte {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => {
                    self.at += 1;
                    continue;
                }
                b'-' if self.peek(1) == Some(b'-') => {
                    self.skip_while(|b| b != b'\n');
                    continue;
                }
                b'/' if self.peek(1) == Some(b'*') => {
                    self.skip_block_comment();
                    continue;
                }
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    Token::String(self.slice(start))
                }
                // E'…' (backslash escapes), and the prefixed forms N'', B'', X'', U&''.
                b'e' | b'E' if self.peek(1) == Some(b'\'') => {
                    self.at += 1;
                    self.skip_quoted(b'\'', true);
                    Token::String(self.slice(start))
                }
                b'n' | b'N' | b'b' | b'B' | b'x' | b'X' if self.peek(1) == Some(b'\'') => {
                    self.at += 1;
                    self.skip_quoted(b'\'', false);
                    Token::String(self.slice(start))
                }
                b'u' | b'U' if self.peek(1) == Some(b'&') && self.peek(2) == Some(b'\'') => {
                    self.at += 2;
                    self.skip_quoted(b'\'', false);
                    Token::String(self.slice(start))
                }
                b'"' | b'`' => {
                    self.skip_quoted(byte, false);
                    Token::Quoted(self.slice(start))
                }
                b'$' => {
                    if self.peek(1).is_some_and(|b| b.is_ascii_digit()) {
                        self.at += 1;
                        self.skip_while(|b| b.is_ascii_digit());
                        Token::Placeholder(self.slice(start))
                    } else if let Some(tag) = self.dollar_tag() {
                        self.skip_dollar_quoted(tag);
                        Token::String(self.slice(start))
                    } else {
                        self.at += 1;
                        Token::Symbol(self.slice(start))
                    }
                }
                b'?' if !matches!(self.peek(1), Some(b'|' | b'&' | b'-' | b'#')) => {
                    self.at += 1;
                    self.skip_while(|b| b.is_ascii_digit());
                    Token::Placeholder(self.slice(start))
                }
                b':' | b'@'
                    if self
                        .peek(1)
                        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && (byte == b'@'
                            || self.at == 0
                            || self.sql.get(self.at - 1) != Some(&b':')) =>
                {
                    self.at += 1;
                    self.skip_while(is_word_byte);
                    Token::Placeholder(self.slice(start))
                }
                b'0'..=b'9' => self.number(start),
                b'.' if self.peek(1).is_some_and(|b| b.is_ascii_digit()) && !self.after_operand => {
                    self.number(start)
                }
                // A sign glued to a number where an operand starts: part of the constant.
                b'-' | b'+'
                    if !self.after_operand
                        && self
                            .peek(1)
                            .is_some_and(|b| b.is_ascii_digit() || b == b'.') =>
                {
                    self.at += 1;
                    match self.number(start) {
                        Token::Number(text) if text.len() > 1 => Token::Number(text),
                        _ => Token::Symbol(self.slice(start)),
                    }
                }
                byte if is_word_byte(byte) => {
                    self.skip_while(is_word_byte);
                    Token::Word(self.slice(start))
                }
                _ => {
                    self.at += 1;
                    // Two-character operators stay one token.
                    if let Some(next) = self.peek(0)
                        && matches!(
                            (byte, next),
                            (b':', b':')
                                | (b'<', b'=' | b'>')
                                | (b'>' | b'!', b'=')
                                | (b'|', b'|')
                                | (b'~' | b'!', b'~')
                                | (b'-', b'>')
                        )
                    {
                        self.at += 1;
                        if (byte, next) == (b'-', b'>') && self.peek(0) == Some(b'>') {
                            self.at += 1;
                        }
                    }
                    Token::Symbol(self.slice(start))
                }
            };
            self.after_operand = match &token {
                Token::Word(word) => !is_operator_keyword(word),
                Token::Symbol(symbol) => matches!(symbol, [b')' | b']']),
                _ => true,
            };
            return Some(token);
        }
    }
}

/// Keywords after which a `-` starts a negative constant (`WHERE x = … AND -1`).
fn is_operator_keyword(word: &[u8]) -> bool {
    const KEYWORDS: [&[u8]; 14] = [
        b"select", b"where", b"and", b"or", b"not", b"in", b"by", b"values", b"set", b"then",
        b"else", b"when", b"between", b"limit",
    ];
    KEYWORDS
        .iter()
        .any(|keyword| keyword.eq_ignore_ascii_case(word))
}

/// Keywords written with a space before the `(` that follows them.
fn is_keyword_before_list(word: &str) -> bool {
    matches!(
        word,
        "in" | "values"
            | "as"
            | "and"
            | "or"
            | "not"
            | "on"
            | "using"
            | "from"
            | "join"
            | "where"
            | "select"
            | "exists"
            | "into"
            | "table"
            | "by"
            | "having"
            | "over"
            | "when"
            | "then"
            | "else"
            | "set"
            | "returning"
            | "with"
            | "union"
            | "all"
            | "distinct"
            | "filter"
            | "within"
            | "lateral"
            | "is"
            | "like"
            | "between"
    )
}

/// What a normalized token is, for collapsing lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Constant,
    Open,
    Close,
    Comma,
    Other,
}

/// Builds the normalized text and its id, collapsing lists of constants.
#[derive(Default)]
struct Normalizer {
    text: String,
    /// Tokens written so far: their kind and where they start in `text`.
    kinds: Vec<(Kind, usize)>,
    /// `(` or `[` still open: the index in `kinds` of each, and whether
    /// every token inside is a constant or a comma (a collapsible list).
    open: Vec<(usize, bool)>,
    /// The index in `kinds` of the `)` ending `VALUES (...)`, while more
    /// groups of constants may follow it (they fold into it).
    values_end: Option<usize>,
}

impl Normalizer {
    fn push(&mut self, token: &Token<'_>) {
        let (kind, spelled): (Kind, Cow<'_, str>) = match token {
            Token::Word(word) => {
                let kind = if [&b"true"[..], b"false", b"null"]
                    .iter()
                    .any(|constant| constant.eq_ignore_ascii_case(word))
                {
                    Kind::Constant
                } else {
                    Kind::Other
                };
                // Written in lower case by `write` (no allocation per word).
                (kind, String::from_utf8_lossy(word))
            }
            Token::Quoted(quoted) => (Kind::Other, String::from_utf8_lossy(quoted)),
            Token::String(_) | Token::Number(_) | Token::Placeholder(_) => {
                (Kind::Constant, Cow::Borrowed("?"))
            }
            Token::Symbol(symbol) => {
                let kind = match symbol {
                    [b'(' | b'['] => Kind::Open,
                    [b')' | b']'] => Kind::Close,
                    [b','] => Kind::Comma,
                    _ => Kind::Other,
                };
                (kind, String::from_utf8_lossy(symbol))
            }
        };
        if kind == Kind::Close {
            self.close(&spelled);
            return;
        }
        self.write(kind, &spelled);
        if let Some((_, constants_only)) = self.open.last_mut()
            && kind != Kind::Open
        {
            *constants_only &= matches!(kind, Kind::Constant | Kind::Comma);
        }
        if kind == Kind::Open {
            self.open.push((self.kinds.len() - 1, true));
        }
    }

    fn write(&mut self, kind: Kind, spelled: &str) {
        // `f(`: a call or a type's arguments; `in (`: a keyword's list.
        let call = spelled == "("
            && self.kinds.last().is_some_and(|&(kind, start)| {
                kind == Kind::Other
                    && self.text.get(start..).is_some_and(|word| {
                        word.bytes().all(is_word_byte) && !is_keyword_before_list(word)
                    })
            });
        let glue_before = matches!(kind, Kind::Comma | Kind::Close)
            || call
            || spelled == "."
            || spelled == "::"
            || spelled == "["
            || self.text.ends_with(['(', '[', '.'])
            || self.text.ends_with("::");
        if !self.text.is_empty() && !glue_before {
            self.text.push(' ');
        }
        self.kinds.push((kind, self.text.len()));
        if spelled.starts_with(['"', '`']) {
            self.text.push_str(spelled);
        } else {
            self.text
                .extend(spelled.chars().map(|c| c.to_ascii_lowercase()));
        }
    }

    /// A `)` or `]`: a list of constants inside `IN (…)`, `VALUES (…)`,
    /// `ARRAY[…]` or `ANY(…)` collapses to `(...)` / `[...]`, and further
    /// groups of constants after `VALUES (...)` fold into it.
    fn close(&mut self, spelled: &str) {
        let Some((open_index, constants_only)) = self.open.pop() else {
            self.write(Kind::Close, spelled);
            return;
        };
        let Some(&(_, open_at)) = self.kinds.get(open_index) else {
            self.write(Kind::Close, spelled);
            return;
        };
        let items = self.kinds.len() - open_index - 1;
        let list = constants_only && items > 0;
        // `VALUES (...), (…)`: this group folds into the first.
        if list
            && let Some(values_end) = self.values_end
            && open_index == values_end + 2
            && let Some(&(Kind::Comma, comma_at)) = self.kinds.get(values_end + 1)
        {
            self.text.truncate(comma_at);
            self.kinds.truncate(values_end + 1);
            return;
        }
        let before = self.word_before(open_index);
        let collapsible =
            list && matches!(before.as_deref(), Some("in" | "values" | "array" | "any"));
        if collapsible {
            self.text.truncate(open_at + 1);
            self.kinds.truncate(open_index + 1);
            self.text.push_str("...");
        }
        self.write(Kind::Close, spelled);
        self.values_end =
            (collapsible && before.as_deref() == Some("values")).then(|| self.kinds.len() - 1);
        if let Some((_, constants_only)) = self.open.last_mut() {
            // A collapsed list is one constant for the list around it.
            *constants_only &= collapsible;
        }
    }

    /// The word written just before the token at `index`, if it is one.
    fn word_before(&self, index: usize) -> Option<String> {
        let &(kind, start) = self.kinds.get(index.checked_sub(1)?)?;
        let &(_, end) = self.kinds.get(index)?;
        (kind == Kind::Other)
            .then(|| self.text.get(start..end).map(|word| word.trim().to_owned()))
            .flatten()
    }

    fn finish(mut self) -> Fingerprint {
        while self.text.ends_with(';') {
            self.text.pop();
            while self.text.ends_with(' ') {
                self.text.pop();
            }
        }
        let id = fnv1a(self.text.as_bytes());
        if self.text.len() > MAX_TEXT_LEN {
            let mut cut = MAX_TEXT_LEN;
            while !self.text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.truncate(cut);
            self.text.push('…');
        }
        Fingerprint {
            id,
            text: self.text.into_boxed_str(),
        }
    }
}

/// FNV-1a, 64 bits: a fixed, documented function, so ids are stable.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str) -> String {
        Fingerprint::of(sql).text().to_owned()
    }

    #[test]
    fn constants_and_placeholders_become_one_mark() {
        assert_eq!(
            text("SELECT a FROM t WHERE b = 'x''y' AND c = 42 AND d = $1 AND e = ? AND f = -1.5e3"),
            "select a from t where b = ? and c = ? and d = ? and e = ? and f = ?"
        );
        assert_eq!(text("select x - 1 from t"), "select x - ? from t");
        assert_eq!(
            text("select E'a\\'b', $$it's$$, $tag$a$b$tag$ from t"),
            "select ?, ?, ? from t"
        );
        assert_eq!(
            text("select :name, @var, ?1 from t"),
            "select ?, ?, ? from t"
        );
        assert_eq!(text("select a::text from t"), "select a::text from t");
    }

    #[test]
    fn a_backslash_before_a_quote_never_lets_a_constant_out() {
        // MySQL escapes the quote, PostgreSQL ends the string: either way
        // the rest is one constant, and no word of it comes out.
        assert_eq!(
            text("SELECT * FROM users WHERE name = 'O\\'Brien' AND id = 3"),
            "select * from users where name = ?"
        );
        assert_eq!(
            text("select * from files where path = 'C:\\' and owner = 'ann'"),
            "select * from files where path = ?"
        );
        // An even run of backslashes ends the string in both readings.
        assert_eq!(
            text("select * from files where path = 'C:\\\\' and id = 3"),
            "select * from files where path = ? and id = ?"
        );
    }

    #[test]
    fn lists_of_constants_collapse() {
        assert_eq!(
            text("select * from t where id in (1, 2, 3)"),
            "select * from t where id in (...)"
        );
        assert_eq!(
            text("select * from t where id in ($1)"),
            "select * from t where id in (...)"
        );
        assert_eq!(
            text("insert into t (a, b) values (1, 'x'), (2, 'y'), (3, 'z')"),
            "insert into t(a, b) values (...)"
        );
        assert_eq!(
            text("insert into t (a, b) values ($1, $2)"),
            "insert into t(a, b) values (...)"
        );
        assert_eq!(
            text("select * from t where id = any(array[1, 2, 3])"),
            "select * from t where id = any(array[...])"
        );
        // A subquery is not a list of constants.
        assert_eq!(
            text("select * from t where id in (select id from u)"),
            "select * from t where id in (select id from u)"
        );
        // Values with an expression stay as written.
        assert_eq!(
            text("insert into t values (1, now()), (2, now())"),
            "insert into t values (?, now()), (?, now())"
        );
    }

    #[test]
    fn comments_whitespace_and_case_do_not_matter() {
        let one = Fingerprint::of(
            "SELECT /* hint /* nested */ */ a\n\tFROM  T -- trailing\n WHERE b = 1;",
        );
        let two = Fingerprint::of("select a from t where b = 2");
        assert_eq!(one, two);
        assert_eq!(one.text(), "select a from t where b = ?");
        assert_ne!(
            Fingerprint::of("select \"A\" from t"),
            Fingerprint::of("select \"a\" from t")
        );
    }

    #[test]
    fn the_id_is_stable() {
        // Pinned: ids are stored and compared across processes.
        assert_eq!(Fingerprint::of("select 1").id(), fnv1a(b"select ?"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn unterminated_forms_end_the_input_without_a_panic() {
        for sql in [
            "select 'abc",
            "select E'abc\\",
            "select \"abc",
            "select $tag$abc",
            "select /* abc",
            "select -- abc",
            "select $",
            "select 1e",
            "select 0x",
            "select ?|",
            "'",
            "\"",
            "-",
            "",
        ] {
            let _ = Fingerprint::of(sql);
        }
        assert_eq!(text("select 'abc"), "select ?");
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let sql = format!("select {} from t", "é".repeat(5_000));
        let fingerprint = Fingerprint::of(&sql);
        assert!(fingerprint.text().len() <= MAX_TEXT_LEN + '…'.len_utf8());
        assert!(fingerprint.text().ends_with('…'));
        assert_ne!(
            fingerprint.id(),
            Fingerprint::of(format!("select {} from t", "é".repeat(4_999))).id()
        );
    }
}
