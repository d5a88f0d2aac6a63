//! Ranked, typo-tolerant search over the current version of every applet.
//!
//! Every query word must match the applet somewhere (name, tags or description): exactly, as a
//! prefix, or within a small edit distance; matches in the name weigh most. Featured applets get
//! a small boost. Words are interned into a vocabulary when the index is built, so a query
//! compares each term against the distinct words once, then scores applets by table lookups.

use std::collections::{BTreeMap, HashMap};

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
    /// The current version is yanked: `run NAME` refuses it.
    pub yanked: bool,
    /// How the current version's own tests went when it was published (None: it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<super::model::TestSummary>,
    pub score: u32,
}

struct Entry {
    hit: SearchHit,
    name_parts: Vec<u32>,
    tags: Vec<u32>,
    desc_words: Vec<u32>,
}

/// The in-memory index: rebuilt after any registry change.
pub struct Index {
    entries: Vec<Entry>,
    vocab: Vec<String>,
}

/// How one query term relates to each vocabulary word.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rel {
    None,
    Close,
    Prefix,
    Exact,
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

fn relation(term: &str, word: &str) -> Rel {
    if term == word {
        return Rel::Exact;
    }
    if term.len() >= 3 && word.starts_with(term) {
        return Rel::Prefix;
    }
    let k = allowed(term.chars().count());
    if k > 0 && term.len().abs_diff(word.len()) <= k && strsim::damerau_levenshtein(term, word) <= k {
        return Rel::Close;
    }
    Rel::None
}

impl Index {
    pub fn build(versions: impl Iterator<Item = VersionMeta>, featured: &BTreeMap<String, Vec<String>>) -> Index {
        let mut vocab: Vec<String> = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |w: String| -> u32 {
            if let Some(&id) = ids.get(&w) {
                return id;
            }
            let id = vocab.len() as u32;
            ids.insert(w.clone(), id);
            vocab.push(w);
            id
        };
        let entries = versions
            .map(|v| {
                let in_collections: Vec<String> =
                    featured.iter().filter(|(_, names)| names.contains(&v.name)).map(|(c, _)| c.clone()).collect();
                Entry {
                    name_parts: v.name.split('-').map(|p| intern(p.to_string())).collect(),
                    tags: v.tags.iter().map(|t| intern(t.to_lowercase())).collect(),
                    desc_words: words(&v.description).into_iter().map(&mut intern).collect(),
                    hit: SearchHit {
                        name: v.name.clone(),
                        version: v.version.clone(),
                        description: v.description.clone(),
                        tags: v.tags.clone(),
                        permissions: v.permissions.keys().cloned().collect(),
                        featured: in_collections,
                        yanked: v.yanked,
                        tests: v.tests.clone(),
                        score: 0,
                    },
                }
            })
            .collect();
        Index { entries, vocab }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best `limit` hits for `query` (every applet matches an empty query), filtered by tag
    /// and permission.
    pub fn search(&self, query: &str, tag: Option<&str>, permission: Option<&str>, limit: usize) -> Vec<SearchHit> {
        let whole = query.trim().to_lowercase();
        let terms: Vec<(String, Vec<Rel>)> = words(query)
            .into_iter()
            .map(|t| {
                let rel = self.vocab.iter().map(|w| relation(&t, w)).collect();
                (t, rel)
            })
            .collect();
        let mut scored: Vec<(u32, &Entry)> = self
            .entries
            .iter()
            .filter(|e| tag.is_none_or(|t| e.hit.tags.iter().any(|x| x == t)))
            .filter(|e| permission.is_none_or(|p| e.hit.permissions.iter().any(|x| x == p)))
            .filter_map(|e| {
                let mut total = 0;
                for (t, rel) in &terms {
                    let s = score_term(e, t, rel);
                    if s == 0 {
                        return None;
                    }
                    total += s;
                }
                if !e.hit.featured.is_empty() {
                    total += 5;
                }
                // `disk-usage` is split into words like any query; the whole name still wins.
                if e.hit.name == whole {
                    total += 100;
                }
                Some((total, e))
            })
            .collect();
        let order = |a: &(u32, &Entry), b: &(u32, &Entry)| b.0.cmp(&a.0).then_with(|| a.1.hit.name.cmp(&b.1.hit.name));
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit, order);
            scored.truncate(limit);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(score, e)| {
                let mut hit = e.hit.clone();
                hit.score = score;
                hit
            })
            .collect()
    }
}

fn score_term(e: &Entry, t: &str, rel: &[Rel]) -> u32 {
    let name = e.hit.name.as_str();
    if name == t {
        return 100;
    }
    let mut best = 0;
    if name.starts_with(t) {
        best = 60;
    } else if name.contains(t) {
        best = 40;
    }
    for &p in &e.name_parts {
        best = best.max(match rel[p as usize] {
            Rel::Exact => 50,
            Rel::Prefix | Rel::Close => 30,
            Rel::None => 0,
        });
    }
    for &w in &e.tags {
        best = best.max(match rel[w as usize] {
            Rel::Exact => 35,
            Rel::Prefix | Rel::Close => 20,
            Rel::None => 0,
        });
    }
    for &w in &e.desc_words {
        best = best.max(match rel[w as usize] {
            Rel::Exact => 15,
            Rel::Prefix => 10,
            Rel::Close => 8,
            Rel::None => 0,
        });
    }
    best
}
