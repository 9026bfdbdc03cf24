//! A bounded cache of parsed GraphQL documents, keyed by the query text.
//!
//! An editor sends the same few query strings over and over (with different variables), and
//! parsing was about a tenth of the server's CPU per small request. Only parsing is skipped:
//! async-graphql still runs its depth, alias and directive checks and full validation on the
//! cached document, so a cached query is judged exactly like a fresh one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_graphql::{BatchRequest, Request, parser::types::ExecutableDocument};

use crate::metrics::Metrics;

/// Queries longer than this are parsed every time: editors' queries are a few hundred bytes,
/// and the bound keeps the cache's memory small whatever clients send.
const MAX_QUERY_BYTES: usize = 4 * 1024;

/// Distinct queries kept: far more than one web editor sends.
pub const DOCUMENT_CACHE_ENTRIES: usize = 128;

pub struct DocumentCache {
    capacity: usize,
    metrics: Arc<Metrics>,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Arc<str>, Entry>,
    /// A logical clock for least-recently-used eviction.
    tick: u64,
}

struct Entry {
    doc: Arc<ExecutableDocument>,
    last_used: u64,
}

impl DocumentCache {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> DocumentCache {
        DocumentCache {
            capacity,
            metrics,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Gives every request in the batch its parsed document, from the cache or freshly parsed.
    pub fn prepare_batch(&self, batch: &mut BatchRequest) {
        match batch {
            BatchRequest::Single(r) => self.prepare(r),
            BatchRequest::Batch(rs) => rs.iter_mut().for_each(|r| self.prepare(r)),
        }
    }

    /// A query that does not parse is left alone, so async-graphql reports the syntax error
    /// in its usual shape.
    pub fn prepare(&self, request: &mut Request) {
        if self.capacity == 0 || request.query.len() > MAX_QUERY_BYTES {
            return;
        }
        // Text the limits refuse before parsing is left for them to refuse.
        if super::limits::check_text(&request.query).is_err() {
            return;
        }
        if let Some(doc) = self.get(&request.query) {
            self.metrics.record_document(true);
            // Cloned outside the lock: requests for the same query don't wait on each other.
            request.set_parsed_query((*doc).clone());
            return;
        }
        let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
            return;
        };
        self.metrics.record_document(false);
        self.insert(&request.query, Arc::new(doc.clone()));
        request.set_parsed_query(doc);
    }

    fn get(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entries = &mut *guard;
        entries.tick += 1;
        let entry = entries.map.get_mut(query)?;
        entry.last_used = entries.tick;
        Some(entry.doc.clone())
    }

    fn insert(&self, query: &str, doc: Arc<ExecutableDocument>) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entries = &mut *guard;
        entries.tick += 1;
        if entries.map.len() >= self.capacity && !entries.map.contains_key(query) {
            // A linear scan: the cache is small and this runs only when a new query arrives.
            let oldest = entries
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                entries.map.remove(&oldest);
            }
        }
        let last_used = entries.tick;
        entries
            .map
            .insert(Arc::from(query), Entry { doc, last_used });
    }

    #[cfg(test)]
    fn cached(&self, query: &str) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.map.contains_key(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(q: &str) -> Request {
        Request::new(q)
    }

    #[test]
    fn evicts_the_least_recently_used_query() {
        let cache = DocumentCache::new(2, Metrics::new());
        cache.prepare(&mut request("{ a }"));
        cache.prepare(&mut request("{ b }"));
        // `a` is used again, so `b` is the oldest when `c` arrives.
        cache.prepare(&mut request("{ a }"));
        cache.prepare(&mut request("{ c }"));
        assert!(cache.cached("{ a }"));
        assert!(!cache.cached("{ b }"));
        assert!(cache.cached("{ c }"));
    }

    #[test]
    fn leaves_unparseable_and_oversized_queries_alone() {
        let cache = DocumentCache::new(8, Metrics::new());
        let mut bad = request("{ a ");
        cache.prepare(&mut bad);
        assert!(!cache.cached("{ a "));
        let big = format!("{{ a {} }}", " ".repeat(MAX_QUERY_BYTES));
        cache.prepare(&mut request(&big));
        assert!(!cache.cached(&big));
    }
}
