//! Recent events (OOM kills, pool state changes, …) and their live feed.

use std::collections::VecDeque;
use std::sync::Mutex;

use nodewatch_proto::v1::Event;
use tokio::sync::broadcast;

/// Events kept for `nodewatch events` without `--follow`.
pub const RECENT_EVENTS: usize = 1000;

/// Events buffered per live watcher; a watcher that falls further behind is
/// told how many it missed rather than slowing ingest.
pub const WATCH_BUFFER: usize = 1024;

#[derive(Debug)]
pub struct EventLog {
    recent: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::new()),
            live: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

impl EventLog {
    pub fn push(&self, e: Event) {
        {
            let mut r = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.len() >= RECENT_EVENTS {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(e);
    }

    #[must_use]
    pub fn recent(&self) -> Vec<Event> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
