//! Tree adjustments for Go's printing and `missingkey=zero`.

use std::sync::Arc;

use gotmpl::parse::{CommandNode, Expr, ListNode, Node, PipeNode, Pos, SmolStr};

pub(super) fn rewrite_list(l: &mut ListNode) {
    l.nodes.iter_mut().for_each(rewrite_node);
}

fn rewrite_node(n: &mut Node) {
    match n {
        Node::List(l) => rewrite_list(l),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
        Node::Action(a) => {
            rewrite_pipe(&mut a.pipe);
            // Printed, not assigned: print as Go does.
            if a.pipe.decl.is_empty() {
                let pos = a.pipe.pos;
                a.pipe.commands.push(CommandNode {
                    pos,
                    args: vec![Expr::Identifier(pos, SmolStr::new_static("__print"))],
                });
            }
        }
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            rewrite_pipe(&mut b.pipe);
            rewrite_list(&mut b.body);
            if let Some(e) = &mut b.else_body {
                rewrite_list(e);
            }
        }
        Node::Template(t) => {
            if let Some(p) = &mut t.pipe {
                rewrite_pipe(p);
            }
        }
        Node::Define(d) => rewrite_list(&mut d.body),
    }
}

fn rewrite_pipe(p: &mut PipeNode) {
    for c in &mut p.commands {
        c.args.iter_mut().for_each(rewrite_expr);
    }
}

/// `base.a.b` → `(__field base "a" "b")`.
fn field_call(pos: Pos, base: Expr, chain: &[SmolStr]) -> Expr {
    let mut args = vec![Expr::Identifier(pos, SmolStr::new_static("__field")), base];
    args.extend(
        chain
            .iter()
            .map(|k| Expr::String(pos, Arc::from(k.as_str()))),
    );
    Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode { pos, args }],
            is_assign: false,
        },
    )
}

fn rewrite_expr(e: &mut Expr) {
    let new = match e {
        Expr::Field(pos, chain) if !chain.is_empty() => field_call(*pos, Expr::Dot(*pos), chain),
        Expr::Variable(pos, v, chain) if !chain.is_empty() => {
            field_call(*pos, Expr::Variable(*pos, v.clone(), Vec::new()), chain)
        }
        Expr::Chain(pos, inner, chain) => {
            rewrite_expr(inner);
            let base = std::mem::replace(inner.as_mut(), Expr::Nil(*pos));
            field_call(*pos, base, chain)
        }
        Expr::Pipe(_, p) => {
            rewrite_pipe(p);
            return;
        }
        _ => return,
    };
    *e = new;
}
