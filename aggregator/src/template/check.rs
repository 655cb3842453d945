//! Load-time checks Go's parser makes and gotmpl's does not.

use gotmpl::parse::{Expr, ListNode, Node, PipeNode, Pos, SmolStr};

use super::functions::funcs;

const BUILTINS: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

/// gotmpl accepts an `if`, `range`, `with`, `define` or `block` that is
/// never closed, and a stray `{{end}}` or `{{else}}`; Go refuses them.
/// Runs after gotmpl has lexed `src` without error, so the actions are
/// well formed.
pub(super) fn check_balance(name: &str, src: &str) -> Result<(), String> {
    let b = src.as_bytes();
    let fail = |at: usize, msg: &str| {
        let line = src.get(..at).unwrap_or(src).matches('\n').count() + 1;
        Err(format!("{name}:{line}: {msg}"))
    };
    let mut depth = 0_usize;
    let mut i = 0;
    while let Some(off) = src.get(i..).and_then(|r| r.find("{{")) {
        let start = i + off + 2;
        let mut j = start;
        // To the closing delimiter, past quoted strings and comments.
        loop {
            match b.get(j) {
                None => return Ok(()),
                Some(&q @ (b'"' | b'\'')) => {
                    j += 1;
                    while j < b.len() && b[j] != q {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    j += 1;
                }
                Some(b'`') => {
                    j += 1;
                    while j < b.len() && b[j] != b'`' {
                        j += 1;
                    }
                    j += 1;
                }
                Some(b'/') if b.get(j + 1) == Some(&b'*') => {
                    match src.get(j + 2..).and_then(|r| r.find("*/")) {
                        Some(e) => j += e + 4,
                        None => return Ok(()),
                    }
                }
                Some(b'}') if b.get(j + 1) == Some(&b'}') => break,
                Some(_) => j += 1,
            }
        }
        let Some(body) = src.get(start..j) else {
            return Ok(());
        };
        i = j + 2;
        // `{{- ` trims; `{{-3}}` is a number.
        let body = match body.strip_prefix('-') {
            Some(r) if r.starts_with(char::is_whitespace) => r,
            _ => body,
        }
        .trim_start();
        let word = body
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        match word {
            "if" | "range" | "with" | "define" | "block" => depth += 1,
            "end" if depth == 0 => return fail(start, "unexpected {{end}}"),
            "end" => depth -= 1,
            "else" if depth == 0 => return fail(start, "unexpected {{else}}"),
            _ => {}
        }
    }
    if depth > 0 {
        return fail(src.len(), "unexpected EOF");
    }
    Ok(())
}

pub(super) struct Checker<'a> {
    pub(super) name: &'a str,
    /// Variables in scope, innermost last (Go's `Tree.vars`).
    pub(super) vars: Vec<SmolStr>,
}

impl Checker<'_> {
    fn fail(&self, pos: Pos, msg: &str) -> String {
        format!("{}:{}: {msg}", self.name, pos.line)
    }

    pub(super) fn list(&mut self, l: &ListNode) -> Result<(), String> {
        l.nodes.iter().try_for_each(|n| self.node(n))
    }

    fn node(&mut self, n: &Node) -> Result<(), String> {
        match n {
            Node::List(l) => self.list(l),
            Node::Text(_) | Node::Break(_) | Node::Continue(_) | Node::Define(_) => Ok(()),
            Node::Action(a) => self.pipe(&a.pipe),
            // Variables declared in a control structure live to its `end`,
            // `else` branches included.
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                let mark = self.vars.len();
                self.pipe(&b.pipe)?;
                self.list(&b.body)?;
                if let Some(e) = &b.else_body {
                    self.list(e)?;
                }
                self.vars.truncate(mark);
                Ok(())
            }
            Node::Template(t) => t.pipe.as_ref().map_or(Ok(()), |p| self.pipe(p)),
        }
    }

    fn pipe(&mut self, p: &PipeNode) -> Result<(), String> {
        for d in &p.decl {
            if !p.is_assign {
                self.vars.push(d.clone());
            } else if !self.vars.contains(d) {
                return Err(self.fail(p.pos, &format!("undefined variable {:?}", d.as_str())));
            }
        }
        for c in &p.commands {
            for a in &c.args {
                self.expr(a)?;
            }
        }
        Ok(())
    }

    fn expr(&mut self, e: &Expr) -> Result<(), String> {
        match e {
            Expr::Identifier(pos, f) => {
                if BUILTINS.contains(&f.as_str()) || funcs().contains_key(f.as_str()) {
                    Ok(())
                } else {
                    Err(self.fail(*pos, &format!("function {:?} not defined", f.as_str())))
                }
            }
            Expr::Variable(pos, v, _) => {
                if self.vars.contains(v) {
                    Ok(())
                } else {
                    Err(self.fail(*pos, &format!("undefined variable {:?}", v.as_str())))
                }
            }
            Expr::Pipe(_, p) => self.pipe(p),
            Expr::Chain(_, inner, _) => self.expr(inner),
            _ => Ok(()),
        }
    }
}
