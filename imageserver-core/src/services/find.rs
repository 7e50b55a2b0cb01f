//! C-FIND's use case (QIDO-RS will share it), over [`QueryStore`].
//!
//! [`Pages`] reads the matches of a query a page at a time. Each page is
//! one statement on a pooled connection, and the connection is back in the
//! pool before the caller sees the page: however slowly the caller passes
//! matches on (a peer that stops reading, a C-FIND stalled on a half-sent
//! PDU), it holds no database connection while it does. An answer that
//! fits in one page is read by one statement, so it is one consistent
//! snapshot; a longer one is read page by page (limit and offset over the
//! level's stable order), and an entity that an insert pushed from one page
//! onto the next is passed on once only. Every page's statement matches
//! and sorts the whole answer again (a key like a name prefix gives no
//! order to read by), so pages grow fourfold from [`PAGE_SIZE`] up to
//! [`MAX_PAGE_SIZE`]: an answer of N matches costs a few statements, not
//! N / 500 (at 10 M instances, 500 a page made a name-prefix C-FIND's p99
//! 57 ms where one statement takes 17). An entity deleted meanwhile may
//! shift a later one back past the page boundary and out of the answer: a
//! query answered while the index changes answers for no single moment.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::db::{self, QueryStore};
use crate::model::query::{Attribute, Level, Match, Query};

/// Matches read by the first statement: most answers are one statement.
pub const PAGE_SIZE: u64 = 5_000;

/// Most matches read by one statement (each later page is four times the
/// one before, up to this): what one C-FIND holds in memory at once.
pub const MAX_PAGE_SIZE: u64 = 20_000;

/// The find service: queries against one index. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Find {
    store: Arc<dyn QueryStore>,
}

impl Find {
    /// The service over an index's query side.
    pub fn new(store: Arc<dyn QueryStore>) -> Find {
        Find { store }
    }

    /// The pages of `query`'s matches (see [`Pages`]).
    pub fn pages(&self, query: Query) -> Pages<'_> {
        Pages::new(self.store.as_ref(), query)
    }
}

/// The pages of a query's matches, in the level's stable order. With a
/// `limit` at most `limit + 1` matches come out in total, as from
/// [`QueryStore::find`], so that the caller can tell that the cap was
/// exceeded.
#[derive(Debug)]
pub struct Pages<'a> {
    store: &'a dyn QueryStore,
    query: Query,
    /// The next page's size.
    page_size: u64,
    /// The size pages grow to.
    max_page_size: u64,
    /// Matches still allowed out (`None`: no limit).
    remaining: Option<u64>,
    /// Identities of the matches passed on, once there is a second page.
    seen: HashSet<Vec<Option<String>>>,
    done: bool,
}

impl<'a> Pages<'a> {
    /// The pages of `query`'s matches, [`PAGE_SIZE`] first (see the
    /// module on their growth).
    pub fn new(store: &'a dyn QueryStore, query: Query) -> Pages<'a> {
        Pages::with_page_size(store, query, PAGE_SIZE)
    }

    /// As [`Pages::new`], with another first page size (at least 1); later
    /// pages grow fourfold up to [`MAX_PAGE_SIZE`] (or the first size, if
    /// larger).
    pub fn with_page_size(store: &'a dyn QueryStore, query: Query, page_size: u64) -> Pages<'a> {
        let remaining = query.limit.map(|limit| limit.saturating_add(1));
        let page_size = page_size.max(1);
        Pages {
            store,
            query,
            page_size,
            max_page_size: MAX_PAGE_SIZE.max(page_size),
            remaining,
            seen: HashSet::new(),
            done: false,
        }
    }

    /// What tells two matches of the query's level apart: the UIDs of its
    /// level and those above it, or a patient's ID and issuer.
    fn identity(&self, found: &Match) -> Vec<Option<String>> {
        let attributes: &[Attribute] = match self.query.level {
            Level::Patient => &[Attribute::PatientId, Attribute::IssuerOfPatientId],
            Level::Study => &[Attribute::StudyInstanceUid],
            Level::Series => &[Attribute::StudyInstanceUid, Attribute::SeriesInstanceUid],
            Level::Image => &[Attribute::SeriesInstanceUid, Attribute::SopInstanceUid],
        };
        attributes
            .iter()
            .map(|a| found.get(*a).map(str::to_string))
            .collect()
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<Vec<Match>, db::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let want = match self.remaining {
            Some(0) => {
                self.done = true;
                return None;
            }
            Some(remaining) => remaining.min(self.page_size),
            None => self.page_size,
        };
        let mut page = self.query.clone();
        // The backend reads one more than the limit: whether a next page
        // exists is known without asking again.
        page.limit = Some(want);
        let mut found = Vec::new();
        let result = self.store.find(&page, &mut |m| {
            found.push(m);
            ControlFlow::Continue(())
        });
        if let Err(error) = result {
            self.done = true;
            return Some(Err(error));
        }
        let more = found.len() as u64 > want;
        found.truncate(want as usize);
        let first = self.query.offset == 0;
        self.query.offset += found.len() as u64;
        self.page_size = self.page_size.saturating_mul(4).min(self.max_page_size);
        self.done = !more;
        // A one-page answer is one statement: nothing to tell apart.
        if !(first && self.done) {
            found.retain(|m| self.seen.insert(self.identity(m)));
        }
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining -= (found.len() as u64).min(*remaining);
        }
        Some(Ok(found))
    }
}
