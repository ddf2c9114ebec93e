//! The OTTL condition grammar tailgate supports, parsed into an [`Expr`] whose paths are
//! resolved and whose regexes are compiled at load time.
//!
//! ```text
//! condition  := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
//! operand    := "(" condition ")" | "IsMatch" "(" value "," string ")" | value
//! value      := string | int | float | "true" | "false" | "nil" | 0xHEX | ENUM | path
//! path       := ident ("." ident)* ("[" string "]")?
//! ```

use super::{Ctx, Path};

/// A parse or resolution problem, at a character column (1-based) of the condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Nil,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Literal(Literal),
    Path(Path),
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Operand, Op, Operand),
    /// A lone boolean value (`true`, a boolean attribute).
    Value(Operand),
    IsMatch(Operand, regex::Regex),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    End,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        column,
        message: message.into(),
    })
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let tok = match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '.' => Tok::Dot,
            ',' => Tok::Comma,
            '=' | '!' | '<' | '>' => {
                let (op, len) = match two.as_str() {
                    "==" => (Op::Eq, 2),
                    "!=" => (Op::Ne, 2),
                    "<=" => (Op::Le, 2),
                    ">=" => (Op::Ge, 2),
                    "<>" => return err(col, "unknown operator <>"),
                    _ if c == '<' => (Op::Lt, 1),
                    _ if c == '>' => (Op::Gt, 1),
                    _ => return err(col, format!("unknown operator {c:?}; use == or !=")),
                };
                out.push((Tok::Op(op), col));
                i += len;
                continue;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err(col, "unterminated string"),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(e @ ('"' | '\\')) => s.push(*e),
                                Some(other) => {
                                    s.push('\\');
                                    s.push(*other);
                                }
                                None => return err(col, "unterminated string"),
                            }
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((Tok::Str(s), col));
                continue;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                if two == "0x" {
                    let start = i + 2;
                    let mut end = start;
                    while end < chars.len() && chars[end].is_ascii_hexdigit() {
                        end += 1;
                    }
                    let hex: String = chars[start..end].iter().collect();
                    if hex.is_empty() || !hex.len().is_multiple_of(2) {
                        return err(col, "a byte literal needs an even number of hex digits");
                    }
                    let bytes = (0..hex.len())
                        .step_by(2)
                        .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).expect("hex digits"))
                        .collect();
                    out.push((Tok::Bytes(bytes), col));
                    i = end;
                    continue;
                }
                let mut end = i + 1;
                while end < chars.len()
                    && (chars[end].is_ascii_digit()
                        || matches!(chars[end], '.' | 'e' | 'E' | '+' | '-'))
                {
                    if matches!(chars[end], '+' | '-') && !matches!(chars[end - 1], 'e' | 'E') {
                        break;
                    }
                    end += 1;
                }
                let text: String = chars[i..end].iter().collect();
                let tok = if let Ok(n) = text.parse::<i64>() {
                    Tok::Int(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Tok::Float(f)
                } else {
                    return err(col, format!("invalid number {text:?}"));
                };
                out.push((tok, col));
                i = end;
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                    end += 1;
                }
                out.push((Tok::Ident(chars[i..end].iter().collect()), col));
                i = end;
                continue;
            }
            other => return err(col, format!("unexpected character {other:?}")),
        };
        out.push((tok, col));
        i += 1;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    ctx: Ctx,
}

/// Parses one condition for `ctx` (span or span event).
pub(crate) fn parse(src: &str, ctx: Ctx) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        at: 0,
        ctx,
    };
    let e = p.or()?;
    match p.peek() {
        Tok::End => Ok(e),
        t => err(p.col(), format!("unexpected {}", describe(t))),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::End => "end of condition".into(),
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        other => format!("{other:?}"),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn col(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.at].0.clone();
        if t != Tok::End {
            self.at += 1;
        }
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == word)
    }

    fn expect(&mut self, want: Tok) -> Result<(), ParseError> {
        if *self.peek() == want {
            self.next();
            Ok(())
        } else {
            err(
                self.col(),
                format!(
                    "expected {}, found {}",
                    describe(&want),
                    describe(self.peek())
                ),
            )
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while self.keyword("or") {
            self.next();
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.not()?];
        while self.keyword("and") {
            self.next();
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            self.next();
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        if *self.peek() == Tok::LParen {
            self.next();
            let e = self.or()?;
            self.expect(Tok::RParen)?;
            return Ok(e);
        }
        if self.keyword("IsMatch") {
            self.next();
            self.expect(Tok::LParen)?;
            let target = self.value()?;
            self.expect(Tok::Comma)?;
            let col = self.col();
            let Tok::Str(pattern) = self.next() else {
                return err(col, "IsMatch takes a string pattern");
            };
            let regex = regex::Regex::new(&pattern).map_err(|e| ParseError {
                column: col,
                message: format!("invalid regex: {e}"),
            })?;
            self.expect(Tok::RParen)?;
            return Ok(Expr::IsMatch(target, regex));
        }
        let left = self.value()?;
        let op = match self.peek() {
            Tok::Op(op) => *op,
            _ => return Ok(Expr::Value(left)),
        };
        self.next();
        let right = self.value()?;
        Ok(Expr::Compare(left, op, right))
    }

    fn value(&mut self) -> Result<Operand, ParseError> {
        let col = self.col();
        Ok(Operand::Literal(match self.next() {
            Tok::Str(s) => Literal::Str(s),
            Tok::Int(n) => Literal::Int(n),
            Tok::Float(f) => Literal::Float(f),
            Tok::Bytes(b) => Literal::Bytes(b),
            Tok::Ident(word) => match word.as_str() {
                "true" => Literal::Bool(true),
                "false" => Literal::Bool(false),
                "nil" => Literal::Nil,
                w if w.starts_with("SPAN_KIND_") || w.starts_with("STATUS_CODE_") => {
                    match enum_value(w) {
                        Some(n) => Literal::Int(n),
                        None => return err(col, format!("unknown enum {w}")),
                    }
                }
                _ => return self.path(word, col).map(Operand::Path),
            },
            other => return err(col, format!("expected a value, found {}", describe(&other))),
        }))
    }

    fn path(&mut self, first: String, col: usize) -> Result<Path, ParseError> {
        let mut segments = vec![first];
        while *self.peek() == Tok::Dot {
            self.next();
            match self.next() {
                Tok::Ident(s) => segments.push(s),
                other => {
                    return err(
                        self.col(),
                        format!("expected a name after '.', found {}", describe(&other)),
                    )
                }
            }
        }
        let mut key = None;
        if *self.peek() == Tok::LBracket {
            self.next();
            let kcol = self.col();
            match self.next() {
                Tok::Str(k) => key = Some(k),
                _ => return err(kcol, "a key in [ ] must be a string"),
            }
            self.expect(Tok::RBracket)?;
        }
        let dotted = segments.join(".");
        Path::resolve(&dotted, key, self.ctx).ok_or_else(|| ParseError {
            column: col,
            message: format!("unknown path {dotted:?} for {}", self.ctx.name()),
        })
    }
}

fn enum_value(name: &str) -> Option<i64> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}
