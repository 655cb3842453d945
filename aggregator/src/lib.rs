pub mod promql;
pub mod rules;
