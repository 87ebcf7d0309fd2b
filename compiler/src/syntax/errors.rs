//! Friendly syntax errors (`E0001`): pest's "expected rule list" turned into
//! plain words, pointing at the offending token.

use super::parser::{Rule, MAX_NESTING};
use crate::diagnostics::Diagnostic;
use crate::model::Span;
use pest::error::{ErrorVariant, InputLocation};

/// Rejects brackets nested more than [`MAX_NESTING`] deep (before parsing,
/// so that hostile input cannot exhaust the stack).
pub fn check_nesting(source: &str) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in source.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            in_string = !(c == '"' || c == '\n');
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error("E0001", "brackets are nested too deeply")
                        .with_label(Span::new(i, i + 1), format!("more than {MAX_NESTING} levels deep"))
                        .with_help("values are at most a tuple such as `(3, 3)`: remove the extra brackets"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A token of the source, as far as error messages need to know.
struct Token {
    span: Span,
    /// How the token is named in a message: "`max_pool2d`", "end of file".
    describe: String,
    kind: TokenKind,
}

#[derive(PartialEq, Clone, Copy)]
enum TokenKind {
    Eof,
    Ident,
    Number,
    Str,
    UnclosedStr,
    Punct(char),
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The token starting at byte `pos` (which pest reports on a char boundary).
fn token_at(source: &str, pos: usize) -> Token {
    let pos = pos.min(source.len());
    let rest = &source[pos..];
    let Some(c) = rest.chars().next() else {
        return Token {
            span: Span::new(pos, pos),
            describe: "end of file".into(),
            kind: TokenKind::Eof,
        };
    };
    let take = |pred: &dyn Fn(char) -> bool, skip: usize| -> usize {
        skip + rest[skip..]
            .chars()
            .take_while(|&c| pred(c))
            .map(char::len_utf8)
            .sum::<usize>()
    };
    let (len, kind) = if c.is_ascii_alphabetic() || c == '_' {
        (take(&is_ident_char, 0), TokenKind::Ident)
    } else if c.is_ascii_digit()
        || (c == '-' && rest[1..].starts_with(|d: char| d.is_ascii_digit()))
    {
        (
            take(&|c: char| c.is_ascii_alphanumeric() || c == '.', 1),
            TokenKind::Number,
        )
    } else if c == '"' {
        let body = &rest[1..];
        match body.find(['"', '\n']) {
            Some(i) if body[i..].starts_with('"') => (i + 2, TokenKind::Str),
            Some(i) => (i + 1, TokenKind::UnclosedStr),
            None => (rest.len(), TokenKind::UnclosedStr),
        }
    } else {
        (c.len_utf8(), TokenKind::Punct(c))
    };
    let text = &rest[..len];
    let describe = match kind {
        TokenKind::Punct(c) if c.is_control() || c.is_whitespace() => {
            format!("the character {c:?}")
        }
        TokenKind::Str | TokenKind::UnclosedStr if text.len() > 30 => "a string".to_string(),
        _ => format!("`{text}`"),
    };
    Token {
        span: Span::new(pos, pos + len),
        describe,
        kind,
    }
}

/// The byte range of the last significant character before `pos` (skipping
/// whitespace and comments), if any.
fn previous_token_end(source: &str, pos: usize) -> Option<Span> {
    let mut last: Option<Span> = None;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in source[..pos.min(source.len())].char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            last = Some(Span::new(i, i + c.len_utf8()));
            in_string = !(c == '"' || c == '\n');
            continue;
        }
        match c {
            '#' => in_comment = true,
            c if c.is_whitespace() => {}
            c => {
                in_string = c == '"';
                last = Some(Span::new(i, i + c.len_utf8()));
            }
        }
    }
    last
}

/// The first string literal that is not closed on its line, if it starts
/// at or before `pos` (strings cannot span lines).
fn unclosed_string(source: &str, pos: usize) -> Option<Span> {
    let mut in_comment = false;
    let mut string_start: Option<usize> = None;
    for (i, c) in source.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if let Some(start) = string_start {
            match c {
                '"' => string_start = None,
                '\n' => return Some(Span::new(start, i)),
                _ => {}
            }
            continue;
        }
        if i > pos {
            return None;
        }
        match c {
            '#' => in_comment = true,
            '"' => string_start = Some(i),
            _ => {}
        }
    }
    string_start.map(|start| Span::new(start, source.len()))
}

