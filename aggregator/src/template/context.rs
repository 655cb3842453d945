//! Expansion context: what functions need from the current expansion. The
//! functions are shared by every template and cannot borrow the caller's
//! storage, so they read this thread's context instead.

use std::cell::RefCell;
use std::collections::HashMap;

use gotmpl::Value;

#[derive(Default)]
pub(super) struct ExpandCtx {
    pub(super) external_url: String,
    pub(super) time_ms: i64,
    pub(super) can_query: bool,
    pub(super) cache: HashMap<String, Result<Value, String>>,
    /// Queries asked for and not in `cache`, in order.
    pub(super) misses: Vec<String>,
}

thread_local! {
    static CTX: RefCell<Option<ExpandCtx>> = const { RefCell::new(None) };
}

pub(super) fn swap_ctx(ctx: Option<ExpandCtx>) -> Option<ExpandCtx> {
    CTX.with(|c| match c.try_borrow_mut() {
        Ok(mut cur) => std::mem::replace(&mut *cur, ctx),
        Err(_) => None,
    })
}

pub(super) fn with_ctx<T>(
    f: impl FnOnce(&mut ExpandCtx) -> Result<T, String>,
) -> Result<T, String> {
    CTX.with(|c| match c.try_borrow_mut() {
        Ok(mut cur) => match cur.as_mut() {
            Some(ctx) => f(ctx),
            None => Err("not inside a template expansion".into()),
        },
        Err(_) => Err("template context busy".into()),
    })
}
