//! The `Query` service: nodes, instant queries, alerts and live events, for
//! operator certificates only.

use std::pin::Pin;
use std::sync::Arc;

use crate::promql::Value;
use futures::{Stream, StreamExt};
use nodewatch_proto::v1::query_server::Query;
use nodewatch_proto::v1::{
    Alert, Event, Label, ListAlertsRequest, ListAlertsResponse, ListNodesRequest,
    ListNodesResponse, QueryRequest, QueryResponse, SeriesValue, WatchEventsRequest,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::auth::require_operator;
use crate::events::EventLog;
use crate::nodes::Nodes;
use crate::store::now_ms;
use crate::store::Store;

pub struct QueryService {
    pub store: Arc<Store>,
    pub nodes: Arc<Nodes>,
    pub events: Arc<EventLog>,
    pub rules: Option<Arc<crate::rules::RuleManager>>,
}

/// Evaluates an instant query at `t_ms` with the `PromQL` engine.
pub fn instant(store: &Store, expr: &str, t_ms: i64) -> Result<QueryResponse, Status> {
    instant_with(store, expr, t_ms, crate::promql::EngineOptions::default())
}

/// [`instant`] with the given engine settings (the rules', so that a
/// subquery without a step takes the evaluation interval as in the HTTP API).
pub fn instant_with(
    store: &Store,
    expr: &str,
    t_ms: i64,
    opts: crate::promql::EngineOptions,
) -> Result<QueryResponse, Status> {
    let engine = crate::promql::Engine::new(opts);
    let value = engine.query(store, expr, t_ms).map_err(|e| match e {
        crate::promql::QueryError::Parse(p) => {
            Status::invalid_argument(format!("parse error: {}", p.0))
        }
        crate::promql::QueryError::Eval(e) => Status::invalid_argument(e.to_string()),
    })?;
    let mut resp = QueryResponse {
        time_ms: t_ms,
        ..QueryResponse::default()
    };
    match value {
        Value::Vector(v) => {
            resp.result_type = "vector".into();
            resp.vector = v
                .into_iter()
                .map(|s| SeriesValue {
                    labels: proto_labels(s.labels.iter()),
                    t_ms: s.t,
                    value: s.v,
                })
                .collect();
        }
        Value::Scalar(v) => {
            resp.result_type = "scalar".into();
            resp.scalar = v;
        }
        Value::String(v) => {
            resp.result_type = "string".into();
            resp.string_value = v;
        }
        Value::Matrix(_) => {
            return Err(Status::invalid_argument(
                "a range vector is the answer of a range query: use --range (or the HTTP API)",
            ))
        }
    }
    Ok(resp)
}

/// Name-value pairs as the wire's labels.
fn proto_labels<K: ToString, V: ToString>(pairs: impl Iterator<Item = (K, V)>) -> Vec<Label> {
    pairs
        .map(|(k, v)| Label {
            name: k.to_string(),
            value: v.to_string(),
        })
        .collect()
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
        let opts = self
            .rules
            .as_ref()
            .map_or_else(crate::promql::EngineOptions::default, |r| {
                r.engine_options()
            });
        let resp = tokio::task::spawn_blocking(move || instant_with(&store, &q.expr, t, opts))
            .await
            .map_err(|e| Status::internal(format!("query task failed: {e}")))??;
        Ok(Response::new(resp))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        require_operator(&req)?;
        let alerts = self
            .rules
            .as_ref()
            .map(|m| m.alerts())
            .unwrap_or_default()
            .into_iter()
            .map(|(group, a)| Alert {
                labels: proto_labels(a.labels.iter()),
                annotations: proto_labels(a.annotations.iter()),
                state: a.state.as_str().to_string(),
                active_since_ms: a.active_at_ms,
                value: a.value,
                rule_group: group,
                rule: a.rule,
            })
            .collect();
        Ok(Response::new(ListAlertsResponse { alerts }))
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
    fn promql_over_the_store() {
        let store = Store::new(600_000);
        let mut l: Vec<(String, String)> = vec![
            ("__name__".into(), "m_total".into()),
            ("node".into(), "a".into()),
        ];
        l.sort();
        let id = store.series_id(l.into());
        store.append(&[(id, 1_000, 1.0), (id, 61_000, 7.0)]);
        let r = instant(&store, "m_total{node=~\"a|b\"}", 62_000).unwrap();
        assert_eq!(r.result_type, "vector");
        assert!((r.vector[0].value - 7.0).abs() < f64::EPSILON);
        let r = instant(&store, "sum(increase(m_total[2m]))", 62_000).unwrap();
        assert!(r.vector[0].value > 6.0, "{:?}", r.vector);
        let r = instant(&store, "1 + 2", 62_000).unwrap();
        assert_eq!((r.result_type.as_str(), r.scalar), ("scalar", 3.0));
        assert_eq!(
            instant(&store, "m{", 0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let err = instant(&store, "info(m_total)", 0).unwrap_err();
        assert!(err.message().contains("info"), "{}", err.message());
    }
}
