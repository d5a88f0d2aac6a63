//! Ranked, typo-tolerant search over the current version of every applet.
//!
//! Every query word must match the applet somewhere (name, tags or description), exactly, as a
//! prefix, or within a small edit distance; matches in the name weigh most. Featured applets get
//! a small boost.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::VersionMeta;

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub name: String,
    pub version: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Modules the applet needs (its `[permissions]` keys).
    pub permissions: Vec<String>,
    /// Collections featuring it.
    pub featured: Vec<String>,
    pub score: u32,
}

struct Entry {
    hit: SearchHit,
    name_parts: Vec<String>,
    desc_words: Vec<String>,
}

/// The in-memory index: rebuilt after any registry change.
pub struct Index {
    entries: Vec<Entry>,
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// Edit distance allowed for a query word of this length.
fn allowed(len: usize) -> usize {
    match len {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    }
}

fn close(a: &str, b: &str) -> bool {
    let k = allowed(a.chars().count());
    k > 0 && a.len().abs_diff(b.len()) <= k && strsim::damerau_levenshtein(a, b) <= k
}

impl Index {
    pub fn build(versions: impl Iterator<Item = VersionMeta>, featured: &BTreeMap<String, Vec<String>>) -> Index {
        let entries = versions
            .map(|v| {
                let in_collections: Vec<String> =
                    featured.iter().filter(|(_, names)| names.contains(&v.name)).map(|(c, _)| c.clone()).collect();
                Entry {
                    name_parts: v.name.split('-').map(str::to_string).collect(),
                    desc_words: words(&v.description),
                    hit: SearchHit {
                        name: v.name.clone(),
                        version: v.version.clone(),
                        description: v.description.clone(),
                        tags: v.tags.clone(),
                        permissions: v.permissions.keys().cloned().collect(),
                        featured: in_collections,
                        score: 0,
                    },
                }
            })
            .collect();
        Index { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hits for `query` (all applets when empty), best first, filtered by tag and permission.
    pub fn search(&self, query: &str, tag: Option<&str>, permission: Option<&str>) -> Vec<SearchHit> {
        let terms = words(query);
        let mut hits: Vec<SearchHit> = self
            .entries
            .iter()
            .filter(|e| tag.is_none_or(|t| e.hit.tags.iter().any(|x| x == t)))
            .filter(|e| permission.is_none_or(|p| e.hit.permissions.iter().any(|x| x == p)))
            .filter_map(|e| {
                let mut total = 0;
                for t in &terms {
                    let s = score_term(e, t);
                    if s == 0 {
                        return None;
                    }
                    total += s;
                }
                if !e.hit.featured.is_empty() {
                    total += 5;
                }
                let mut hit = e.hit.clone();
                hit.score = total;
                Some(hit)
            })
            .collect();
        hits.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.name.cmp(&b.name)));
        hits
    }
}

fn score_term(e: &Entry, t: &str) -> u32 {
    let name = e.hit.name.as_str();
    if name == t {
        return 100;
    }
    let mut best = 0;
    let mut take = |s: u32| best = best.max(s);
    if name.starts_with(t) {
        take(60);
    } else if name.contains(t) {
        take(40);
    }
    for part in &e.name_parts {
        if part == t {
            take(50);
        } else if close(t, part) {
            take(30);
        }
    }
    for tag in &e.hit.tags {
        if tag == t {
            take(35);
        } else if close(t, tag) {
            take(20);
        }
    }
    for w in &e.desc_words {
        if w == t {
            take(15);
        } else if t.len() >= 3 && w.starts_with(t) {
            take(10);
        } else if close(t, w) {
            take(8);
        }
    }
    best
}