/// One expected item in plain words, with a sort key so that lists read
/// naturally ("`,` or `)`").
fn rule_words(rule: Rule) -> Option<(u8, &'static str)> {
    Some(match rule {
        Rule::file | Rule::model | Rule::kw_model => (0, "`model`"),
        Rule::block | Rule::kw_block => (0, "`block`"),
        Rule::import | Rule::kw_import => (0, "`import`"),
        Rule::input_stmt | Rule::kw_input => (2, "`input`"),
        Rule::chain_stmt | Rule::step | Rule::call => (3, "a layer"),
        Rule::output_stmt | Rule::kw_output => (4, "`output`"),
        Rule::if_stmt | Rule::kw_if => (4, "`if`"),
        Rule::body => (5, "`{`"),
        Rule::param_list => (10, "`(`"),
        Rule::param => (20, "a parameter"),
        Rule::repeat => (24, "`*`"),
        Rule::bin_op => (25, "an operator"),
        Rule::arg_list => (10, "`(`"),
        Rule::arg | Rule::named_arg => (20, "an argument"),
        Rule::value
        | Rule::channels
        | Rule::expr
        | Rule::unknown
        | Rule::string
        | Rule::float
        | Rule::int
        | Rule::kw_in => (21, "a value"),
        Rule::tuple => (22, "a shape such as `[28, 28, 1]`"),
        Rule::chan_op => (25, "`*`"),
        Rule::ident => (1, "a name"),
        Rule::EOI => (90, "end of file"),
        _ => return None,
    })
}

