//! The `Query` service: nodes, instant queries, alerts and live events, for
//! operator certificates only.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use nodewatch_proto::v1::query_server::Query;
use nodewatch_proto::v1::{
    Event, Label, ListAlertsRequest, ListAlertsResponse, ListNodesRequest, ListNodesResponse,
    QueryRequest, QueryResponse, SeriesValue, WatchEventsRequest,
};
use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::auth::require_operator;
use crate::events::EventLog;
use crate::nodes::Nodes;
use crate::store::Store;

pub struct QueryService {
    pub store: Arc<Store>,
    pub nodes: Arc<Nodes>,
    pub events: Arc<EventLog>,
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("{0}")]
    Unsupported(String),
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Parse(_) => Status::invalid_argument(e.to_string()),
            QueryError::Unsupported(_) => Status::unimplemented(e.to_string()),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Evaluates an instant query at `t_ms`.
pub fn instant(store: &Store, expr: &str, t_ms: i64) -> Result<QueryResponse, QueryError> {
    let ast = parser::parse(expr).map_err(QueryError::Parse)?;
    let Expr::VectorSelector(vs) = ast else {
        return Err(QueryError::Unsupported(format!(
            "only instant vector selectors such as node_load1{{node=\"x\"}} are answered for now; {expr:?} needs the PromQL engine"
        )));
    };
    if vs.at.is_some() {
        return Err(QueryError::Unsupported(
            "the @ modifier is not supported yet".into(),
        ));
    }
    let offset_ms = match &vs.offset {
        Some(promql_parser::parser::Offset::Pos(d)) => d.as_millis() as i64,
        Some(promql_parser::parser::Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    };
    let mut ms: Matchers = vs.matchers.clone();
    if let Some(name) = &vs.name {
        if !ms.matchers.iter().any(|m| m.name == "__name__") {
            ms.matchers
                .push(Matcher::new(MatchOp::Equal, "__name__", name));
        }
    }
    let at = t_ms - offset_ms;
    let inner = store.read();
    let mut vector: Vec<SeriesValue> = inner
        .select(&ms)
        .filter_map(|s| {
            let (_, v) = s.at(at)?;
            Some(SeriesValue {
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                t_ms,
                value: v,
            })
        })
        .collect();
    vector.sort_by(|a, b| {
        a.labels
            .iter()
            .map(|l| (&l.name, &l.value))
            .cmp(b.labels.iter().map(|l| (&l.name, &l.value)))
    });
    Ok(QueryResponse {
        result_type: "vector".into(),
        vector,
        scalar: 0.0,
        string_value: String::new(),
        time_ms: t_ms,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Query for QueryService {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        require_operator(&req)?;
        Ok(Response::new(ListNodesResponse {
            nodes: self.nodes.list(),
        }))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        require_operator(&req)?;
        let q = req.into_inner();
        let t = if q.time_ms == 0 { now_ms() } else { q.time_ms };
        let store = Arc::clone(&self.store);
        let resp = tokio::task::spawn_blocking(move || instant(&store, &q.expr, t))
            .await
            .map_err(|e| Status::internal(format!("query task failed: {e}")))??;
        Ok(Response::new(resp))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        require_operator(&req)?;
        Ok(Response::new(ListAlertsResponse { alerts: Vec::new() }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        require_operator(&req)?;
        let WatchEventsRequest { nodes, follow } = req.into_inner();
        // Subscribe before reading the recent list so nothing falls between the two.
        let rx = self.events.subscribe();
        let keep = move |e: &Event| nodes.is_empty() || nodes.contains(&e.node);
        let recent: Vec<Result<Event, Status>> = self
            .events
            .recent()
            .into_iter()
            .filter(|e| keep(e))
            .map(Ok)
            .collect();
        let history = futures::stream::iter(recent);
        if !follow {
            return Ok(Response::new(Box::pin(history)));
        }
        let live = futures::stream::unfold(rx, move |mut rx| {
            let keep = keep.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if keep(&e) => return Some((Ok(e), rx)),
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => {
                            let status = Status::resource_exhausted(format!(
                                "watcher fell behind; {n} events missed"
                            ));
                            return Some((Err(status), rx));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(history.chain(live))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_answer_and_other_queries_say_why_not() {
        let store = Store::new(600_000);
        let mut l: Vec<(String, String)> =
            vec![("__name__".into(), "m".into()), ("node".into(), "a".into())];
        l.sort();
        let id = store.series_id(l.into());
        store.append(&[(id, 1_000, 7.0)]);
        let r = instant(&store, "m{node=~\"a|b\"}", 2_000).unwrap();
        assert_eq!(r.vector.len(), 1);
        assert!((r.vector[0].value - 7.0).abs() < f64::EPSILON);
        assert!(instant(&store, "m{node=\"b\"}", 2_000)
            .unwrap()
            .vector
            .is_empty());
        assert!(instant(&store, "m offset 1s", 2_000).unwrap().vector.len() == 1);
        let err = instant(&store, "rate(m[5m])", 2_000).unwrap_err();
        assert!(matches!(err, QueryError::Unsupported(_)), "{err}");
        assert!(matches!(
            instant(&store, "m{", 0).unwrap_err(),
            QueryError::Parse(_)
        ));
    }
}