/// A literal token pest tried (its `Display` form) in plain words;
/// whitespace and comment starts are not worth listing.
fn token_words(token: &str) -> Option<(u8, &'static str)> {
    Some(match token {
        "model" => (0, "`model`"),
        "A..Z" | "a..z" | "_" => (1, "a name"),
        "input" => (2, "`input`"),
        "{" => (5, "`{`"),
        "(" => (10, "`(`"),
        "[" => (11, "`[`"),
        "0..9" | "-" => (12, "a number"),
        "\"" => (13, "a string"),
        "in" => (14, "`in`"),
        "*" => (25, "`*`"),
        "/" => (26, "`/`"),
        "=" => (30, "`=`"),
        "->" => (31, "`->`"),
        "+" => (27, "`+`"),
        "," => (40, "`,`"),
        ")" => (41, "`)`"),
        "]" => (42, "`]`"),
        "}" => (50, "`}`"),
        _ => return None,
    })
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn join_or(items: &[&str]) -> String {
    match items {
        [] => "something else".to_string(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// The first token at or after `pos`, skipping whitespace and comments.
fn next_token(source: &str, pos: usize) -> Token {
    let mut i = pos.min(source.len());
    loop {
        let rest = &source[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with('#') {
            i += trimmed.find('\n').unwrap_or(trimmed.len());
        } else {
            return token_at(source, i);
        }
    }
}

/// The innermost bracket opened before `pos` and not closed before it
/// (skipping comments and strings): its offset and character.
fn innermost_open(source: &str, pos: usize) -> Option<(usize, char)> {
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in source[..pos.min(source.len())].char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            in_string = !(c == '"' || c == '\n');
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '(' | '[' | '{' => stack.push((i, c)),
            ')' | ']' | '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.pop()
}

fn closer_of(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

/// What the innermost open bracket holds, for "add `)` to close ...".
fn bracket_role(source: &str, open_at: usize, open: char) -> &'static str {
    let before = source[..open_at].trim_end();
    match open {
        '{' => "the model body",
        '[' if before.ends_with("input") => "the input shape",
        '(' if before.ends_with(is_ident_char) => "the argument list",
        _ => "the tuple",
    }
}

/// Help for an unexpected punctuation character `c` (the token `found`).
/// Never suggests removing a bracket that closes something, nor a `.` or
/// `-` whose removal would give a different valid number.
fn punct_help(source: &str, found: &Token, c: char, expected_text: &str) -> Option<String> {
    let after = &source[found.span.end..];
    let before = &source[..found.span.start];
    match c {
        ')' | ']' | '}' => match innermost_open(source, found.span.start) {
            Some((_, '{')) if c != '}' => Some(format!(
                "remove this `{c}`: there is no `{}` for it to close",
                if c == ')' { '(' } else { '[' }
            )),
            Some((at, open)) if closer_of(open) != c => {
                let role = bracket_role(source, at, open);
                Some(format!(
                    "add `{}` to close {role} before this `{c}`",
                    closer_of(open)
                ))
            }
            Some(_) => Some(format!("expected {expected_text} before this `{c}`")),
            None => Some(format!("remove this `{c}`: there is no bracket for it to close")),
        },
        '.' if after.starts_with(|d: char| d.is_ascii_digit()) => {
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            Some(format!(
                "write a digit before the decimal point: `0.{digits}`"
            ))
        }
        '.' if before.ends_with(|d: char| d.is_ascii_digit()) => number_help(source, found.span.start),
        '-' | '+' => Some(
            "a value is a number (such as `-1` or `0.5`), a name, a string or a tuple; arithmetic is only allowed in `in * N` and `in / N`"
                .to_string(),
        ),
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2018}' | '\u{2019}' => {
            Some("use plain ASCII double quotes `\"` around strings".to_string())
        }
        c if !c.is_ascii() && c.is_alphanumeric() => Some(format!(
            "names are made of ASCII letters, digits and `_`: replace `{c}`"
        )),
        // Punctuation with a meaning in the language: removing it could
        // give another valid program, so say what was expected instead.
        ',' | '=' | '*' | '/' | '.' | '(' | '[' | '{' => Some(format!(
            "expected {expected_text} here; remove {} if it is a typo",
            found.describe
        )),
        _ => Some(format!("remove {}", found.describe)),
    }
}

/// Help for a number cut at a `.` with no digits after it (`10.`), where
/// `at` is the offset just after the number. `None` when the text before
/// `at` is not such a number.
fn number_help(source: &str, at: usize) -> Option<String> {
    let before = &source[..at];
    let body = before.strip_suffix('.')?;
    let digits_start = body
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    let int = &body[digits_start..];
    let sign = if body[..digits_start].ends_with('-') {
        "-"
    } else {
        ""
    };
    Some(format!(
        "a decimal point needs digits after it: write `{sign}{int}.0`, or `{sign}{int}` for an integer"
    ))
}

/// Converts a pest error into an `E0001` diagnostic: "expected `,` or `)`,
/// found `activation`", labelled at the offending token, with a hint where
/// a common mistake is recognisable.
pub fn syntax_error(source: &str, err: &pest::error::Error<Rule>) -> Diagnostic {
    let rule_pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let attempts = err.parse_attempts();
    // The furthest position any token was tried at (right after the last
    // token that parsed), or pest's rule-based position.
    let pos = attempts
        .as_ref()
        .map(|a| a.max_position.max(rule_pos))
        .unwrap_or(rule_pos)
        .min(source.len());
    let mut expected: Vec<(u8, &'static str)> = Vec::new();
    if rule_pos == pos {
        if let ErrorVariant::ParsingError { positives, .. } = &err.variant {
            expected.extend(positives.iter().filter_map(|r| rule_words(*r)));
        }
    }
    // Right after a name or number, pest also offers to continue that token
    // (more letters or digits): not worth listing.
    let after_word = source[..pos].chars().next_back().is_some_and(is_ident_char);
    if let Some(a) = attempts.as_ref().filter(|a| a.max_position == pos) {
        for t in a.expected_tokens() {
            // `ParsingToken` is not exported by pest; its `Display` is the literal.
            let t = t.to_string();
            if after_word && matches!(t.as_str(), "0..9" | "." | "e" | "E") {
                continue;
            }
            if let Some(w) = token_words(&t) {
                expected.push(w);
            }
        }
    }
    let has = |expected: &Vec<(u8, &str)>, w: &str| expected.iter().any(|x| x.1 == w);
    // Collapse the alternatives of a value into one word.
    if has(&expected, "a number") || has(&expected, "a value") {
        expected.retain(|(k, _)| !matches!(k, 1 | 10 | 11 | 12 | 13 | 14 | 21 | 22));
        expected.push((21, "a value"));
    }
    let after_input_keyword = source[..pos].trim_end().ends_with("input");
    if after_input_keyword
        && (has(&expected, "`[`") || has(&expected, "a shape such as `[28, 28, 1]`"))
    {
        expected.retain(|(k, _)| !matches!(k, 10 | 11 | 22));
        expected.push((22, "a shape such as `[28, 28, 1]`"));
    }
    // Where a layer may start, a name means a layer.
    if has(&expected, "`}`") && has(&expected, "a name") {
        // `input` is only valid first: do not suggest it among layers.
        expected.retain(|(k, _)| *k != 1 && *k != 2 && *k != 3);
        expected.push((3, "a layer"));
    } else if after_word && (has(&expected, "`,`") || has(&expected, "`=`")) {
        // Inside an argument list, right after a word: the word is complete.
        expected.retain(|(k, _)| *k != 1);
    }
    let prev = source[..pos].trim_end();
    let after_in = prev.ends_with("in")
        && !prev[..prev.len() - 2]
            .chars()
            .next_back()
            .is_some_and(is_ident_char);
    if after_input_keyword && has(&expected, "a shape such as `[28, 28, 1]`") {
        // `input` then something else: the shape is what is missing.
        expected.retain(|(k, _)| *k == 22);
    }
    if after_in && has(&expected, "`*`") {
        // After `in`: an operator, not `in = value`.
        expected.retain(|(_, w)| *w != "`=`" && *w != "an operator" && *w != "`+`");
        expected.push((26, "`/`"));
    } else {
        // Operators, `->` and repeats continue what was written; listing
        // them hides the likely fix (a missing `,` or `}`).
        let optional = ["`*`", "`/`", "`+`", "an operator", "`->`"];
        if expected.iter().any(|(_, w)| !optional.contains(w)) {
            expected.retain(|(_, w)| !optional.contains(w));
        }
    }
    if has(&expected, "a layer") {
        // `x = ...` after a name is valid but rarely what was meant.
        expected.retain(|(_, w)| *w != "`if`" && *w != "`output`" && *w != "`=`");
    }
    let after_token = prev.chars().next_back().is_some_and(is_ident_char);
    if after_token && (has(&expected, "`,`") || has(&expected, "`)`")) {
        expected.retain(|(_, w)| *w != "a value");
    }
    expected.sort();
    expected.dedup_by(|a, b| a.1 == b.1);
    let words: Vec<&str> = expected.iter().map(|(_, w)| *w).collect();
    let expected_text = join_or(&words);
    let found = next_token(source, pos);

    if let Some(string) = unclosed_string(source, found.span.start) {
        return Diagnostic::error("E0001", "unterminated string")
            .with_label(string, "this string has no closing `\"`")
            .with_help("close the string with `\"` on the same line, e.g. `name = \"conv1\"`");
    }

    let message = format!("expected {expected_text}, found {}", found.describe);
    let has = |w: &str| words.contains(&w);
    let mut help = None;
    if has("`,`")
        && has("`)`")
        && matches!(
            found.kind,
            TokenKind::Ident | TokenKind::Number | TokenKind::Str
        )
    {
        help = Some("separate arguments with `,` and close the argument list with `)`".to_string());
    }
    if has("`}`") && found.kind == TokenKind::Eof {
        help = Some("close the model body with `}`".to_string());
    }
    if has("`model`") {
        help = Some("a spec starts with `model NAME {`, e.g. `model fashion_mnist {`".to_string());
    }
    if has("end of file") && found.kind != TokenKind::Eof {
        help = Some(
            "a file holds one `model NAME { ... }`: remove what follows its closing `}`"
                .to_string(),
        );
    }
    if has("a shape such as `[28, 28, 1]`") {
        help = Some(
            "write the input shape in brackets: `input [height, width, channels]`".to_string(),
        );
    }
    let prev_char =
        previous_token_end(source, found.span.start).and_then(|p| source[p.start..].chars().next());
    if prev_char == Some('=') && has("a value") {
        help = Some("give the argument a value (e.g. `activation=relu`), or remove it".to_string());
    }
    if words == ["a name"] && source[..pos].trim_end().ends_with("model") {
        help = Some("name the model: `model fashion_mnist {`".to_string());
    }
    if found.kind == TokenKind::Punct('=') && has("`,`") {
        help = Some("only an argument name can be given a value: `key = value`".to_string());
    }
    if found.kind == TokenKind::Punct(';') || found.kind == TokenKind::Punct(',') && has("a layer")
    {
        help = Some("layers need no separator: put each layer on its own line".to_string());
    }
    if has("`*`") && matches!(found.kind, TokenKind::Punct('+' | '-')) {
        help = Some("a channel expression is `in`, `in * N` or `in / N`".to_string());
    }

    if let TokenKind::Punct(c) = found.kind {
        help = help.or_else(|| punct_help(source, &found, c, &expected_text));
    }
    if help.is_none() {
        if let Some((at, open)) = innermost_open(source, found.span.start) {
            let closer = closer_of(open);
            if has(&format!("`{closer}`")) {
                let role = bracket_role(source, at, open);
                help = Some(format!("add `{closer}` to close {role}"));
            }
        }
    }
    // `dense(10.)`: the number stops before the `.`, which is then taken
    // as the start of a fraction that has no digits.
    if let Some(h) = previous_token_end(source, found.span.start)
        .filter(|p| p.end == found.span.start)
        .and_then(|p| number_help(source, p.end))
    {
        help = Some(h);
    }

    let mut d = Diagnostic::error("E0001", message);
    // When the offending token starts a later line than the previous token,
    // the mistake is usually at the end of that previous line (a missing `)`
    // or `,`): point there, rustc-style, and mark the token found as well.
    let line_of = |p: usize| source[..p].matches('\n').count();
    match previous_token_end(source, found.span.start) {
        Some(p) if line_of(p.start) < line_of(found.span.start) || found.kind == TokenKind::Eof => {
            d = d.with_label(p, format!("expected {expected_text} after this"));
            if found.kind != TokenKind::Eof {
                d = d.with_label(found.span, "unexpected token");
            }
        }
        _ => d = d.with_label(found.span, format!("expected {expected_text}")),
    }
    d.with_help_opt(help)
}
